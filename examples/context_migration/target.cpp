// Node B: receive the prefix, then the tail, into one cache, and continue generating.
#include <unistd.h>

#include <algorithm>
#include <iostream>
#include <nlohmann/json.hpp>

#include "../common/example_util.h"
#include "../common/generation.h"
#include "../common/request_note.h"
#include "migration.h"

namespace kvwire::examples::migration {
namespace {

constexpr int64_t kMaxCapacity = 1 << 20;

Status CheckKvFitsModel(const IncomingRequest& in, const Model& model) {
  const ModelConfig& cfg = model.config();
  const KvShape& sh = in.info.shape;
  KVWIRE_RETURN_ERROR_IF(
      sh.layers != cfg.layers || sh.kv_heads != cfg.kv_heads || sh.head_dim != cfg.head_dim,
      kInvalidArgument, "the KV's shape does not fit this model (" + cfg.Summary() + ")");
  const std::string& theirs = in.info.metadata.model_fingerprint;
  KVWIRE_RETURN_ERROR_IF(
      !theirs.empty() && !model.fingerprint().empty() && theirs != model.fingerprint(),
      kInvalidArgument,
      "the KV was computed by model " + theirs + ", this process runs " + model.fingerprint());
  return Status::Ok();
}

Result<RequestNote> NoteOfKind(const IncomingRequest& in, const std::string& want) {
  KVWIRE_ASSIGN_OR_RETURN(RequestNote note, RequestNote::Parse(in.user_data));
  KVWIRE_ASSIGN_OR_RETURN(std::string kind, note.Get("kind"));
  KVWIRE_RETURN_ERROR_IF(kind != want, kInvalidArgument,
                         "request " + std::to_string(in.request_id) + " is a '" + kind +
                             "', expected a '" + want + "'");
  return note;
}

// Waits for a request's every chunk; the time it was complete.
Result<int64_t> WaitComplete(Receiver& receiver, uint64_t id, int timeout_ms) {
  Status s = receiver.Wait(id, timeout_ms);
  KVWIRE_RETURN_ERROR_IF(s.in_progress(), kTimeout,
                         "request " + std::to_string(id) + " did not complete in time");
  KVWIRE_RETURN_IF_ERROR(s.WithContext("request " + std::to_string(id)));
  return NowNs();
}

}  // namespace

int RunTarget(const Args& a) {
  SetRoleName("target");
  StartWatchdog(a.common.timeout_ms + 3000);  // after the own deadlines below
  if (Status s = CheckLoopback(a.listen, "--listen"); !s.ok()) return FailStatus(s);
  auto loaded = LoadCommon(a.common, /*need_key=*/true, /*need_prompt=*/false);
  if (!loaded.ok()) return FailStatus(loaded.status());
  const Model& model = *loaded->model;
  const ModelConfig& cfg = model.config();
  std::vector<int32_t> reference;
  if (!a.common.reference_file.empty()) {
    auto ref = ReadTokensFile(a.common.reference_file, cfg.vocab_size);
    if (!ref.ok()) return FailStatus(ref.status(), "--reference-file");
    reference = std::move(*ref);
  }
  auto receiver = Receiver::Listen(
      MakeReceiverOptions(a.common, *loaded, a.listen, "node-b-" + std::to_string(getpid())));
  if (!receiver.ok()) return FailStatus(receiver.status(), "listen on " + a.listen);
  Receiver& rx = **receiver;
  std::cout << "[node B] listening on " << rx.address() << " (" << a.common.backend << ")"
            << std::endl;
  if (!a.common.address_file.empty()) {
    if (Status s = WriteFileAtomic(a.common.address_file, rx.address() + "\n"); !s.ok())
      return FailStatus(s);
  }
  const int64_t deadline = NowNs() + int64_t{a.common.timeout_ms} * 1000000;
  auto remaining_ms = [&] { return int(std::max<int64_t>(0, (deadline - NowNs()) / 1000000)); };

  // Phase 1: the prefix. B allocates the whole sequence now (the note says how large it gets)
  // and lets both requests decode into it: each lands at its own token_begin.
  auto in1 = rx.NextRequest(remaining_ms());
  if (!in1.ok()) return FailStatus(in1.status(), "waiting for the prefix");
  const int64_t t_prefix_announced = NowNs();
  auto note1 = NoteOfKind(*in1, "migrate_prefix");
  if (!note1.ok()) return FailStatus(note1.status());
  if (Status s = CheckKvFitsModel(*in1, model); !s.ok()) return FailStatus(s);
  if (in1->info.token_begin != 0) return Fail("the prefix must start at token 0");
  const uint32_t prefix = in1->info.shape.tokens;
  auto capacity = note1->GetInt("capacity", int64_t{prefix} + 1, kMaxCapacity);
  if (!capacity.ok()) return FailStatus(capacity.status());
  auto start_ns = note1->GetInt("sender_start_ns", 0, INT64_MAX);
  if (!start_ns.ok()) return FailStatus(start_ns.status());
  KvShape whole = in1->info.shape;
  whole.tokens = static_cast<uint32_t>(*capacity);
  auto cache = KvCache::Create(whole, DType::kF32);
  if (!cache.ok()) return FailStatus(cache.status());
  cache->metadata() = in1->info.metadata;
  if (Status s = rx.SetDestination(in1->request_id, cache->view()); !s.ok())
    return FailStatus(s, "set the prefix destination");
  auto t_prefix_ready = WaitComplete(rx, in1->request_id, remaining_ms());
  if (!t_prefix_ready.ok()) return FailStatus(t_prefix_ready.status());

  // Phase 2: the tail, right after the prefix in the same cache.
  auto in2 = rx.NextRequest(remaining_ms());
  if (!in2.ok()) return FailStatus(in2.status(), "waiting for the tail");
  auto note2 = NoteOfKind(*in2, "migrate_tail");
  if (!note2.ok()) return FailStatus(note2.status());
  if (Status s = CheckKvFitsModel(*in2, model); !s.ok()) return FailStatus(s);
  auto prefix_id = note2->GetInt("prefix_request", 1, INT64_MAX);
  if (!prefix_id.ok()) return FailStatus(prefix_id.status());
  if (uint64_t(*prefix_id) != in1->request_id || in2->info.token_begin != prefix)
    return Fail("the tail does not continue the prefix (request " + std::to_string(*prefix_id) +
                ", token_begin " + std::to_string(in2->info.token_begin) + ")");
  const uint64_t held = uint64_t{prefix} + in2->info.shape.tokens;
  auto next = note2->GetInt("next_token", 0, cfg.vocab_size - 1);
  auto generated = note2->GetInt("generated", 1, kMaxCapacity);
  auto remaining = note2->GetInt("remaining", 1, kMaxCapacity);
  auto stop_ns = note2->GetInt("stop_ns", 0, INT64_MAX);
  for (const Status& s : {next.status(), generated.status(), remaining.status(), stop_ns.status()})
    if (!s.ok()) return FailStatus(s);
  if (held + uint64_t(*remaining) > uint64_t(*capacity))
    return Fail("the tail and the tokens still to generate exceed the announced capacity");
  if (Status s = rx.SetDestination(in2->request_id, cache->view()); !s.ok())
    return FailStatus(s, "set the tail destination");
  auto t_tail_ready = WaitComplete(rx, in2->request_id, remaining_ms());
  if (!t_tail_ready.ok()) return FailStatus(t_tail_ready.status());
  auto st1 = rx.stats(in1->request_id), st2 = rx.stats(in2->request_id);
  if (!st1.ok() || !st2.ok()) return Fail("receive statistics missing");

  // Switch: B continues the sequence from the next input token.
  auto held_view = CachePrefix(*cache, static_cast<uint32_t>(held));
  if (!held_view.ok()) return FailStatus(held_view.status());
  auto seq = model.SequenceFromKv(*held_view, static_cast<uint32_t>(*remaining),
                                  in1->info.metadata.positions_start);
  if (!seq.ok()) return FailStatus(seq.status(), "sequence from the received KV");
  std::vector<int64_t> token_ns;
  auto tokens = GreedyDecode(model, &*seq, static_cast<int32_t>(*next),
                             static_cast<uint32_t>(*remaining), &token_ns);
  if (!tokens.ok()) return FailStatus(tokens.status(), "decode");
  std::cout << "[node B] holds " << held << " tokens (prefix " << prefix << " + tail "
            << in2->info.shape.tokens << "), generated " << tokens->size()
            << " more tokens: " << Quoted(model.tokenizer().Decode(*tokens)) << std::endl;

  // Accuracy (off the clock): teacher-forced from the switch on, on the reference tokens.
  nlohmann::json agreement = nullptr;
  const size_t g = size_t(*generated);
  if (reference.size() > g) {
    const size_t m = std::min<size_t>(reference.size() - g, size_t(*remaining));
    std::vector<int32_t> inputs = {static_cast<int32_t>(*next)};
    inputs.insert(inputs.end(), reference.begin() + g, reference.begin() + g + (m - 1));
    auto ag = TeacherForcedTop1(model, *held_view, in1->info.metadata.positions_start, inputs,
                                std::span<const int32_t>(reference.data() + g, m));
    if (!ag.ok()) return FailStatus(ag.status(), "teacher-forced agreement");
    agreement = {
        {"positions", ag->positions}, {"agree", ag->agree}, {"first_miss", ag->first_miss}};
  }

  if (!a.common.result_file.empty()) {
    nlohmann::json j;
    j["held_tokens"] = held;
    j["elements"] =
        KvShape{whole.layers, static_cast<uint32_t>(held), whole.kv_heads, whole.head_dim}
            .elements();
    j["prefix_announced_ns"] = t_prefix_announced;
    j["prefix_ready_ns"] = *t_prefix_ready;
    j["tail_ready_ns"] = *t_tail_ready;
    j["sender_start_ns"] = *start_ns;
    j["stop_ns"] = *stop_ns;
    j["token_ns"] = token_ns;
    j["prefix_receiver_seconds"] = st1->seconds;
    j["tail_receiver_seconds"] = st2->seconds;
    j["wire_bytes"] = st1->wire_bytes + st2->wire_bytes;
    j["tokens"] = *tokens;
    j["agreement"] = agreement;
    if (Status s = WriteFileAtomic(a.common.result_file, DumpJson(j)); !s.ok())
      return FailStatus(s);
  }
  (void)rx.Release(in1->request_id);
  (void)rx.Release(in2->request_id);
  rx.Close();
  return 0;
}

}  // namespace kvwire::examples::migration
