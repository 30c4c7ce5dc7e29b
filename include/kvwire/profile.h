// kvwire/profile.h — the calibration profile that profile-based codecs (fraqtl) share between
// the two ends of a transfer. `kvwire calibrate` and `kvwire diagnose` write it; a stream names
// the profile it needs by content hash.
//
// A profile holds, per (layer, slot, kv_head) with slot K (post-RoPE), K pre-RoPE, or V:
//   * the calibrated mean mu [head_dim],
//   * a forward transform F and its inverse G ([head_dim, head_dim], row-major): the coding
//     coefficients are z = F (x - mu) and x = mu + G z. For the downstream-metric basis
//     F = U^T A with A = M^{1/2} the (regularized) metric, so the squared error in z equals the
//     metric error (x - x^)^T M (x - x^); for PCA and random bases F is orthonormal, G = F^T,
//   * per-direction variances lambda_i = E[z_i^2] (descending),
//   * Lloyd-Max codebooks for z_i / sqrt(lambda_i) at 1..8 bits (empty: Gaussian) and the
//     distortion of a unit-variance coefficient at 0..8 bits, which bit allocation uses,
// plus the model fingerprint, the RoPE configuration, a ladder of levels: per-(layer, K|V)
// bit budgets and, once `kvwire diagnose` measured them, the accuracy of each level, and the
// optional fraqtl steps (sign sketch, delta groups) that the diagnostic measured to pay off.
//
// File format: 16-byte preamble ("KVWP", u16 major, u16 minor, u32 body length, u32 CRC32C of
// the body, little-endian) + protobuf ProfileBody (proto/kvwire_profile.proto). Id() is
// "sha256:<hex>" of the serialized file: both ends of a stream must hold the profile whose id
// the stream header names.
//
// Thread-safety: a Profile is a value; const methods may be called concurrently.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvwire/status.h"

namespace kvwire {

inline constexpr uint16_t kProfileFormatMajor = 1;
/// Minor 1 added fraqtl_defaults, minor 2 the rANS frequencies of the codebooks. A file is
/// written with the lowest minor that holds its fields, so profiles without them keep the bytes
/// (and ids) of older builds. Readers accept any minor.
inline constexpr uint16_t kProfileFormatMinor = 2;
/// Profiles larger than this are refused before parsing.
inline constexpr uint64_t kMaxProfileBytes = 1ull << 30;
/// Highest bit-width of a Lloyd-Max codebook in a profile.
inline constexpr int kProfileMaxBits = 8;

/// Which tensor a basis codes.
enum class ProfileSlot : uint8_t { kKey = 0, kKeyPreRope = 1, kValue = 2 };
inline constexpr uint32_t kProfileSlots = 3;

/// The calibrated coding basis of one (layer, slot, kv_head).
struct ProfileBasis {
  std::vector<float> mean;       // [head_dim]
  std::vector<float> forward;    // [head_dim, head_dim] row-major, z = forward (x - mean)
  std::vector<float> inverse;    // [head_dim, head_dim] row-major, x = mean + inverse z
  std::vector<double> variance;  // [head_dim], descending
  /// Codebook levels for bits 1..8 concatenated (2, 4, ..., 256 levels), each ascending; empty
  /// when the coefficients are coded with the Gaussian Lloyd-Max codebooks.
  std::vector<float> codebook_levels;
  /// [kProfileMaxBits + 1]: E[(u - Q_b(u))^2] of the normalized coefficient u at b bits
  /// (b = 0: deletion, about 1).
  std::vector<double> distortion;
  /// rANS frequencies (units of 1/4096) of each codebook cell on the calibration data, laid out
  /// like codebook_levels; each bit-width sums to 4096 with every cell >= 1. Empty: not
  /// calibrated (fraqtl then uses N(0, 1) cell probabilities). Requires has_codebooks().
  std::vector<uint16_t> rans_freq;

