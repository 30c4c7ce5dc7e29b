// Registration hooks of the codec families built into kvwire. The registry calls each once, on
// first use (explicit calls, so a static library never drops a family at link time).
#pragma once

#include <vector>

#include "kvwire/codec.h"

namespace kvwire::detail {

/// fp16, int8, q8_0, q4_0, kivi<b>, int<b>-token, int<b>-channel, rank-<r>, turbo<b>.
void RegisterBaselineCodecs(std::vector<CodecFamily>* registry);
/// fraqtl@B (profile-based; src/codec/fraqtl_registry.cpp).
void RegisterFraqtlCodecs(std::vector<CodecFamily>* registry);

}  // namespace kvwire::detail
