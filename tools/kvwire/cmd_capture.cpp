// kvwire capture: run a model over text and save the KV cache it builds (a KV dump).
#include <iostream>
#include <string>

#include "cli_util.h"
#include "command.h"
#include "kvwire/kv_file.h"
#ifdef KVWIRE_HAVE_MODEL
#include "kvwire/model.h"
#endif

namespace kvwire::cli {
namespace {

struct CaptureArgs {
  std::string model, tokenizer, text, out, dtype = "f32";
  uint32_t tokens = 0;  // 0 = as many as the model's context (or the text) allows
  uint64_t offset = 0;  // first token of the text's token sequence to capture
  bool with_queries = false;
  bool no_bos = false;
  int threads = 0;
};

#ifdef KVWIRE_HAVE_MODEL
int RunCapture(const CaptureArgs& a) {
  const char* cmd = "capture";
  auto dtype = ParseDType(a.dtype);
  if (!dtype.ok()) return FailStatus(cmd, dtype.status());
  ModelOptions options;
  options.tokenizer_path = a.tokenizer;
  options.threads = a.threads;
  auto model = Model::Load(a.model, options);
  if (!model.ok()) return FailStatus(cmd, model.status());
  const Model& m = **model;
  if (Status s = m.TokenizerStatus(); !s.ok()) return FailStatus(cmd, s);
  auto text = ReadFileBytes(a.text, 1ull << 31);
  if (!text.ok()) return FailStatus(cmd, text.status());
  const std::string_view sv(reinterpret_cast<const char*>(text->data()), text->size());
  auto ids = m.tokenizer().Encode(sv, m.tokenizer().adds_bos() && !a.no_bos);
  if (!ids.ok()) return FailStatus(cmd, ids.status().WithContext(a.text));
  if (a.offset >= ids->size()) {
    return Fail(cmd, a.text + " has " + std::to_string(ids->size()) + " tokens; --offset " +
                         std::to_string(a.offset) + " leaves none to capture");
  }
  const uint64_t available = ids->size() - a.offset;
  const uint32_t ctx = m.config().max_seq_len ? m.config().max_seq_len : 512;
  const uint64_t n = a.tokens ? a.tokens : std::min<uint64_t>(available, ctx);
  if (n > available) {
    return Fail(cmd, a.text + " has only " + std::to_string(available) + " tokens from offset " +
                         std::to_string(a.offset) + ", --tokens " + std::to_string(n) +
                         " asked for more");
  }
  if (m.config().max_seq_len && n > m.config().max_seq_len) {
    std::cerr << "kvwire capture: note: " << n << " tokens exceed the model's trained context of "
              << m.config().max_seq_len << "; later positions are out of distribution\n";
  }
  const double t0 = NowSeconds();
  auto cache =
      m.Prefill(std::span<const int32_t>(ids->data() + a.offset, n), *dtype, a.with_queries);
  const double seconds = NowSeconds() - t0;
  if (!cache.ok()) return FailStatus(cmd, cache.status());
  if (Status s = SaveKvDump(a.out, *cache); !s.ok()) return FailStatus(cmd, s);
  const KvShape& sh = cache->shape();
  std::cout << "captured " << a.model << " (" << m.config().Summary() << ")\n"
            << "  text " << a.text << ": tokens [" << a.offset << ", " << a.offset + n << ") of "
            << ids->size() << ", positions from 0\n"
            << "  wrote " << a.out << ": " << sh.layers << " layers x " << sh.tokens << " tokens x "
            << sh.kv_heads << " kv heads x " << sh.head_dim << " head_dim, "
            << DTypeName(cache->dtype()) << (a.with_queries ? ", with queries" : "") << "\n"
            << "  rope " << cache->metadata().rope_style << " theta "
            << Format("%g", cache->metadata().rope_theta) << ", fingerprint "
            << cache->metadata().model_fingerprint << "\n"
            << Format("  prefill %.3f s (%.0f tokens/s, %d threads)\n", seconds,
                      double(n) / std::max(seconds, 1e-9), m.threads());
  return 0;
}
#else
int RunCapture(const CaptureArgs&) {
  return Fail("capture", "this kvwire was built without the model runner (src/model)");
}
#endif

const CommandRegistrar kRegistrar(
    "capture", "Run a model over text and save its KV cache (safetensors KV dump)",
    [](CLI::App* sub) -> std::function<int()> {
      auto a = std::make_shared<CaptureArgs>();
      sub->footer(
          "Tokenizes FILE (BOS first when the tokenizer uses one), takes tokens\n"
          "[offset, offset + N) and prefills them at positions 0..N-1 in float32. Writes k.<l>,\n"
          "v.<l> [tokens, kv_heads, head_dim] (K after RoPE) and with --with-queries q.<l>\n"
          "[tokens, heads, head_dim], plus metadata positions_start, rope_theta, rope_style,\n"
          "model_fingerprint (sha256 of the model file).\n"
          "Models: llama2.c .bin (tokenizer.bin beside it or --tokenizer) or GGUF.");
      sub->add_option("--model", a->model, "Model file (llama2.c .bin or .gguf)")->required();
      sub->add_option("--tokenizer", a->tokenizer,
                      "llama2.c tokenizer.bin (overrides the default)");
      sub->add_option("--text", a->text, "Text file to run")->required();
      sub->add_option("--tokens", a->tokens, "Tokens to capture (default: the model's context)")
          ->check(CLI::Range(1u, kMaxTokens));
      sub->add_option("--offset", a->offset, "First token (index into the text's tokens)")
          ->capture_default_str();
      sub->add_option("--out", a->out, "Output KV dump (.safetensors)")->required();
      sub->add_flag("--with-queries", a->with_queries, "Also save the queries q.<layer>");
      sub->add_option("--dtype", a->dtype, "Stored dtype: f32, f16 or bf16")->capture_default_str();
      sub->add_flag("--no-bos", a->no_bos, "Do not start the token sequence with BOS");
      sub->add_option("--threads", a->threads, "Threads (0 = all cores)")
          ->capture_default_str()
          ->check(CLI::Range(0, 1024));
      return [a] { return RunCapture(*a); };
    });

}  // namespace
}  // namespace kvwire::cli