  bool has_codebooks() const { return !codebook_levels.empty(); }
  /// The 2^bits levels of the codebook for `bits` (1..8); requires has_codebooks().
  std::span<const float> levels(int bits) const {
    return {codebook_levels.data() + ((size_t{1} << bits) - 2), size_t{1} << bits};
  }
};

/// One rung of the ladder of budgets (e.g. 1.0, 2.0, 3.0 bits/element).
struct ProfileLevel {
  std::string name;             // how codec specs name it ("level=2.0")
  double bits = 0;              // all-in target bits/element
  std::vector<double> budgets;  // [layers * 2]: index 2*layer + (0 = K, 1 = V), bits/element
  double kl = -1;               // measured mean KL (nats); < 0 when not measured
  double dppl = 0;              // measured delta PPL
  double top1 = 0;              // measured top-1 agreement
  double measured_bits = 0;     // measured all-in bits/element (0: not measured)
};

class Profile {
 public:
  // ---- what the profile describes ------------------------------------------------------------
  std::string model_fingerprint;  // "sha256:..." of the model file; empty when unknown
  uint32_t layers = 0;
  uint32_t kv_heads = 0;
  uint32_t heads = 0;  // query heads (0 when unknown)
  uint32_t head_dim = 0;
  double rope_theta = 0;              // 0 when unknown
  std::string rope_style = "none";    // "interleaved", "neox" or "none"
  uint32_t rope_dim = 0;              // leading channels RoPE rotates (0 when none)
  std::string basis_kind = "metric";  // "metric", "pca" or "random"
  std::string key_metric;             // e.g. "query-rope-avg", "identity"
  std::string value_metric;           // e.g. "wo", "identity"
  uint64_t calib_tokens = 0;
  std::string calib_source;
  std::string notes;
  /// layers * kProfileSlots * kv_heads entries, index ((layer * 3) + slot) * kv_heads + head.
  /// The pre-RoPE slot is empty (no mean) when the rope configuration is unknown.
  std::vector<ProfileBasis> bases;
  std::vector<ProfileLevel> levels;
  /// Optional fraqtl steps the codec applies when its spec does not set them: "" (none) or
  /// "sign=M,delta=G" (either or both; M, G in 0..4096 as the spec options), written by
  /// `kvwire diagnose` from its measured verdicts. With it set, fraqtl's canonical spec always
  /// spells sign= and delta=, so a stream never depends on it.
  std::string fraqtl_defaults;

  /// True when RoPE is known (theta > 0, style interleaved/neox) and pre-RoPE bases exist.
  bool has_prerope() const;
  const ProfileBasis& basis(uint32_t layer, ProfileSlot slot, uint32_t kv_head) const {
    return bases[(size_t{layer} * kProfileSlots + static_cast<uint32_t>(slot)) * kv_heads +
                 kv_head];
  }
  ProfileBasis& basis(uint32_t layer, ProfileSlot slot, uint32_t kv_head) {
    return bases[(size_t{layer} * kProfileSlots + static_cast<uint32_t>(slot)) * kv_heads +
                 kv_head];
  }
  /// The level named `name` (or nullptr).
  const ProfileLevel* FindLevel(std::string_view name) const;

  // ---- files ---------------------------------------------------------------------------------
  /// Checks every field: shapes, sizes, finiteness, ordering (descending variances, ascending
  /// codebooks), budgets in [0, 16]. What Parse runs after decoding.
  Status Validate() const;
  /// The file bytes (deterministic: same profile, same bytes).
  Result<std::vector<uint8_t>> Serialize() const;
  /// Parses and validates file bytes; hostile input is kCorrupt/kTruncated/kVersionMismatch.
  static Result<Profile> Parse(std::span<const uint8_t> bytes);
  static Result<Profile> Load(const std::string& path);
  /// Writes the file atomically.
  Status Save(const std::string& path) const;
  /// "sha256:<hex>" of Serialize().
  Result<std::string> Id() const;

 private:
  Status ValidateFields() const;  // Validate without its memo
};

/// "sha256:<hex>" of `bytes` (the id of a serialized profile).
std::string ProfileIdOfBytes(std::span<const uint8_t> bytes);

/// A 128-bit hash (16 raw bytes, XXH3 keyed with a seed drawn once per process) of every field
/// Serialize() writes, without serializing: two profiles have the same digest when they
/// serialize to the same bytes. A cheap key for this process's caches of what is derived from a
/// profile (its id, a codec's prepared tables); not comparable across processes, and not a
/// cryptographic hash (profiles are trusted input, like the model they were calibrated on).
std::string ProfileContentDigest(const Profile& profile);

}  // namespace kvwire
