// Standalone replay of a libFuzzer target (compiled with the normal compiler, no libFuzzer):
// runs LLVMFuzzerTestOneInput over every file of the directories and files given, so ctest
// replays the committed corpus on every build. Arguments starting with '-' are ignored, so a
// libFuzzer command line such as `-runs=0 DIR` works for both builds.
//
// Files named "seed-*" are valid streams written by make_stream_corpus: they must also still
// decode (streams written by earlier builds stay readable; docs/FORMAT.md, versioning). Files
// named "bad-*" are hostile streams it writes: they must still be refused.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "kvwire/stream.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

namespace fs = std::filesystem;

bool ReplayFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "replay: cannot read %s\n", path.c_str());
    return false;
  }
  const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                                   std::istreambuf_iterator<char>());
  LLVMFuzzerTestOneInput(bytes.data(), bytes.size());  // aborts on a violated invariant
  const std::string name = path.filename().string();
  if (name.rfind("seed-", 0) == 0) {
    auto decoded = kvwire::DecodeStream(bytes);
    if (!decoded.ok()) {
      std::fprintf(stderr, "replay: seed %s no longer decodes: %s\n", path.c_str(),
                   decoded.status().ToString().c_str());
      return false;
    }
  } else if (name.rfind("bad-", 0) == 0 && kvwire::DecodeStream(bytes).ok()) {
    std::fprintf(stderr, "replay: hostile stream %s decodes\n", path.c_str());
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<fs::path> files;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.empty() || arg[0] == '-') continue;
    std::error_code ec;
    if (fs::is_directory(arg, ec)) {
      for (const auto& entry : fs::directory_iterator(arg)) {
        if (entry.is_regular_file()) files.push_back(entry.path());
      }
    } else {
      files.push_back(arg);
    }
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) {
    std::fprintf(stderr, "replay: no input files (usage: %s DIR|FILE...)\n", argv[0]);
    return 1;
  }
  size_t failed = 0;
  for (const fs::path& f : files) failed += ReplayFile(f) ? 0 : 1;
  std::printf("replay: %zu inputs, %zu failed\n", files.size(), failed);
  return failed == 0 ? 0 : 1;
}
