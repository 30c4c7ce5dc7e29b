// How a request is cut into chunks, identically on both ends: per (layer, K|V), chunk boundaries
// at every multiple of chunk_tokens in sequence coordinates (the request's token t is sequence
// token token_begin + t), so a request that starts off a multiple has a shorter first chunk;
// seq = (layer * 2 + kind) * per_tensor + index (layer-major, K before V). chunk_tokens is a
// multiple of every level's token alignment, so every boundary but the request's first token is
// aligned for each of them: a request (a migration tail) may start at any token.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "kvwire/codec.h"
#include "kvwire/kv_view.h"
#include "kvwire/status.h"
#include "kvwire/stream.h"

namespace kvwire::transport {

/// Most elements one chunk may hold on the wire: keeps every data message (at <= 16 bits per
/// element plus codec metadata) well under kMaxDataMessageBytes.
inline constexpr uint64_t kMaxWireChunkElements = 16ull << 20;

struct ChunkGrid {
  KvShape shape;
  uint32_t chunk_tokens = 0;
  uint32_t phase = 0;  // token_begin % chunk_tokens: the first chunk is this much shorter
  uint32_t per_tensor = 0;

  uint32_t total() const { return shape.layers * 2 * per_tensor; }
  uint32_t chunks_per_layer() const { return 2 * per_tensor; }
  uint32_t Seq(uint32_t layer, KvKind kind, uint32_t index) const {
    return (layer * 2 + static_cast<uint32_t>(kind)) * per_tensor + index;
  }
  uint32_t TokenBegin(uint32_t index) const { return index == 0 ? 0 : index * chunk_tokens - phase; }
  uint32_t Tokens(uint32_t index) const {
    const uint64_t end = std::min<uint64_t>(uint64_t{index + 1} * chunk_tokens - phase, shape.tokens);
    return static_cast<uint32_t>(end - TokenBegin(index));
  }
  uint32_t LayerOf(uint32_t seq) const { return seq / (2 * per_tensor); }
  KvKind KindOf(uint32_t seq) const { return static_cast<KvKind>((seq / per_tensor) % 2); }
  uint32_t IndexOf(uint32_t seq) const { return seq % per_tensor; }

  /// Builds the grid for a validated shape, the request's first sequence token and a
  /// chunk_tokens already normalized (> 0).
  static Result<ChunkGrid> Make(const KvShape& shape, uint32_t token_begin, uint32_t chunk_tokens) {
    KVWIRE_RETURN_IF_ERROR(ValidateShape(shape));
    KVWIRE_RETURN_ERROR_IF(chunk_tokens == 0, kInvalidArgument, "chunk_tokens 0");
    KVWIRE_RETURN_ERROR_IF(uint64_t{chunk_tokens} * shape.kv_heads * shape.head_dim >
                               std::min<uint64_t>(kMaxWireChunkElements, kMaxChunkElements),
                           kInvalidArgument,
                           "chunk of " + std::to_string(chunk_tokens) + " tokens too large");
    ChunkGrid g;
    g.shape = shape;
    g.chunk_tokens = chunk_tokens;
    g.phase = token_begin % chunk_tokens;
    g.per_tensor = static_cast<uint32_t>((uint64_t{shape.tokens} + g.phase + chunk_tokens - 1) /
                                         chunk_tokens);
    return g;
  }

  /// The sender's choice: `requested` (0 = whole layer) rounded up to `alignment`, then lowered
  /// (in multiples of the alignment) to the element bound. It stays a multiple of the alignment
  /// even above the request's tokens, since chunk boundaries are its multiples in sequence
  /// coordinates.
  static uint32_t Normalize(const KvShape& shape, uint32_t requested, uint32_t alignment) {
    alignment = std::max<uint32_t>(alignment, 1);
    uint64_t t = requested == 0 ? shape.tokens : requested;
    t = (t + alignment - 1) / alignment * alignment;
    const uint64_t row = uint64_t{shape.kv_heads} * shape.head_dim;
    const uint64_t cap =
        std::min<uint64_t>(kMaxWireChunkElements, kMaxChunkElements) / std::max<uint64_t>(row, 1);
    if (t > cap) t = std::max<uint64_t>(cap / alignment * alignment, alignment);
    return static_cast<uint32_t>(t);
  }
};

}  // namespace kvwire::transport
