// Fuzz target: the control-plane parser (framing + Control/ChunkDescriptor validation). Every
// frame the decoder returns is validated as the session would; nothing may crash, hang or
// allocate beyond the frame bounds. Built as a libFuzzer target with KVWIRE_BUILD_FUZZ=ON, and
// otherwise as a corpus replayer that ctest runs over tests/fuzz/corpus/control/.
//
// Input: byte 0 selects the mode (even: a byte stream of frames; odd: one bare Control message),
// the rest is the data.
#include <cstddef>
#include <cstdint>
#include <span>

#include "transport/control.h"
#include "transport/framing.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvwire;
  using namespace kvwire::transport;
  if (size == 0) return 0;
  std::span<const uint8_t> rest(data + 1, size - 1);
  if (data[0] & 1) {
    auto c = ParseControl(rest);
    if (c.ok()) (void)MakeControlMessage(*c);  // what we accept we can send back
    return 0;
  }
  FrameDecoder decoder;
  // Feed in two pieces to exercise partial frames.
  const size_t half = rest.size() / 2;
  decoder.Feed(rest.subspan(0, half));
  for (int pass = 0; pass < 2; ++pass) {
    for (;;) {
      auto m = decoder.Next();
      if (!m.ok() || !m->has_value()) break;
      const Message& msg = **m;
      if (msg.kind == MessageKind::kControl) {
        auto c = ParseControl(msg.meta);
        if (c.ok()) (void)ControlName(*c);
      } else {
        (void)ParseChunkDescriptor(msg);
      }
    }
    if (pass == 0) decoder.Feed(rest.subspan(half));
  }
  return 0;
}

#ifdef KVWIRE_FUZZ_REPLAY_MAIN
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <vector>

// Replays files and directories given as arguments (flags starting with '-' are ignored, so
// the libFuzzer command line `-runs=0 DIR` works for both builds).
int main(int argc, char** argv) {
  size_t runs = 0;
  auto run_file = [&](const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                               std::istreambuf_iterator<char>());
    LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
    ++runs;
  };
  for (int i = 1; i < argc; ++i) {
    if (argv[i][0] == '-') continue;
    std::filesystem::path p(argv[i]);
    if (std::filesystem::is_directory(p)) {
      for (const auto& e : std::filesystem::directory_iterator(p))
        if (e.is_regular_file()) run_file(e.path());
    } else {
      run_file(p);
    }
  }
  std::cout << "replayed " << runs << " inputs\n";
  return runs > 0 ? 0 : 1;
}
#endif
