// kvwire eval: the golden accuracy protocol. For each sampled window of
// held-out text: prefill the prefix once in float32, then per codec encode its KV cache into a
// stream, decode it, run the continuation teacher-forced on the decoded cache, and compare the
// next-token distributions with the uncompressed (float32) run.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "cli_profile.h"
#include "cli_util.h"
#include "command.h"
#include "kvwire/codec.h"
#include "kvwire/kv_file.h"
#include "kvwire/stream.h"
#ifdef KVWIRE_HAVE_MODEL
#include "kvwire/model.h"
#endif

namespace kvwire::cli {
namespace {

struct EvalArgs {
  std::string model, tokenizer, text, codecs, profile, json;
  uint32_t prefix = 256, cont = 256, seqs = 64;
  uint64_t seed = 1;
  int threads = 0;
  bool bos = false;
};

// "fp16,kivi4:g=64,r=16,q4_0" -> {"fp16", "kivi4:g=64,r=16", "q4_0"}: a comma-separated item
// that is key=value without a codec name continues the options of the previous spec.
Result<std::vector<std::string>> SplitCodecList(const std::string& list) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i <= list.size()) {
    const size_t comma = std::min(list.find(',', i), list.size());
    std::string item = list.substr(i, comma - i);
    while (!item.empty() && item.front() == ' ') item.erase(0, 1);
    while (!item.empty() && item.back() == ' ') item.pop_back();
    if (!item.empty()) {
      const bool option =
          item.find('=') != std::string::npos && item.find(':') == std::string::npos;
      if (option && !out.empty() && out.back().find(':') != std::string::npos) {
        out.back() += "," + item;
      } else {
        out.push_back(item);
      }
    }
    i = comma + 1;
  }
  KVWIRE_RETURN_ERROR_IF(out.empty(), kInvalidArgument, "--codecs lists no codec");
  return out;
}

#ifdef KVWIRE_HAVE_MODEL

struct Arm {
  std::string spec;       // the codec's canonical spec (every option spelled out)
  std::string requested;  // the spec as given on the command line
  std::unique_ptr<Codec> codec;
  LogitStats stats;
  uint64_t stream_bytes = 0;
  uint64_t elements = 0;
  double encode_s = 0, decode_s = 0, forward_s = 0;
  std::string error;  // set when the codec cannot code this model's cache (arm skipped)
  double bits() const { return elements ? double(stream_bytes) * 8.0 / double(elements) : 0; }
};

std::string Duration(double s) {
  if (s < 90) return Format("%.0fs", s);
  return Format("%dm%02ds", int(s) / 60, int(s) % 60);
}

