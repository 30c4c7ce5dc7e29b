// kvwire/codec.h — the codec interface and the registry of codecs by name.
//
// A codec turns one chunk — tokens [token_begin, token_begin + tokens) of one (layer, K|V),
// float32 [tokens, kv_heads, head_dim] — into a self-describing payload and back. Everything a
// decoder needs that is not in the shared profile (scales, norms, bases, fp16 windows) is inside
// the payload, so bits/element computed from stream bytes are all-in: they count every byte a
// receiver needs besides the profile.
//
// Codecs are named by a spec string "name[:key=value,key=value]", e.g. "q4_0", "kivi2",
// "kivi4:g=64,r=16", "int3-token", "int4-channel", "rank-32", "turbo3:seed=7". Spec() returns
// the canonical spec (all options spelled out) that recreates an identical codec.
//
// Determinism: Encode gives the same bytes for the same input on every run, for both
// implementations and any thread count. Decode(reference) and Decode(optimized) agree exactly.
// Thread-safety: a Codec is immutable after creation; Encode/Decode may run concurrently.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvwire/kv_view.h"
#include "kvwire/status.h"

namespace kvwire {

class Profile;  // calibration result (kvwire/profile.h); needed by profile-based codecs only

/// Where a chunk sits in its stream. Codecs with token-dependent behaviour (a recent window of
/// fp16 tokens, sink tokens, positions for RoPE) use the sequence-level fields.
struct ChunkDesc {
  uint32_t layer = 0;
  KvKind kind = KvKind::kKey;
  uint32_t token_begin = 0;   // first token of this chunk within the sequence
  uint32_t tokens = 0;        // tokens in this chunk
  uint32_t kv_heads = 0;
  uint32_t head_dim = 0;
  uint32_t seq_tokens = 0;    // tokens of the whole sequence (>= token_begin + tokens)
  int64_t positions_start = 0;  // RoPE position of sequence token 0

  uint64_t elements() const { return uint64_t{tokens} * kv_heads * head_dim; }
};

/// Which implementation runs. kReference is the scalar, obviously-correct one every optimized
/// (and CUDA) path is tested against.
enum class CodecImpl : uint8_t { kReference = 0, kOptimized = 1 };

/// Parsed "key=value" options of a spec.
struct CodecOptions {
  std::vector<std::pair<std::string, std::string>> values;
  /// Integer option `key` or `fallback`; an unparsable or out-of-range value is an error.
  Result<int64_t> GetInt(std::string_view key, int64_t fallback, int64_t min, int64_t max) const;
  Result<double> GetDouble(std::string_view key, double fallback) const;
  bool Has(std::string_view key) const;
};

class Codec {
 public:
  virtual ~Codec() = default;

  /// Canonical spec (e.g. "kivi2:g=32,r=32").
  virtual std::string Spec() const = 0;
  /// Stable numeric id of the codec family, written in every chunk header (docs/FORMAT.md).
  virtual uint16_t Id() const = 0;

  /// Chunks split along tokens must start at a multiple of this (e.g. kivi's group G).
  virtual uint32_t TokenAlignment() const { return 1; }

  /// True when a chunk's payload is just its elements as little-endian fp16 in input order and
  /// every finite fp16 value codes as itself (the fp16 codec). Streams then copy an fp16 KV
  /// cache in and out as it is: the same payload bytes and decoded values as Encode and Decode
  /// with a conversion through float32, without the conversion.
  virtual bool PayloadIsHalves() const { return false; }

  /// Appends the payload of chunk `desc` to `out`. `in`: float32 [tokens, kv_heads, head_dim].
  /// Non-finite inputs are an error (kInvalidArgument), never silently coded.
  virtual Status Encode(const ChunkDesc& desc, const float* in, std::vector<uint8_t>* out,
                        CodecImpl impl = CodecImpl::kOptimized) const = 0;

  /// Encode of fp16 input: `in` holds the chunk as IEEE binary16, [tokens, kv_heads, head_dim].
  /// The same payload as Encode of the same values as float32 (every fp16 value is a float32
  /// value), and the same error for a non-finite one. The default converts and calls Encode; a
  /// codec may read the halves where it reads its input, without the float32 copy.
  virtual Status EncodeHalves(const ChunkDesc& desc, const uint16_t* in, std::vector<uint8_t>* out,
                              CodecImpl impl = CodecImpl::kOptimized) const;
  /// Decodes `payload` (exactly one chunk's payload) into `out`: float32
  /// [tokens, kv_heads, head_dim]. Every length is validated against `desc` first; a payload of
  /// the wrong size or with invalid contents is kCorrupt, never a crash.
  virtual Status Decode(const ChunkDesc& desc, std::span<const uint8_t> payload, float* out,
                        CodecImpl impl = CodecImpl::kOptimized) const = 0;
};

/// Creates a codec from its spec. `profile` is required by profile-based codecs (fraqtl) and
/// ignored by the others. Unknown names are kNotFound with the list of known families.
Result<std::unique_ptr<Codec>> CreateCodec(std::string_view spec, const Profile* profile = nullptr);

/// One registry entry: a family of codecs ("int<b>-token"), its factory and one line of help.
struct CodecFamily {
  std::string pattern;  // e.g. "int<b>-token", shown in --help
  std::string help;     // one line: recipe and bits/element
  /// Returns kNotFound if `name` is not of this family; otherwise the codec or the reason.
  std::function<Result<std::unique_ptr<Codec>>(std::string_view name, const CodecOptions& opts,
                                                const Profile* profile)>
      make;
  /// Optional: whether `name` is of this family (what `make` answers with anything but
  /// kNotFound), without making a codec. Families whose codecs are costly to make (fraqtl's
  /// digest and checks of its profile) set it, so that naming a spec's family stays cheap.
  std::function<bool(std::string_view name)> owns = nullptr;
};

/// Adds a family to the process-wide registry (called once per family at start-up).
void RegisterCodecFamily(CodecFamily family);
/// All registered families, in registration order.
std::vector<CodecFamily> ListCodecFamilies();
/// Specs of the baseline codecs that `bench codec` and tests iterate over.
std::vector<std::string> BaselineCodecSpecs();

/// Splits "name:k=v,k=v" into name and options (syntax errors are kInvalidArgument).
Status ParseCodecSpec(std::string_view spec, std::string* name, CodecOptions* options);

}  // namespace kvwire
