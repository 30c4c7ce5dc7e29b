// kvwire bench codec: encode/decode speed of every codec on one synthetic KV cache, against
// memcpy of the same fp16 bytes measured in the same run; writes bench/results/codec_cpu.{json,md}.
// `--device cuda` runs kvwire_cuda_bench (kernels/bench/) instead: codec_cuda.{json,md}.
// kvwire bench transport: bench_transport.{h,cpp}.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cli_util.h"
#include "command.h"
#include "common/fp16.h"
#include "kvwire/codec.h"
#include "kvwire/kv_file.h"
#include "kvwire/stream.h"
#include "bench_transport.h"
#include "cli_profile.h"
#include "synthetic_kv.h"

namespace kvwire::cli {
namespace {

using Json = nlohmann::ordered_json;

struct BenchArgs {
  std::string codecs;
  std::string in, profile;  // a real KV dump instead of synthetic data; a fraqtl profile
  uint32_t layers = 32, kv_heads = 8, head_dim = 128, tokens = 4096;
  int threads = 1;
  int repeat = 3;
  std::string baseline = "q4_0";  // per-round ratios to this codec, when it is benched
  uint64_t seed = 1;
  std::string out_dir = "bench/results";
  std::string device = "cpu";  // "cuda": delegate to kvwire_cuda_bench (kernels/)
};

struct CodecResult {
  std::string spec;
  uint64_t bytes = 0;
  double bits_per_element = 0;
  double encode_s = 0, decode_s = 0;  // medians
  double rel_rmse = 0, rel_rmse_k = 0, rel_rmse_v = 0;
  std::vector<double> enc, dec;  // per round
  // Medians over rounds of this codec's GB/s over the baseline's in the same round (0: none).
  double encode_vs_baseline = 0, decode_vs_baseline = 0;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Copies every (layer, K|V) tensor of `src` into `dst`, tensors split over `threads` threads.
void CopyAll(const KvCache& src, KvCache* dst, int threads) {
  const uint32_t items = src.shape().layers * 2;
  auto work = [&](uint32_t first) {
    for (uint32_t i = first; i < items; i += static_cast<uint32_t>(threads)) {
      const KvKind kind = i % 2 ? KvKind::kValue : KvKind::kKey;
      auto from = src.tensor(i / 2, kind);
      std::memcpy(dst->tensor(i / 2, kind).data(), from.data(), from.size());
    }
  };
  std::vector<std::jthread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work, static_cast<uint32_t>(t));
  work(0);
}

// sqrt(sum (decoded - original)^2 / sum original^2) over K, V and both (fp16 caches).
void RelativeRmse(const KvCache& ref, const KvCache& got, CodecResult* r) {
  double err[2] = {0, 0}, sig[2] = {0, 0};
  for (uint32_t l = 0; l < ref.shape().layers; ++l) {
    for (int kind = 0; kind < 2; ++kind) {
      const KvKind k = kind ? KvKind::kValue : KvKind::kKey;
      auto a = ref.tensor(l, k), b = got.tensor(l, k);
      const size_t n = a.size() / 2;
      const auto* x = reinterpret_cast<const uint16_t*>(a.data());
      const auto* y = reinterpret_cast<const uint16_t*>(b.data());
      double e = 0, s = 0;
      for (size_t i = 0; i < n; ++i) {
        const double xv = HalfToFloat(x[i]), d = double(HalfToFloat(y[i])) - xv;
        e += d * d;
        s += xv * xv;
      }
      err[kind] += e;
      sig[kind] += s;
    }
  }
  auto rel = [](double e, double s) { return s > 0 ? std::sqrt(e / s) : 0.0; };
  r->rel_rmse_k = rel(err[0], sig[0]);
  r->rel_rmse_v = rel(err[1], sig[1]);
  r->rel_rmse = rel(err[0] + err[1], sig[0] + sig[1]);
}

// A codec under test: its writer settings, the stream of its untimed first round (every timed
// encode must reproduce it) and its results.
struct Bench {
  StreamInfo info;
  StreamWriterOptions options;
  std::vector<uint8_t> stream;
  CodecResult r;
};

// The untimed first round of one codec: encode, decode into `output`, the round-trip error.
// It pays the page faults of the codec's first large allocations, which would otherwise land on
// whichever codec comes first (measured: q4_0 encode 0.6 GB/s in first place, 1.4 GB/s in
// second place of the same run).
Result<Bench> PrepareBench(const std::string& spec, const KvCache& input, KvCache* output,
                           const BenchArgs& a, const LoadedProfile& profile) {
  Bench b;
  b.info.shape = input.shape();
  b.info.dtype = input.dtype();
  b.info.metadata = input.metadata();
  b.info.levels = {spec};
  if (profile.get()) b.info.profile_id = profile.id;
  b.options.threads = a.threads;
  b.r.spec = spec;
  auto s = EncodeStream(input.view(), b.info, b.options, profile.get());
  if (!s.ok()) return s.status().WithContext("encode " + spec);
  b.stream = std::move(s).value();
  auto reader = StreamReader::Open(b.stream, profile.get());
  if (!reader.ok()) return reader.status().WithContext("decode " + spec);
  KVWIRE_RETURN_IF_ERROR((*reader)->DecodeAll(output->view()).WithContext("decode " + spec));
  b.r.bytes = b.stream.size();
  b.r.bits_per_element = double(b.stream.size()) * 8.0 / double(input.shape().elements());
  RelativeRmse(input, *output, &b.r);
  return b;
}

// One timed round of one codec: an encode (which must give the first round's bytes) and a
// decode of that stream into `output`, each timed on its second run. A codec coding chunk after
// chunk finds its tables and scratch in the cache; a first run after another codec's would not,
// and would measure the other codec's evictions.
Status BenchRound(Bench& b, const KvCache& input, KvCache* output, const LoadedProfile& profile) {
  const std::string& spec = b.r.spec;
  for (int run = 0; run < 2; ++run) {
    const double t0 = NowSeconds();
    auto s = EncodeStream(input.view(), b.info, b.options, profile.get());
    if (run == 1) b.r.enc.push_back(NowSeconds() - t0);
    if (!s.ok()) return s.status().WithContext("encode " + spec);
    if (*s != b.stream) {
      return Status(StatusCode::kInternal, spec + ": encoding is not deterministic across runs");
    }
  }
  for (int run = 0; run < 2; ++run) {
    const double t0 = NowSeconds();
    auto reader = StreamReader::Open(b.stream, profile.get());
    if (!reader.ok()) return reader.status().WithContext("decode " + spec);
    KVWIRE_RETURN_IF_ERROR((*reader)->DecodeAll(output->view()).WithContext("decode " + spec));
    if (run == 1) b.r.dec.push_back(NowSeconds() - t0);
  }
  return Status::Ok();
}

std::string MarkdownReport(const BenchArgs& a, const Json& j, const std::vector<CodecResult>& rs,
                           double memcpy_gbps, double gb) {
  std::ostringstream md;
  const KvShape s{j["shape"]["layers"].get<uint32_t>(), j["shape"]["tokens"].get<uint32_t>(),
                  j["shape"]["kv_heads"].get<uint32_t>(), j["shape"]["head_dim"].get<uint32_t>()};
  const bool ratios = j.contains("baseline");
  md << "# kvwire codec speed, CPU\n\n"
     << "Command: `" << j["command"].get<std::string>() << "`\n\n"
     << "Machine: " << j["machine"]["cpu"].get<std::string>() << ", nproc "
     << j["machine"]["nproc"].get<unsigned>() << ", " << j["machine"]["date"].get<std::string>()
     << "\n\n"
     << "Data: " << j["data"].get<std::string>() << ", " << s.layers << " layers x " << s.tokens
     << " tokens x " << s.kv_heads << " kv heads x " << s.head_dim
     << " head_dim, fp16 = " << Format("%.3f", gb) << " GB. Encode threads " << a.threads
     << ", decode single-threaded. One untimed run of every codec, then " << a.repeat
     << " timed rounds, each timing memcpy and then every codec in the order listed (its "
        "encode and its decode each run twice in a row, the second run timed); medians over "
        "the rounds.\n\n"
     << "GB/s = fp16 input bytes (elements x 2) / seconds, whole stream (EncodeStream, "
        "StreamReader::DecodeAll into an fp16 cache). memcpy of the same bytes in this run ("
     << a.threads << (a.threads == 1 ? " thread" : " threads") << "): **"
     << Format("%.2f", memcpy_gbps) << " GB/s**.";
  if (ratios) {
    md << " *vs " << a.baseline << "*: the median over rounds of the codec's GB/s over "
       << a.baseline << "'s in the same round.";
  }
  md << "\n\n| codec | bits/elem (all-in) | encode GB/s | vs memcpy | decode GB/s | vs memcpy | ";
  if (ratios) md << "encode vs " << a.baseline << " | decode vs " << a.baseline << " | ";
  md << "rel. RMSE | K rel. RMSE | V rel. RMSE |\n"
     << "|---|---:|---:|---:|---:|---:|" << (ratios ? "---:|---:|" : "") << "---:|---:|---:|\n";
  for (const CodecResult& r : rs) {
    const double e = gb / r.encode_s, d = gb / r.decode_s;
    md << "| " << r.spec << " | " << Format("%.4f", r.bits_per_element) << " | "
       << Format("%.2f", e) << " | " << Format("%.3f", e / memcpy_gbps) << " | "
       << Format("%.2f", d) << " | " << Format("%.3f", d / memcpy_gbps) << " | ";
    if (ratios) {
      md << Format("%.3f", r.encode_vs_baseline) << " | " << Format("%.3f", r.decode_vs_baseline)
         << " | ";
    }
    md << Format("%.4g", r.rel_rmse) << " | " << Format("%.4g", r.rel_rmse_k) << " | "
       << Format("%.4g", r.rel_rmse_v) << " |\n";
  }
  md << "\nrel. RMSE = sqrt(sum (decoded - input)^2 / sum input^2) on this data; it is a "
        "sanity check of the round trip, not an accuracy result (see `kvwire eval`).\n";
  return md.str();
}

int RunBenchCodec(const BenchArgs& a) {
  const char* cmd = "bench codec";
  std::vector<std::string> specs;
  if (a.codecs.empty()) {
    specs = BaselineCodecSpecs();
    if (specs.empty()) return Fail(cmd, "no baseline codecs are registered in this build");
  } else {
    std::stringstream ss(a.codecs);
    for (std::string item; std::getline(ss, item, ',');) {
      if (item.empty()) return Fail(cmd, "--codecs '" + a.codecs + "' has an empty entry");
      specs.push_back(item);
    }
  }

  auto profile = LoadProfileArg(a.profile);
  if (!profile.ok()) return FailStatus(cmd, profile.status());
  for (std::string& spec : specs) {  // fail on a bad name before spending minutes on data
    auto codec = CreateCodec(spec, profile->get());
    if (!codec.ok()) return FailStatus(cmd, codec.status());
  }
  Result<KvCache> input = Status(StatusCode::kInternal, "no input");
  std::string data;
  if (!a.in.empty()) {  // a real capture, converted to an fp16 cache (what the codecs read)
    auto dump = LoadKvDump(a.in);
    if (!dump.ok()) return FailStatus(cmd, dump.status());
    input = KvCache::Create(dump->shape(), DType::kF16);
    if (!input.ok()) return FailStatus(cmd, input.status());
    input->metadata() = dump->metadata();
    const KvShape& sh = dump->shape();
    std::vector<float> rows(size_t{sh.tokens} * sh.kv_heads * sh.head_dim);
    for (uint32_t l = 0; l < sh.layers; ++l) {
      for (KvKind k : {KvKind::kKey, KvKind::kValue}) {
        Status st = dump->view().ReadF32(l, k, 0, sh.tokens, rows.data());
        if (st.ok()) st = input->view().WriteF32(l, k, 0, sh.tokens, rows.data());
        if (!st.ok()) return FailStatus(cmd, st.WithContext(a.in));
      }
    }
    data = "KV captured from a model (" + a.in + ", " + dump->metadata().model_fingerprint + ")";
    WarnFingerprint("KV dump model", dump->metadata().model_fingerprint, *profile);
  } else {
    SyntheticKvOptions synth;
    synth.shape = {a.layers, a.tokens, a.kv_heads, a.head_dim};
    synth.seed = a.seed;
    synth.threads = std::max<int>(a.threads, static_cast<int>(OnlineCpus()));
    std::cerr << "[bench] generating synthetic KV " << a.layers << "x" << a.tokens << "x"
              << a.kv_heads << "x" << a.head_dim << " fp16...\n";
    input = MakeSyntheticKv(synth);
    data = "SYNTHETIC KV cache (kvwire synth generator, seed " + std::to_string(a.seed) + ")";
  }
  if (!input.ok()) return FailStatus(cmd, input.status());
  auto output = KvCache::Create(input->shape(), DType::kF16);
  if (!output.ok()) return FailStatus(cmd, output.status());
  const double gb = double(input->shape().elements()) * 2.0 / 1e9;

  std::vector<double> copies;
  CopyAll(*input, &*output, a.threads);  // warm-up: first touch of the destination pages

  // Every codec's untimed round first, then the timed rounds: each round times every codec once
  // (and memcpy), one after another, so that a change in the machine's speed during the run
  // (it is shared) falls on every codec alike and the per-round ratios stay fair.
  std::vector<Bench> benches;
  for (size_t i = 0; i < specs.size(); ++i) {
    auto b = PrepareBench(specs[i], *input, &*output, a, *profile);
    if (!b.ok()) return FailStatus(cmd, b.status());
    benches.push_back(std::move(b).value());
  }
  for (int round = 0; round < a.repeat; ++round) {
    double t0 = NowSeconds();
    CopyAll(*input, &*output, a.threads);
    copies.push_back(NowSeconds() - t0);
    for (Bench& b : benches) {
      const Status st = BenchRound(b, *input, &*output, *profile);
      if (!st.ok()) return FailStatus(cmd, st);
    }
    std::cerr << "[bench] round " << round + 1 << "/" << a.repeat << " done\n";
  }
  const double memcpy_gbps = gb / Median(copies);
  const Bench* base = nullptr;
  for (const Bench& b : benches) {
    if (b.r.spec == a.baseline) base = &b;
  }
  std::vector<CodecResult> results;
  for (Bench& b : benches) {
    CodecResult& r = b.r;
    r.encode_s = Median(r.enc);
    r.decode_s = Median(r.dec);
    if (base != nullptr) {
      std::vector<double> e, d;  // the baseline's time over this codec's: its GB/s ratio
      for (int i = 0; i < a.repeat; ++i) {
        e.push_back(base->r.enc[size_t(i)] / r.enc[size_t(i)]);
        d.push_back(base->r.dec[size_t(i)] / r.dec[size_t(i)]);
      }
      r.encode_vs_baseline = Median(e);
      r.decode_vs_baseline = Median(d);
    }
    std::cerr << "[bench] "
              << Format("%-16s %8.4f b/e  encode %7.3f GB/s  decode %7.3f GB/s  rel RMSE %.4g",
                        r.spec.c_str(), r.bits_per_element, gb / r.encode_s, gb / r.decode_s,
                        r.rel_rmse)
              << "\n";
    results.push_back(r);
  }

  Json j;
  j["command"] = CommandLine();
  j["machine"] = {{"cpu", CpuModel()}, {"nproc", OnlineCpus()}, {"date", UtcNow()}};
  j["data"] = data;
  if (a.in.empty()) j["seed"] = a.seed;
  if (profile->get()) j["profile"] = profile->id;
  j["shape"] = {{"layers", input->shape().layers},
                {"tokens", input->shape().tokens},
                {"kv_heads", input->shape().kv_heads},
                {"head_dim", input->shape().head_dim}};
  j["elements"] = input->shape().elements();
  j["fp16_bytes"] = input->shape().elements() * 2;
  j["encode_threads"] = a.threads;
  j["decode_threads"] = 1;
  j["repeat"] = a.repeat;
  j["rounds"] =
      "each timed round runs memcpy, then every codec in the order listed: its encode twice and "
      "its decode twice, the second run of each timed";
  if (base != nullptr) j["baseline"] = a.baseline;
  j["gb_definition"] = "1e9 bytes of fp16 input (elements x 2)";
  j["memcpy_gbps"] = memcpy_gbps;
  Json list = Json::array();
  for (const CodecResult& r : results) {
    list.push_back({{"codec", r.spec},
                    {"bytes", r.bytes},
                    {"bits_per_element", r.bits_per_element},
                    {"encode_s", r.encode_s},
                    {"decode_s", r.decode_s},
                    {"encode_gbps", gb / r.encode_s},
                    {"decode_gbps", gb / r.decode_s},
                    {"encode_vs_memcpy", gb / r.encode_s / memcpy_gbps},
                    {"decode_vs_memcpy", gb / r.decode_s / memcpy_gbps},
                    {"rel_rmse", r.rel_rmse},
                    {"rel_rmse_k", r.rel_rmse_k},
                    {"rel_rmse_v", r.rel_rmse_v},
                    {"encode_s_rounds", r.enc},
                    {"decode_s_rounds", r.dec}});
    if (base != nullptr) {
      list.back()["encode_vs_baseline"] = r.encode_vs_baseline;
      list.back()["decode_vs_baseline"] = r.decode_vs_baseline;
    }
  }
  j["codecs"] = std::move(list);
  const std::string md = MarkdownReport(a, j, results, memcpy_gbps, gb);

  return WriteBenchResults(cmd, a.out_dir, "codec_cpu", j.dump(2) + "\n", md);
}

// `bench codec --device cuda`: the CUDA benchmark is its own binary (kernels/bench/), built only
// with CUDA, next to this one; this CLI stays free of CUDA and forwards the shape options to it.
int RunBenchCodecCuda(const BenchArgs& a, bool tokens_given) {
  std::error_code ec;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  const std::filesystem::path bench = self.parent_path() / "kvwire_cuda_bench";
  if (ec || !std::filesystem::exists(bench)) {
    return Fail("bench codec", "--device cuda: this build has no CUDA kernels (no " +
                                   bench.string() +
                                   "); configure with -DKVWIRE_WITH_CUDA=ON where the CUDA "
                                   "toolkit is installed");
  }
  std::vector<std::string> args = {bench.string(),
                                   "--layers",
                                   std::to_string(a.layers),
                                   "--kv-heads",
                                   std::to_string(a.kv_heads),
                                   "--head-dim",
                                   std::to_string(a.head_dim),
                                   "--repeat",
                                   std::to_string(a.repeat),
                                   "--out-dir",
                                   a.out_dir};
  if (tokens_given) args.insert(args.end(), {"--tokens", std::to_string(a.tokens)});
  if (!a.codecs.empty()) args.insert(args.end(), {"--codecs", a.codecs});
  std::vector<char*> argv;
  for (std::string& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  std::cout.flush();
  execv(argv[0], argv.data());
  return Fail("bench codec",
              "--device cuda: cannot run " + bench.string() + ": " + std::strerror(errno));
}

const CommandRegistrar kRegistrar(
    "bench", "Benchmarks: codec speed (bench codec), transport (bench transport)",
    [](CLI::App* sub) -> std::function<int()> {
      auto a = std::make_shared<BenchArgs>();
      sub->require_subcommand(1);
      CLI::App* codec = sub->add_subcommand(
          "codec",
          "Encode/decode GB/s of every codec vs memcpy, bits/element and round-trip error");
      codec->footer(
          "Generates one SYNTHETIC fp16 KV cache (see `kvwire synth --help`), then for each codec\n"
          "times EncodeStream and StreamReader::DecodeAll (into an fp16 cache) of the whole\n"
          "stream, and memcpy of the same fp16 bytes. After one untimed run of each codec, every\n"
          "one of the --repeat rounds times memcpy and each codec in turn (the second of two\n"
          "encodes, the second of two decodes), so that the machine's changes of speed fall on\n"
          "all of them; medians over the rounds, and each codec's per-round ratio to --baseline\n"
          "(median over rounds).\n"
          "GB/s counts fp16 input bytes (elements x 2) / seconds. Progress goes to stderr; the\n"
          "table to stdout and <out-dir>/codec_cpu.md, all numbers to <out-dir>/codec_cpu.json.\n"
          "Example (small): kvwire bench codec --layers 4 --tokens 1024 --codecs fp16,q4_0,kivi2");
      codec->add_option("--codecs", a->codecs,
                        "Comma-separated codec specs (default: every baseline codec)");
      codec->add_option("--in", a->in,
                        "A KV dump (kvwire capture) to bench on instead of synthetic data; "
                        "--layers/--tokens/--kv-heads/--head-dim/--seed then do not apply");
      codec->add_option("--profile", a->profile, "Profile for fraqtl codecs (kvwire calibrate)");
      codec->add_option("--layers", a->layers, "Layers")
          ->capture_default_str()
          ->check(CLI::Range(1u, kMaxLayers));
      codec->add_option("--kv-heads", a->kv_heads, "KV heads")
          ->capture_default_str()
          ->check(CLI::Range(1u, kMaxKvHeads));
      codec->add_option("--head-dim", a->head_dim, "Head dimension")
          ->capture_default_str()
          ->check(CLI::Range(1u, kMaxHeadDim));
      codec->add_option("--tokens", a->tokens, "Tokens")
          ->capture_default_str()
          ->check(CLI::Range(1u, kMaxTokens));
      codec->add_option("--threads", a->threads, "Encoder (and memcpy) threads")
          ->capture_default_str()
          ->check(CLI::Range(1, 1024));
      codec->add_option("--repeat", a->repeat, "Timed rounds (medians reported)")
          ->capture_default_str()
          ->check(CLI::Range(1, 1000));
      codec
          ->add_option("--baseline", a->baseline,
                       "Codec the others are compared with round by round, when it is among "
                       "--codecs")
          ->capture_default_str();
      codec->add_option("--seed", a->seed, "Seed of the synthetic data")->capture_default_str();
      codec->add_option("--out-dir", a->out_dir, "Where codec_cpu.json/.md go")
          ->capture_default_str();
      codec
          ->add_option("--device", a->device,
                       "cpu, or cuda: the CUDA kernels via kvwire_cuda_bench (Llama-3-8B shape at "
                       "4K and 32K tokens unless --tokens; writes codec_cuda.json/.md; --threads "
                       "and --seed do not apply)")
          ->capture_default_str()
          ->check(CLI::IsMember({"cpu", "cuda"}));
      auto t = std::make_shared<TransportBenchArgs>();
      auto t_text = std::make_shared<TransportBenchText>();
      CLI::App* transport = sub->add_subcommand(
          "transport",
          "Loopback GB/s and latency per message size of the ucx and tcp backends, alone and "
          "under the session, beside ucx_perftest -t ucp_am_bw");
      AddTransportBenchOptions(transport, t.get(), t_text.get());
      return [a, codec, t, t_text] {
        if (codec->parsed() && a->device == "cuda") {
          return RunBenchCodecCuda(*a, codec->count("--tokens") > 0);
        }
        if (codec->parsed()) return RunBenchCodec(*a);
        std::string error;
        if (!FinishTransportBenchArgs(*t_text, t.get(), &error))
          return Fail("bench transport", error);
        return RunBenchTransport(*t);
      };
    });

}  // namespace
}  // namespace kvwire::cli