int RunEval(const EvalArgs& a) {
  const char* cmd = "eval";
  const double start = NowSeconds();
  auto prof = LoadProfileArg(a.profile);
  if (!prof.ok()) return FailStatus(cmd, prof.status());
  auto specs = SplitCodecList(a.codecs);
  if (!specs.ok()) return FailStatus(cmd, specs.status());
  std::vector<Arm> arms;
  for (const std::string& s : *specs) {  // every codec is validated before the model runs
    auto codec = CreateCodec(s, prof->get());
    if (!codec.ok()) return FailStatus(cmd, codec.status().WithContext("codec '" + s + "'"));
    Arm arm;
    arm.spec = (*codec)->Spec();
    arm.requested = s;
    arm.codec = std::move(codec).value();
    arms.push_back(std::move(arm));
  }
  if (a.prefix == 0 || a.cont == 0 || a.seqs == 0) {
    return Fail(cmd, "--prefix, --cont and --seqs must be > 0");
  }

  ModelOptions options;
  options.tokenizer_path = a.tokenizer;
  options.threads = a.threads;
  auto loaded = Model::Load(a.model, options);
  if (!loaded.ok()) return FailStatus(cmd, loaded.status());
  const Model& m = **loaded;
  if (Status s = m.TokenizerStatus(); !s.ok()) return FailStatus(cmd, s);
  WarnFingerprint("model", m.fingerprint(), *prof);
  const uint32_t V = m.config().vocab_size;
  auto text = ReadFileBytes(a.text, 1ull << 31);
  if (!text.ok()) return FailStatus(cmd, text.status());
  auto ids = m.tokenizer().Encode(
      std::string_view(reinterpret_cast<const char*>(text->data()), text->size()), false);
  if (!ids.ok()) return FailStatus(cmd, ids.status().WithContext(a.text));

  // A window is P + C tokens fed plus the token that follows (the last continuation target);
  // with --bos the first fed token is BOS instead of text.
  const int32_t bos = m.tokenizer().bos_id();
  if (a.bos && bos < 0) return Fail(cmd, "--bos: the tokenizer has no BOS token");
  const uint32_t window = a.prefix + a.cont + 1 - (a.bos ? 1 : 0);
  if (ids->size() < window) {
    return Fail(cmd, a.text + " has " + std::to_string(ids->size()) + " tokens; one window of " +
                         std::to_string(a.prefix) + " + " + std::to_string(a.cont) +
                         " tokens (+1 target) needs " + std::to_string(window) +
                         ": use a longer text or a smaller --prefix/--cont");
  }
  auto starts = SampleWindows(ids->size(), window, a.seqs, a.seed);
  if (!starts.ok()) return FailStatus(cmd, starts.status());
  const bool overlap = uint64_t{a.seqs} * window > ids->size();
  if (overlap) {
    std::cerr << "kvwire eval: note: " << a.text << " has " << ids->size() << " tokens, " << a.seqs
              << " disjoint windows need " << uint64_t{a.seqs} * window << "; windows overlap\n";
  }
  const uint32_t ctx = m.config().max_seq_len;
  if (ctx && a.prefix + a.cont > ctx) {
    std::cerr << "kvwire eval: note: prefix + continuation = " << a.prefix + a.cont
              << " exceeds the model's trained context " << ctx << "\n";
  }

  const KvMetadata meta = m.kv_metadata();
  LogitStats reference;
  double prefill_s = 0, reference_s = 0;
  const bool tty = isatty(2);
  std::vector<int32_t> seq_tokens(a.prefix + a.cont + 1);
  for (uint32_t si = 0; si < a.seqs; ++si) {
    size_t k = 0;
    if (a.bos) seq_tokens[k++] = bos;
    std::copy_n(ids->begin() + (*starts)[si], window, seq_tokens.begin() + k);
    const std::span<const int32_t> all(seq_tokens);
    const auto prefix = all.first(a.prefix);
    const auto cont = all.subspan(a.prefix, a.cont);
    const auto targets = all.subspan(a.prefix + 1, a.cont);

    double t = NowSeconds();
    auto seq = m.NewSequence(a.prefix + a.cont);
    if (!seq.ok()) return FailStatus(cmd, seq.status());
    if (Status s = m.Forward(&*seq, prefix, {ForwardOptions::Logits::kNone}, nullptr); !s.ok()) {
      return FailStatus(cmd, s);
    }
    auto prefix_kv = seq->Export(0, a.prefix, DType::kF32, false, meta);
    if (!prefix_kv.ok()) return FailStatus(cmd, prefix_kv.status());
    prefill_s += NowSeconds() - t;

    t = NowSeconds();
    std::vector<float> ref_logits;
    Sequence ref_seq = *seq;  // fork: the uncompressed prefix cache, continued
    if (Status s = m.Forward(&ref_seq, cont, {}, &ref_logits); !s.ok()) return FailStatus(cmd, s);
    if (Status s = AccumulateLogitStats(ref_logits, ref_logits, targets, V, &reference); !s.ok()) {
      return FailStatus(cmd, s);
    }
    reference_s += NowSeconds() - t;

    for (Arm& arm : arms) {
      if (!arm.error.empty()) continue;
      StreamInfo info;
      info.shape = prefix_kv->shape();
      info.dtype = DType::kF32;
      info.metadata = meta;
      info.levels = {arm.spec};
      if (prof->get()) info.profile_id = prof->id;
      StreamWriterOptions wopt;
      wopt.threads = std::max(1, m.threads());
      t = NowSeconds();
      auto stream = EncodeStream(prefix_kv->view(), info, wopt, prof->get());
      arm.encode_s += NowSeconds() - t;
      if (!stream.ok()) {
        // A codec that cannot code this shape (e.g. blocks of 32 with head_dim 8) is reported,
        // not fatal: the other arms still run.
        arm.error = stream.status().ToString();
        std::cerr << (tty ? "\n" : "") << "kvwire eval: codec " << arm.spec
                  << " skipped: " << arm.error << "\n";
        continue;
      }
      arm.stream_bytes += stream->size();
      arm.elements += info.shape.elements();
      t = NowSeconds();
      auto decoded = DecodeStream(*stream, prof->get());
      arm.decode_s += NowSeconds() - t;
      if (!decoded.ok()) return FailStatus(cmd, decoded.status().WithContext("codec " + arm.spec));
      t = NowSeconds();
      auto coded_seq = m.SequenceFromKv(decoded->view(), a.cont);
      if (!coded_seq.ok()) return FailStatus(cmd, coded_seq.status());
      std::vector<float> logits;
      if (Status s = m.Forward(&*coded_seq, cont, {}, &logits); !s.ok()) return FailStatus(cmd, s);
      if (Status s = AccumulateLogitStats(logits, ref_logits, targets, V, &arm.stats); !s.ok()) {
        return FailStatus(cmd, s);
      }
      arm.forward_s += NowSeconds() - t;
    }
    const double elapsed = NowSeconds() - start;
    const double eta = elapsed / (si + 1) * (a.seqs - si - 1);
    std::cerr << (tty ? "\r" : "") << "[eval] seq " << si + 1 << "/" << a.seqs << "  elapsed "
              << Duration(elapsed) << "  ETA " << Duration(eta) << (tty ? "   " : "\n")
              << std::flush;
  }
  if (tty) std::cerr << "\n";
  const double total_s = NowSeconds() - start;

  // ---- report ----
  const double ref_ppl = reference.ppl();
  std::cout << "kvwire eval (golden protocol)\n"
            << "model:  " << a.model << "  [" << m.config().Summary() << "]\n"
            << "        fingerprint " << m.fingerprint() << "\n"
            << "text:   " << a.text << "  (" << text->size() << " bytes, " << ids->size()
            << " tokens)\n"
            << "seqs:   " << a.seqs << " x (" << a.prefix << " prefix + " << a.cont
            << " continuation) tokens" << (a.bos ? ", BOS first" : "") << ", seed " << a.seed
            << ", " << (overlap ? "overlapping" : "non-overlapping") << " windows\n"
            << "ref:    uncompressed float32 KV cache; KL(ref || codec) and top-1 agreement over "
            << reference.positions << " next-token distributions\n"
            << Format("time:   %.1f s on %u CPUs, %d threads (%s)\n\n", total_s, OnlineCpus(),
                      m.threads(), CpuModel().c_str());
  std::cout << Format("%-22s %10s %10s %10s %9s %12s %9s %8s %8s\n", "codec", "bits/elem", "PPL",
                      "dPPL", "dPPL %", "KL", "top-1 %", "enc ms", "dec ms");
  std::cout << Format("%-22s %10.3f %10.4f %10s %9s %12s %9s %8s %8s\n", "f32 (reference)", 32.0,
                      ref_ppl, "-", "-", "-", "-", "-", "-");
  for (const Arm& arm : arms) {
    const double ppl = arm.stats.ppl();
    if (!arm.error.empty()) {
      std::cout << Format("%-22s n/a: %s\n", arm.spec.c_str(), arm.error.c_str());
      continue;
    }
    std::cout << Format(
        "%-22s %10.3f %10.4f %+10.4f %+8.3f%% %12.3e %9.3f %8.2f %8.2f\n", arm.spec.c_str(),
        arm.bits(), ppl, ppl - ref_ppl, 100.0 * (ppl - ref_ppl) / ref_ppl, arm.stats.mean_kl(),
        100.0 * arm.stats.top1(), 1e3 * arm.encode_s / a.seqs, 1e3 * arm.decode_s / a.seqs);
  }
  std::cout << Format(
      "\nper sequence: prefill %.0f ms, reference continuation %.0f ms, "
      "codec arms %.0f ms\n",
      1e3 * prefill_s / a.seqs, 1e3 * reference_s / a.seqs, [&] {
        double s = 0;
        for (const Arm& arm : arms) s += arm.forward_s + arm.encode_s + arm.decode_s;
        return 1e3 * s / a.seqs;
      }());

  if (!a.json.empty()) {
    nlohmann::ordered_json j;
    j["command"] = CommandLine();
    j["date"] = UtcNow();
    j["model"] = {{"path", a.model},
                  {"summary", m.config().Summary()},
                  {"fingerprint", m.fingerprint()},
                  {"layers", m.config().layers},
                  {"kv_heads", m.config().kv_heads},
                  {"head_dim", m.config().head_dim}};
    j["text"] = {{"path", a.text}, {"bytes", text->size()}, {"tokens", ids->size()}};
    j["protocol"] = {{"prefix", a.prefix},
                     {"cont", a.cont},
                     {"seqs", a.seqs},
                     {"seed", a.seed},
                     {"bos", a.bos},
                     {"overlapping", overlap},
                     {"window_starts", *starts},
                     {"reference", "float32 uncompressed KV cache"},
                     {"positions", reference.positions}};
    j["reference"] = {{"ppl", ref_ppl}, {"bits_per_element", 32.0}};
    nlohmann::ordered_json rows = nlohmann::ordered_json::array();
    for (const Arm& arm : arms) {
      const double ppl = arm.stats.ppl();
      if (!arm.error.empty()) {
        rows.push_back({{"codec", arm.spec}, {"requested", arm.requested}, {"error", arm.error}});
        continue;
      }
      rows.push_back({{"codec", arm.spec},
                      {"requested", arm.requested},
                      {"bits_per_element", arm.bits()},
                      {"stream_bytes", arm.stream_bytes},
                      {"elements", arm.elements},
                      {"ppl", ppl},
                      {"delta_ppl", ppl - ref_ppl},
                      {"delta_ppl_pct", 100.0 * (ppl - ref_ppl) / ref_ppl},
                      {"mean_kl", arm.stats.mean_kl()},
                      {"top1_agreement", arm.stats.top1()},
                      {"encode_s", arm.encode_s},
                      {"decode_s", arm.decode_s},
                      {"continuation_s", arm.forward_s}});
    }
    j["codecs"] = std::move(rows);
    j["timing"] = {{"total_s", total_s},     {"prefill_s", prefill_s}, {"reference_s", reference_s},
                   {"threads", m.threads()}, {"cpus", OnlineCpus()},   {"cpu", CpuModel()}};
    const std::string body = j.dump(2) + "\n";
    if (Status s = WriteFileBytes(
            a.json,
            std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(body.data()), body.size()));
        !s.ok()) {
      return FailStatus(cmd, s);
    }
    std::cout << "wrote " << a.json << "\n";
  }
  return 0;
}
#else
int RunEval(const EvalArgs&) {
  return Fail("eval", "this kvwire was built without the model runner (src/model)");
}
#endif

