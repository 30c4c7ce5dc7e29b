// Registers the baseline codec families (baseline_families.h) and names the specs that
// `bench codec` and the tests iterate over.
#include "codec/baseline_families.h"
#include "codec/builtin.h"

namespace kvwire {

namespace detail {

void RegisterBaselineCodecs(std::vector<CodecFamily>* registry) {
  using namespace baseline;
  for (CodecFamily (*make)() : {Fp16Family, Int8Family, Q8_0Family, Q4_0Family, KiviFamily,
                                IntTokenFamily, IntChannelFamily, RankFamily, TurboFamily}) {
    registry->push_back(make());
  }
}

}  // namespace detail

std::vector<std::string> BaselineCodecSpecs() {
  std::vector<std::string> specs = {"fp16", "int8", "q8_0", "q4_0", "kivi2", "kivi4"};
  for (int b = 2; b <= 8; ++b) specs.push_back("int" + std::to_string(b) + "-token");
  for (int b = 2; b <= 8; ++b) specs.push_back("int" + std::to_string(b) + "-channel");
  for (const char* s : {"rank-8", "rank-16", "rank-32", "turbo2", "turbo3", "turbo4"}) {
    specs.push_back(s);
  }
  return specs;
}

}  // namespace kvwire
