// Standalone replay of a parser fuzz target (fuzz_profile, fuzz_kv_dump, fuzz_gguf,
// fuzz_llama2c_model, fuzz_llama2c_tokenizer), compiled with the normal compiler, no libFuzzer:
// runs LLVMFuzzerTestOneInput over every file of the directories and files given, so ctest
// replays the committed corpus on every build. Arguments starting with '-' are ignored, so a
// libFuzzer command line such as `-runs=0 DIR` works for both builds.
//
// Besides passing the target's own checks (a violated invariant aborts), files are held to
// their names:
//   seed-*        valid inputs the parser must still accept (files written by earlier builds
//                 stay readable);
//   bad-*, regression-*
//                 hostile inputs (regression-*: reproducers of fixed findings) that the parser
//                 must still refuse;
//   anything else (case-*, inputs the fuzzer found): only the target's checks.
// "Accept" is decided by the target's KvwireFuzzAccepts, which reads the input exactly as
// LLVMFuzzerTestOneInput does.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <span>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
bool KvwireFuzzAccepts(std::span<const uint8_t> input);

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
  const bool must_accept = name.rfind("seed-", 0) == 0;
  const bool must_refuse = name.rfind("bad-", 0) == 0 || name.rfind("regression-", 0) == 0;
  if (must_accept || must_refuse) {
    const bool accepted = KvwireFuzzAccepts(bytes);
    if (must_accept && !accepted) {
      std::fprintf(stderr, "replay: seed %s is no longer accepted\n", path.c_str());
      return false;
    }
    if (must_refuse && accepted) {
      std::fprintf(stderr, "replay: hostile input %s is accepted\n", path.c_str());
      return false;
    }
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