const CommandRegistrar kRegistrar(
    "eval", "Accuracy of codecs on a model: golden protocol (KL, PPL, top-1 vs uncompressed)",
    [](CLI::App* sub) -> std::function<int()> {
      auto a = std::make_shared<EvalArgs>();
      sub->footer(
          "Samples --seqs windows of held-out text (deterministic in --seed, non-overlapping when\n"
          "the text is long enough). Per window: prefill the prefix once (float32); the\n"
          "reference continues on that uncompressed cache; each codec encodes the prefix KV into\n"
          "a stream, decodes it, and the continuation runs teacher-forced on the decoded cache\n"
          "(the continuation's own K/V stay float32). Reported per codec: bits/element all-in\n"
          "(stream bytes x 8 / elements), PPL on the continuation, dPPL, mean KL(ref || codec)\n"
          "over its next-token distributions, top-1 agreement with the reference.\n"
          "Example: kvwire eval --model models/kjv-gqa-6l/model.bin --text\n"
          "  models/data/kjv_eval.txt --seqs 16 --codecs fp16,int8,q4_0,kivi2 --json out.json");
      sub->add_option("--model", a->model, "Model file (llama2.c .bin or .gguf)")->required();
      sub->add_option("--tokenizer", a->tokenizer,
                      "llama2.c tokenizer.bin (overrides the default)");
      sub->add_option("--text", a->text, "Held-out text file")->required();
      sub->add_option("--prefix", a->prefix, "Prefix tokens P (coded)")
          ->capture_default_str()
          ->check(CLI::Range(1u, 1u << 20));
      sub->add_option("--cont", a->cont, "Continuation tokens C (evaluated)")
          ->capture_default_str()
          ->check(CLI::Range(1u, 1u << 20));
      sub->add_option("--seqs", a->seqs, "Number of windows")
          ->capture_default_str()
          ->check(CLI::Range(1u, 1u << 20));
      sub->add_option("--seed", a->seed, "Window sampling seed")->capture_default_str();
      sub->add_option("--codecs", a->codecs,
                      "Comma-separated codec specs, e.g. fp16,int8,q4_0,kivi2")
          ->required();
      sub->add_option("--profile", a->profile, "Calibration profile (.kvp) for fraqtl arms");
      sub->add_option("--json", a->json, "Also write the results as JSON");
      sub->add_option("--threads", a->threads, "Threads (0 = all cores)")
          ->capture_default_str()
          ->check(CLI::Range(0, 1024));
      sub->add_flag("--bos", a->bos, "Start every window with the BOS token");
      return [a] { return RunEval(*a); };
    });

}  // namespace
}  // namespace kvwire::cli
