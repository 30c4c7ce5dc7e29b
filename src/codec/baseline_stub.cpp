// Placeholder so the skeleton links; replaced by the baseline codecs.
#include "codec/builtin.h"
namespace kvwire::detail {
void RegisterBaselineCodecs(std::vector<CodecFamily>*) {}
}  // namespace kvwire::detail
