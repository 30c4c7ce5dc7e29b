// Node A: generate, pre-copy the prefix while generating on, send the tail, free after B
// confirmed.
#include <unistd.h>

#include <algorithm>
#include <iostream>
#include <nlohmann/json.hpp>

#include "../common/example_util.h"
#include "../common/generation.h"
#include "../common/request_note.h"
#include "kvwire/codec.h"
#include "migration.h"

namespace kvwire::examples::migration {
namespace {

// One request's numbers for the report.
nlohmann::json RequestJson(const SendStats& st, uint32_t token_begin, uint32_t tokens,
                           uint64_t header_bytes) {
  return {{"token_begin", token_begin},  {"tokens", tokens},
          {"wire_bytes", st.wire_bytes}, {"header_bytes", header_bytes},
          {"chunks", st.chunks},         {"resent_chunks", st.resent_chunks},
          {"seconds", st.seconds}};
}

}  // namespace

int RunSource(const Args& a) {
  SetRoleName("source");
  StartWatchdog(a.common.timeout_ms + 3000);  // after the own deadlines below
  if (a.connect.empty()) return Fail("--connect HOST:PORT is required with --role source");
  if (Status s = CheckLoopback(a.connect, "--connect"); !s.ok()) return FailStatus(s);
  const uint32_t total = a.common.new_tokens;
  if (a.migrate_after + a.overlap_tokens >= total)
    return Fail(
        "--new-tokens must exceed --migrate-after + --overlap-tokens (B generates the "
        "rest)");
  auto loaded = LoadCommon(a.common, /*need_key=*/true, /*need_prompt=*/true);
  if (!loaded.ok()) return FailStatus(loaded.status());
  const Model& model = *loaded->model;
  const ModelConfig& cfg = model.config();
  const std::vector<int32_t>& prompt = loaded->prompt;
  const auto capacity = static_cast<uint32_t>(prompt.size() + total);

  auto sender = Sender::Connect(
      MakeSenderOptions(a.common, *loaded, a.connect, "node-a-" + std::to_string(getpid())));
  if (!sender.ok()) return FailStatus(sender.status(), "connect " + a.connect);
  const int64_t deadline = NowNs() + int64_t{a.common.timeout_ms} * 1000000;
  auto remaining_ms = [&] { return int(std::max<int64_t>(0, (deadline - NowNs()) / 1000000)); };

  // Serving: prefill, then greedy decoding (as Model::Generate does it).
  const int64_t t_start = NowNs();
  auto seq = model.NewSequence(capacity);
  if (!seq.ok()) return FailStatus(seq.status());
  std::vector<int32_t> out;
  std::vector<float> logits;
  auto step = [&](std::span<const int32_t> input) -> Status {
    KVWIRE_RETURN_IF_ERROR(model.Forward(&*seq, input, {ForwardOptions::Logits::kLast}, &logits));
    out.push_back(ArgMax(logits.data(), cfg.vocab_size));
    return Status::Ok();
  };
  if (Status s = step(prompt); !s.ok()) return FailStatus(s, "prefill");
  while (out.size() < a.migrate_after) {
    if (Status s = step({&out.back(), 1}); !s.ok()) return FailStatus(s, "decode");
  }

  // Told to migrate. Phase 1: pre-copy the tokens the cache holds now, straight from the live
  // sequence (generation only appends rows after them): every cached token, whatever the
  // codec. The tail then starts wherever generation was; a codec with a token alignment (kivi's
  // group) keeps the tail's tokens before its first boundary at full precision.
  const int64_t t_migrate = NowNs();
  const uint32_t prefix = seq->tokens();
  auto prefix_view = SequenceRows(*seq, cfg, 0, prefix);
  if (!prefix_view.ok()) return FailStatus(prefix_view.status());
  SendRequestOptions r1;
  r1.request_id = 1;
  r1.levels = LevelsFor(a.common.codec);
  r1.chunk_tokens = a.common.chunk_tokens;
  r1.metadata = model.kv_metadata();
  RequestNote n1;
  n1.Set("kind", "migrate_prefix");
  n1.SetInt("capacity", capacity);
  n1.SetInt("sender_start_ns", t_start);
  r1.user_data = n1.Encode();
  auto req1 = (*sender)->Open(*prefix_view, r1);
  if (!req1.ok()) return FailStatus(req1.status(), "open the prefix request");
  if (Status s = (*req1)->PushAll(); !s.ok()) return FailStatus(s, "send the prefix");

  // A keeps serving while the prefix is on the wire.
  uint32_t overlap = 0;
  for (;;) {
    Status p = (*req1)->Poll();
    if (!p.ok() && !p.in_progress()) return FailStatus(p, "send the prefix");
    if ((overlap >= a.overlap_tokens && p.ok()) || out.size() + 1 >= total) break;
    if (Status s = step({&out.back(), 1}); !s.ok()) return FailStatus(s, "decode");
    ++overlap;
  }
  Status s1 = (*req1)->Wait(remaining_ms());
  if (s1.in_progress()) return Fail("B did not confirm the prefix in time");
  if (!s1.ok()) return FailStatus(s1, "send the prefix");
  const int64_t t_prefix_done = NowNs();

  // Phase 2: stop, send the tail (the tokens generated meanwhile) and hand over.
  const int64_t t_stop = NowNs();
  const uint32_t tokens_now = seq->tokens();
  auto tail_view = SequenceRows(*seq, cfg, prefix, tokens_now - prefix);
  if (!tail_view.ok()) return FailStatus(tail_view.status());
  SendRequestOptions r2 = r1;
  r2.request_id = 2;
  r2.token_begin = prefix;
  RequestNote n2;
  n2.Set("kind", "migrate_tail");
  n2.SetInt("prefix_request", 1);
  n2.SetInt("next_token", out.back());
  n2.SetInt("generated", int64_t(out.size()));
  n2.SetInt("remaining", int64_t(total - out.size()));
  n2.SetInt("stop_ns", t_stop);
  r2.user_data = n2.Encode();
  auto req2 = (*sender)->Open(*tail_view, r2);
  if (!req2.ok()) return FailStatus(req2.status(), "open the tail request");
  if (Status s = (*req2)->PushAll(); !s.ok()) return FailStatus(s, "send the tail");
  Status s2 = (*req2)->Wait(remaining_ms());
  if (s2.in_progress()) return Fail("B did not confirm the tail in time");
  if (!s2.ok()) return FailStatus(s2, "send the tail");
  const int64_t t_tail_done = NowNs();

  // B confirmed every chunk of both requests: only now may A drop the sequence.
  const SendStats st1 = (*req1)->stats(), st2 = (*req2)->stats();
  auto h1 = StreamHeaderBytes(*prefix_view, r1, loaded->profile.get());
  auto h2 = StreamHeaderBytes(*tail_view, r2, loaded->profile.get());
  if (!h1.ok() || !h2.ok()) return FailStatus(h1.ok() ? h2.status() : h1.status());
  *seq = Sequence();
  std::cout << "[node A] generated " << out.size() << " tokens (" << overlap
            << " while the prefix of " << prefix << " tokens was on the wire), sent the tail of " << tokens_now - prefix
            << " tokens; B confirmed at " << Format("%.1f ms", Ms(t_start, t_tail_done))
            << "; cache freed" << std::endl;

  if (!a.common.result_file.empty()) {
    nlohmann::json j;
    j["prompt_tokens"] = prompt.size();
    j["tokens"] = out;
    j["overlap_tokens"] = overlap;
    j["start_ns"] = t_start;
    j["migrate_ns"] = t_migrate;
    j["prefix_done_ns"] = t_prefix_done;
    j["stop_ns"] = t_stop;
    j["tail_done_ns"] = t_tail_done;
    j["prefix"] = RequestJson(st1, 0, prefix, *h1);
    j["tail"] = RequestJson(st2, prefix, tokens_now - prefix, *h2);
    if (Status s = WriteFileAtomic(a.common.result_file, DumpJson(j)); !s.ok())
      return FailStatus(s);
  }
  (*sender)->Close();
  return 0;
}

}  // namespace kvwire::examples::migration
