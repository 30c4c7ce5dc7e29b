// common/log_line.h: lines written by many threads through two unbuffered streams that share one
// file (a service's stdout and stderr sent to one log) come out whole, never spliced.
#include "common/log_line.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace kvwire {
namespace {

TEST(LogLineTest, ConcurrentLinesOnTwoStreamsOfOneFileStayWhole) {
  const auto path = std::filesystem::temp_directory_path() /
                    ("kvwire_log_line_" + std::to_string(::getpid()) + ".log");
  std::FILE* out = std::fopen(path.c_str(), "w");
  ASSERT_NE(out, nullptr);
  // Like 2>&1: a second descriptor on the same open file, unbuffered like stderr.
  std::FILE* err = ::fdopen(::dup(::fileno(out)), "w");
  ASSERT_NE(err, nullptr);
  std::setvbuf(out, nullptr, _IONBF, 0);
  std::setvbuf(err, nullptr, _IONBF, 0);

  constexpr int kThreads = 6, kLines = 1500;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kLines; ++i) {
        // Long enough that a line written piecewise would be split often.
        WriteLogLine(t % 2 ? err : out, "thread " + std::to_string(t) + " line " +
                                            std::to_string(i) + " " + std::string(200, 'a' + t) +
                                            " end");
      }
    });
  }
  for (auto& th : threads) th.join();
  std::fclose(err);
  std::fclose(out);

  std::ifstream in(path);
  std::vector<int> next(kThreads, 0);
  int lines = 0;
  for (std::string line; std::getline(in, line); ++lines) {
    int t = -1, i = -1;
    ASSERT_EQ(std::sscanf(line.c_str(), "thread %d line %d ", &t, &i), 2) << line;
    ASSERT_TRUE(t >= 0 && t < kThreads) << line;
    const std::string want = "thread " + std::to_string(t) + " line " + std::to_string(i) + " " +
                             std::string(200, 'a' + t) + " end";
    ASSERT_EQ(line, want);
    ASSERT_EQ(i, next[t]++) << "lines of one thread out of order or lost";
  }
  EXPECT_EQ(lines, kThreads * kLines);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace kvwire
