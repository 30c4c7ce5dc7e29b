// Driver: the unmigrated run, both nodes, the report and the fp16 check.
#include <algorithm>
#include <iostream>
#include <nlohmann/json.hpp>

#include "../common/example_util.h"
#include "../common/generation.h"
#include "../common/process_pair.h"
#include "migration.h"

namespace kvwire::examples::migration {

using nlohmann::json;

int RunDriver(const Args& a) {
  StartWatchdog(a.common.timeout_ms + 10000);
  auto backend = DescribeBackend(a.common.backend);
  if (!backend.ok()) return FailStatus(backend.status());
  const uint32_t total = a.common.new_tokens;
  if (a.migrate_after + a.overlap_tokens >= total)
    return Fail(
        "--new-tokens must exceed --migrate-after + --overlap-tokens (B generates the "
        "rest)");
  auto loaded = LoadCommon(a.common, /*need_key=*/false, /*need_prompt=*/true);
  if (!loaded.ok()) return FailStatus(loaded.status());
  const Model& model = *loaded->model;
  const std::vector<int32_t>& prompt = loaded->prompt;

  // The unmigrated run: one process, float32 KV, never serialized.
  int64_t t0 = NowNs();
  auto reference = model.Generate(prompt, total, /*stop_at_eos=*/false);
  const double generate_ms = Ms(t0, NowNs());
  if (!reference.ok()) return FailStatus(reference.status(), "reference run");
  auto margin = SmallestTop1Margin(model, prompt, *reference);
  if (!margin.ok()) return FailStatus(margin.status());

  auto dir = ScratchDir::Create("kvwire-migration");
  if (!dir.ok()) return FailStatus(dir.status());
  CommonArgs child = a.common;
  if (child.key_file.empty()) {
    child.key_file = dir->File("psk");
    if (Status s = WriteRandomKeyFile(child.key_file); !s.ok()) return FailStatus(s);
  }
  const std::string ref_file = dir->File("reference.json");
  if (Status s = WriteTokensFile(ref_file, *reference); !s.ok()) return FailStatus(s);

  std::cout << "== context migration A -> B: backend " << *backend << ", codec " << a.common.codec
            << "\nmodel: " << model.config().Summary() << " (" << model.fingerprint().substr(0, 23)
            << "...)\nprompt: " << Quoted(a.common.prompt) << " (" << prompt.size() << " tokens), "
            << total << " tokens to generate, A is told "
            << "to migrate after " << a.migrate_after << std::endl;

  ProcessPairSpec spec;
  spec.address_file = dir->File("address");
  spec.server_name = "target (node B)";
  spec.server_args = ChildArgs(child);
  spec.server_args.insert(
      spec.server_args.end(),
      {"--role", "target", "--listen", "127.0.0.1:0", "--address-file", spec.address_file,
       "--result-file", dir->File("target.json"), "--reference-file", ref_file});
  spec.client_name = "source (node A)";
  spec.client_args = ChildArgs(child);
  spec.client_args.insert(
      spec.client_args.end(),
      {"--role", "source", "--result-file", dir->File("source.json"), "--migrate-after",
       std::to_string(a.migrate_after), "--overlap-tokens", std::to_string(a.overlap_tokens)});
  spec.deadline_ns = NowNs() + int64_t{a.common.timeout_ms} * 1000000;
  if (Status s = RunProcessPair(spec); !s.ok()) return Fail(s.message());

  auto sj = ReadJsonFile(dir->File("source.json"));
  if (!sj.ok()) return FailStatus(sj.status());
  auto tj = ReadJsonFile(dir->File("target.json"));
  if (!tj.ok()) return FailStatus(tj.status());
  const json& src = *sj;
  const json& tgt = *tj;
  try {
    std::vector<int32_t> joined = src["tokens"].get<std::vector<int32_t>>();
    const size_t from_a = joined.size();
    const auto from_b = tgt["tokens"].get<std::vector<int32_t>>();
    joined.insert(joined.end(), from_b.begin(), from_b.end());
    const int32_t diff = FirstDifference(joined, *reference);
    const bool equal = diff < 0;
    const json& pre = src["prefix"];
    const json& tail = src["tail"];
    const uint64_t elements = tgt["elements"].get<uint64_t>();
    const uint64_t fp16_bytes = elements * 2;
    const uint64_t wire = pre["wire_bytes"].get<uint64_t>() + tail["wire_bytes"].get<uint64_t>();
    const uint64_t header =
        pre["header_bytes"].get<uint64_t>() + tail["header_bytes"].get<uint64_t>();
    const double bits = double(wire + header) * 8 / double(elements);
    const int64_t start = src["start_ns"].get<int64_t>();
    const int64_t migrate = src["migrate_ns"].get<int64_t>();
    const int64_t stop = src["stop_ns"].get<int64_t>();
    const int64_t b_first = tgt["token_ns"][0].get<int64_t>();
    const json& ag = tgt["agreement"];
    const uint32_t ag_pos = ag.is_null() ? 0 : ag["positions"].get<uint32_t>();
    const uint32_t ag_ok = ag.is_null() ? 0 : ag["agree"].get<uint32_t>();
    // A's decode step before the migration, for scale.
    const double step_ms = Ms(start, migrate) / double(a.migrate_after);

    std::cout << "\nA generated " << from_a << " tokens (" << src["overlap_tokens"].get<int>()
              << " of them while the prefix was on the wire), B the other " << from_b.size()
              << "\nbytes on the wire:\n"
              << Format("  prefix: tokens [0, %u): %s bytes (+ %s header)\n",
                        pre["tokens"].get<uint32_t>(),
                        Thousands(pre["wire_bytes"].get<uint64_t>()).c_str(),
                        Thousands(pre["header_bytes"].get<uint64_t>()).c_str())
              << Format("  tail:   tokens [%u, %u): %s bytes (+ %s header)\n",
                        tail["token_begin"].get<uint32_t>(),
                        tail["token_begin"].get<uint32_t>() + tail["tokens"].get<uint32_t>(),
                        Thousands(tail["wire_bytes"].get<uint64_t>()).c_str(),
                        Thousands(tail["header_bytes"].get<uint64_t>()).c_str())
              << Format(
                     "  total %s bytes for %s elements: %.2fx compression vs fp16 (%s "
                     "bytes), %.3f bits/element all-in\n",
                     Thousands(wire + header).c_str(), Thousands(elements).c_str(),
                     double(fp16_bytes) / double(wire + header), Thousands(fp16_bytes).c_str(),
                     bits)
              << "times (ms, one monotonic clock for both processes):\n"
              << Format("  A's decode step before the migration: %.2f ms/token\n", step_ms)
              << Format(
                     "  pre-copy: %.1f ms from A's decision to B's confirmation (A kept "
                     "generating)\n",
                     Ms(migrate, src["prefix_done_ns"].get<int64_t>()))
              << Format(
                     "  switch, from A's stop: tail decoded on B %.1f ms, confirmed to A "
                     "%.1f ms, B's first token %.1f ms (the sequence's downtime)\n",
                     Ms(stop, tgt["tail_ready_ns"].get<int64_t>()),
                     Ms(stop, src["tail_done_ns"].get<int64_t>()), Ms(stop, b_first))
              << Format(
                     "  whole migration, A's decision -> B's first token: %.1f ms; A freed "
                     "its cache after B confirmed the tail\n",
                     Ms(migrate, b_first))
              << Format("  unmigrated run (Model::Generate, one process): %.1f ms for %u tokens\n",
                        generate_ms, total)
              << "joined (A then B): " << Quoted(model.tokenizer().Decode(joined)) << "\n"
              << "unmigrated:        " << Quoted(model.tokenizer().Decode(*reference)) << "\n"
              << "equal: "
              << (equal ? "yes" : "no, first difference at token " + std::to_string(diff))
              << Format(
                     "\ntop-1 agreement after the switch, teacher-forced on the unmigrated "
                     "tokens: %u/%u = %.2f%% (smallest top-1 logit margin of the unmigrated "
                     "run: %.3g)",
                     ag_ok, ag_pos, 100.0 * ag_ok / std::max(1u, ag_pos), double(*margin))
              << std::endl;

    if (!a.common.json.empty()) {
      json out;
      out["example"] = "context_migration";
      out["backend"] = a.common.backend;
      out["codec"] = a.common.codec;
      out["model_fingerprint"] = model.fingerprint();
      out["prompt_tokens"] = prompt.size();
      out["new_tokens"] = total;
      out["tokens_from_a"] = from_a;
      out["prefix"] = pre;
      out["tail"] = tail;
      out["elements"] = elements;
      out["wire_bytes"] = wire;
      out["header_bytes"] = header;
      out["ratio_vs_fp16"] = double(fp16_bytes) / double(wire + header);
      out["bits_per_element"] = bits;
      out["precopy_ms"] = Ms(migrate, src["prefix_done_ns"].get<int64_t>());
      out["downtime_ms"] = Ms(stop, b_first);
      out["migration_ms"] = Ms(migrate, b_first);
      out["top1_teacher_forced"] = double(ag_ok) / std::max(1u, ag_pos);
      out["top1_positions"] = ag_pos;
      out["text_equal"] = equal;
      out["first_difference"] = diff;
      if (Status s = WriteFileAtomic(a.common.json, DumpJson(out)); !s.ok()) return FailStatus(s);
    }
    const bool must_equal = a.require_equal || a.common.codec == "fp16";
    if (must_equal && !equal)
      return Fail("A's tokens followed by B's differ from the unmigrated run at token " +
                  std::to_string(diff) + " (codec " + a.common.codec + ")");
  } catch (const json::exception& e) {
    return Fail(std::string("malformed result file: ") + e.what());
  }
  return 0;
}

}  // namespace kvwire::examples::migration
