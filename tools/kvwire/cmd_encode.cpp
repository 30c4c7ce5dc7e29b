// kvwire encode: KV dump (safetensors) -> kvwire stream (.kvw).
#include <iostream>
#include <optional>
#include <string>

#include "cli_profile.h"
#include "cli_util.h"
#include "command.h"
#include "kvwire/codec.h"
#include "kvwire/kv_file.h"
#include "kvwire/stream.h"

namespace kvwire::cli {
namespace {

struct EncodeArgs {
  std::string in, out, codec, profile;
  std::optional<double> bits;  // set when --bits was given
  double bits_value = 0;
  uint32_t chunk_tokens = 0;
  int threads = 1;
};

int RunEncode(const EncodeArgs& a) {
  const char* cmd = "encode";
  auto prof = LoadProfileArg(a.profile);
  if (!prof.ok()) return FailStatus(cmd, prof.status());
  auto spec = ResolveCodecSpec(a.codec, a.bits);
  if (!spec.ok()) return FailStatus(cmd, spec.status());
  auto codec =
      CreateCodec(*spec, prof->get());  // validates the name and options before the input is read
  if (!codec.ok()) return FailStatus(cmd, codec.status());

  auto cache = MappedKvDump::Open(a.in);
  if (!cache.ok()) return FailStatus(cmd, cache.status());

  StreamInfo info;
  info.shape = cache->shape();
  info.dtype = cache->dtype();
  info.token_begin = 0;
  info.metadata = cache->metadata();
  info.levels = {(*codec)->Spec()};
  if (prof->get()) info.profile_id = prof->id;
  WarnFingerprint("KV dump model", info.metadata.model_fingerprint, *prof);
  StreamWriterOptions options;
  options.chunk_tokens = a.chunk_tokens;
  options.threads = a.threads;
  const double t0 = NowSeconds();
  auto stream = EncodeStream(cache->view(), info, options, prof->get());
  const double seconds = NowSeconds() - t0;
  if (!stream.ok()) return FailStatus(cmd, stream.status().WithContext(a.in));
  if (Status s = WriteFileBytes(a.out, *stream); !s.ok()) return FailStatus(cmd, s);

  const KvShape& shape = info.shape;
  const double bpe = double(stream->size()) * 8.0 / double(shape.elements());
  const double source_bytes = double(shape.elements()) * DTypeSize(info.dtype);
  std::cout << "wrote " << a.out << ": codec " << info.levels[0] << ", " << shape.layers
            << " layers x " << shape.tokens << " tokens x " << shape.kv_heads << " kv heads x "
            << shape.head_dim << " head_dim\n"
            << "  " << Thousands(stream->size()) << " bytes, "
            << Format(
                   "%.4f bits/element all-in, %.2fx smaller than the %s input, encoded in %.3f s",
                   bpe, source_bytes / double(stream->size()),
                   std::string(DTypeName(info.dtype)).c_str(), seconds)
            << "\n";
  return 0;
}

std::string CodecList() {
  std::string s;
  for (const CodecFamily& f : ListCodecFamilies()) s += "  " + f.pattern + ": " + f.help + "\n";
  return s.empty() ? "  (none registered in this build)\n" : s;
}

const CommandRegistrar kRegistrar(
    "encode", "Compress a KV dump (safetensors) into a kvwire stream",
    [](CLI::App* sub) -> std::function<int()> {
      auto a = std::make_shared<EncodeArgs>();
      sub->footer(
          "Reads tensors k.<layer>/v.<layer> [tokens, kv_heads, head_dim] of a KV dump and writes\n"
          "one stream: header, layer-major chunks (K then V of each layer), trailer. The printed\n"
          "bits/element counts every byte of the stream (docs/FORMAT.md section 12).\n\n"
          "Codecs (a spec may add options, e.g. kivi2:g=64,r=16 or turbo3:seed=7):\n" +
          CodecList() +
          "\n--bits B with a family name fills in the width: int-token, int-channel, kivi, turbo,\n"
          "q (4 or 8). Example: kvwire encode --in kv.safetensors --codec kivi --bits 2 --out "
          "x.kvw");
      sub->add_option("--in", a->in, "Input KV dump (.safetensors)")->required();
      sub->add_option("--codec", a->codec, "Codec spec, e.g. q4_0, kivi2, int4-token, turbo3")
          ->required();
      auto* bits =
          sub->add_option("--bits", a->bits_value, "Bit-width for a codec family (see below)");
      sub->add_option("--profile", a->profile,
                      "Calibration profile (.kvp) for profile-based codecs (fraqtl)");
      sub->add_option("--out", a->out, "Output stream (.kvw)")->required();
      sub->add_option("--chunk-tokens", a->chunk_tokens,
                      "Tokens per chunk; 0 = one chunk per (layer, K|V)")
          ->capture_default_str()
          ->check(CLI::Range(0u, kMaxTokens));
      sub->add_option("--threads", a->threads, "Encoder threads (output bytes do not depend on it)")
          ->capture_default_str()
          ->check(CLI::Range(1, 1024));
      return [a, bits] {
        if (bits->count() > 0) a->bits = a->bits_value;
        return RunEncode(*a);
      };
    });

}  // namespace
}  // namespace kvwire::cli
