// Driver: the single-process reference, both processes, the report and the fp16 check.
#include <algorithm>
#include <iostream>
#include <nlohmann/json.hpp>

#include "../common/example_util.h"
#include "../common/generation.h"
#include "../common/process_pair.h"
#include "handoff.h"

namespace kvwire::examples::handoff {
namespace {

using nlohmann::json;

std::string MsList(const json& ns, int64_t origin) {
  std::string out;
  for (const auto& t : ns) out += Format(" %.1f", Ms(origin, t.get<int64_t>()));
  return out;
}

}  // namespace

int RunDriver(const Args& a) {
  StartWatchdog(a.common.timeout_ms + 10000);
  auto backend = DescribeBackend(a.common.backend);
  if (!backend.ok()) return FailStatus(backend.status());
  // Both children in namespaces of their own (B's must be reachable from A's), or neither.
  const bool in_netns = !a.decode_netns.empty() || !a.prefill_netns.empty();
  if (in_netns && (a.decode_netns.empty() || a.prefill_netns.empty() || a.listen_address.empty()))
    return Fail("--decode-netns, --prefill-netns and --listen-address go together");
  if (!in_netns && !a.listen_address.empty())
    return Fail("--listen-address needs --decode-netns and --prefill-netns (else: loopback)");
  if (in_netns && a.common.backend != "tcp")
    return Fail("--decode-netns / --prefill-netns run the tcp backend only");
  auto loaded = LoadCommon(a.common, /*need_key=*/false, /*need_prompt=*/true);
  if (!loaded.ok()) return FailStatus(loaded.status());
  const Model& model = *loaded->model;
  const std::vector<int32_t>& prompt = loaded->prompt;
  const uint32_t n_new = a.common.new_tokens;

  // The single-process run every number is compared with (float32 KV, never serialized).
  int64_t t0 = NowNs();
  auto reference = model.Generate(prompt, n_new, /*stop_at_eos=*/false);
  const double generate_ms = Ms(t0, NowNs());
  if (!reference.ok()) return FailStatus(reference.status(), "reference run");
  double ttft_ms = 0;  // single process: prefill + first token
  {
    auto seq = model.NewSequence(static_cast<uint32_t>(prompt.size()));
    if (!seq.ok()) return FailStatus(seq.status());
    std::vector<float> logits;
    t0 = NowNs();
    if (Status s = model.Forward(&*seq, prompt, {ForwardOptions::Logits::kLast}, &logits); !s.ok())
      return FailStatus(s, "reference prefill");
    ttft_ms = Ms(t0, NowNs());
  }
  auto margin = SmallestTop1Margin(model, prompt, *reference);
  if (!margin.ok()) return FailStatus(margin.status());
  const std::string ref_text = model.tokenizer().Decode(*reference);

  auto dir = ScratchDir::Create("kvwire-handoff");
  if (!dir.ok()) return FailStatus(dir.status());
  CommonArgs child = a.common;
  if (child.key_file.empty()) {
    child.key_file = dir->File("psk");
    if (Status s = WriteRandomKeyFile(child.key_file); !s.ok()) return FailStatus(s);
  }
  const std::string ref_file = dir->File("reference.json");
  if (Status s = WriteTokensFile(ref_file, *reference); !s.ok()) return FailStatus(s);

  std::cout << "== prefill -> decode handoff: backend " << *backend << ", codec " << a.common.codec
            << "\nmodel: " << model.config().Summary() << " (" << model.fingerprint().substr(0, 23)
            << "...)\nprompt: " << Quoted(a.common.prompt) << " (" << prompt.size() << " tokens)"
            << std::endl;
  if (in_netns)
    std::cout << "link: decode in network namespace " << a.decode_netns << " on "
              << a.listen_address << ", prefill in " << a.prefill_netns << std::endl;

  ProcessPairSpec spec;
  spec.address_file = dir->File("address");
  spec.server_name = "decode";
  spec.server_args = ChildArgs(child);
  const std::string listen = in_netns ? a.listen_address + ":0" : "127.0.0.1:0";
  spec.server_args.insert(
      spec.server_args.end(),
      {"--role", "decode", "--listen", listen, "--address-file", spec.address_file, "--result-file",
       dir->File("decode.json"), "--reference-file", ref_file});
  spec.client_name = "prefill";
  spec.client_args = ChildArgs(child);
  spec.client_args.insert(spec.client_args.end(),
                          {"--role", "prefill", "--result-file", dir->File("prefill.json")});
  if (in_netns) {
    spec.server_args.insert(spec.server_args.end(), {"--netns", a.decode_netns});
    spec.client_args.insert(spec.client_args.end(), {"--netns", a.prefill_netns});
  }
  spec.deadline_ns = NowNs() + int64_t{a.common.timeout_ms} * 1000000;
  if (Status s = RunProcessPair(spec); !s.ok()) return Fail(s.message());

  auto pj = ReadJsonFile(dir->File("prefill.json"));
  if (!pj.ok()) return FailStatus(pj.status());
  auto dj = ReadJsonFile(dir->File("decode.json"));
  if (!dj.ok()) return FailStatus(dj.status());
  const json& p = *pj;
  const json& d = *dj;
  try {
    const std::vector<int32_t> tokens = d["tokens"].get<std::vector<int32_t>>();
    const int32_t diff = FirstDifference(tokens, *reference);
    const bool equal = diff < 0;
    const uint64_t elements = d["elements"].get<uint64_t>();
    const uint64_t wire = p["wire_bytes"].get<uint64_t>();
    const uint64_t header = p["header_bytes"].get<uint64_t>();
    const uint64_t fp16_bytes = elements * 2;
    const int64_t start = p["start_ns"].get<int64_t>();
    const double ready_e2e = Ms(start, d["ready_ns"].get<int64_t>());
    const double first_token_e2e = Ms(start, d["token_ns"][0].get<int64_t>());
    const double receiver_ms = d["receiver_seconds"].get<double>() * 1000;
    // The tail of the pipeline, where the link shows most: from A's forward writing the last
    // layer's K/V (its hook sends that layer at once; attention and MLP of that layer still
    // run on A) to B having decoded it. Layers before it travel while A computes.
    const double tail_ms =
        Ms(p["layer_done_ns"].back().get<int64_t>(), d["ready_ns"].get<int64_t>());
    const double bits = double(wire + header) * 8 / double(elements);
    const json& ag = d["agreement"];
    const uint32_t ag_pos = ag["positions"].get<uint32_t>(), ag_ok = ag["agree"].get<uint32_t>();

    std::cout << "\nKV on the wire: " << model.config().layers << " layers x "
              << d["kv_tokens"].get<uint32_t>() << " tokens x " << model.config().kv_heads
              << " kv heads x " << model.config().head_dim << " = " << Thousands(elements)
              << " elements (K and V; the last prompt token travels in the request note)\n"
              << "  wire bytes: " << Thousands(wire) << " (chunk frames + descriptors, "
              << p["chunks"].get<uint64_t>() << " chunks) + " << Thousands(header)
              << " stream header = " << Thousands(wire + header) << "\n"
              << Format("  %.2fx compression vs fp16 (%s bytes); %.3f bits/element all-in\n",
                        double(fp16_bytes) / double(wire + header), Thousands(fp16_bytes).c_str(),
                        bits)
              << "timeline, ms from A's start (one monotonic clock, both processes):\n"
              << "  A: layer K/V computed at" << MsList(p["layer_done_ns"], start)
              << Format("; prefill done %.1f; send confirmed %.1f\n",
                        Ms(start, p["prefill_done_ns"].get<int64_t>()),
                        Ms(start, p["confirmed_ns"].get<int64_t>()))
              << "  B: layer ready at" << MsList(d["layer_ready_ns"], start) << "\n"
              << Format(
                     "  KV-ready on B: %.1f ms from the request's first message to the last "
                     "layer decoded; %.1f ms end to end from A's start, %.1f ms after A "
                     "computed the last layer's K/V\n",
                     receiver_ms, ready_e2e, tail_ms)
              << Format(
                     "  first token on B: %.1f ms from A's start (one process: %.1f ms "
                     "prefill + first token; Model::Generate of %u tokens %.1f ms)\n",
                     first_token_e2e, ttft_ms, n_new, generate_ms)
              << "generated by B:      " << Quoted(d["text"].get<std::string>()) << "\n"
              << "single process (f32): " << Quoted(ref_text) << "\n"
              << "text equal: "
              << (equal ? "yes" : "no, first difference at token " + std::to_string(diff))
              << Format(
                     "\ntop-1 agreement, teacher-forced on the single-process tokens: "
                     "%u/%u = %.2f%%",
                     ag_ok, ag_pos, 100.0 * ag_ok / std::max(1u, ag_pos))
              << Format(" (smallest top-1 logit margin of the reference run: %.3g)",
                        double(*margin))
              << std::endl;

    if (!a.common.json.empty()) {
      json out;
      out["example"] = "prefill_decode_handoff";
      out["backend"] = a.common.backend;
      out["codec"] = a.common.codec;
      out["model_fingerprint"] = model.fingerprint();
      out["prompt_tokens"] = prompt.size();
      out["new_tokens"] = n_new;
      out["elements"] = elements;
      out["wire_bytes"] = wire;
      out["header_bytes"] = header;
      out["fp16_bytes"] = fp16_bytes;
      out["ratio_vs_fp16"] = double(fp16_bytes) / double(wire + header);
      out["bits_per_element"] = bits;
      out["kv_ready_receiver_ms"] = receiver_ms;
      out["kv_ready_end_to_end_ms"] = ready_e2e;
      out["prefill_ms"] = Ms(start, p["prefill_done_ns"].get<int64_t>());
      out["kv_ready_after_last_layer_ms"] = tail_ms;
      out["decode_netns"] = a.decode_netns;
      out["prefill_netns"] = a.prefill_netns;
      out["peer"] = d["peer"];
      out["first_token_end_to_end_ms"] = first_token_e2e;
      out["single_process_ttft_ms"] = ttft_ms;
      out["top1_teacher_forced"] = double(ag_ok) / std::max(1u, ag_pos);
      out["top1_positions"] = ag_pos;
      out["text_equal"] = equal;
      out["first_difference"] = diff;
      out["text"] = d["text"];
      out["reference_text"] = ref_text;
      out["smallest_reference_margin"] = *margin;
      if (Status s = WriteFileAtomic(a.common.json, DumpJson(out)); !s.ok()) return FailStatus(s);
    }
    const bool must_equal = a.require_equal || a.common.codec == "fp16";
    if (must_equal && !equal)
      return Fail("B's text differs from the single-process run at token " + std::to_string(diff) +
                  " (codec " + a.common.codec + ")");
  } catch (const json::exception& e) {
    return Fail(std::string("malformed result file: ") + e.what());
  }
  return 0;
}

}  // namespace kvwire::examples::handoff
