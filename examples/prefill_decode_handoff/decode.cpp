// Process B: receive the prompt's KV, wait for it layer by layer, then continue generating.
#include <unistd.h>

#include <algorithm>
#include <iostream>
#include <nlohmann/json.hpp>

#include "../common/example_util.h"
#include "../common/generation.h"
#include "../common/request_note.h"
#include "handoff.h"

namespace kvwire::examples::handoff {
namespace {

constexpr int64_t kMaxNewTokens = 1 << 16;

// What the note of a handoff request says, validated against the request and the model.
struct Handoff {
  int32_t next_token = 0;
  uint32_t new_tokens = 0;
  int64_t sender_start_ns = 0;
};

Result<Handoff> ReadHandoff(const IncomingRequest& in, const Model& model) {
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
  KVWIRE_RETURN_ERROR_IF(in.info.token_begin != 0, kInvalidArgument,
                         "a handoff carries a whole prompt (token_begin 0)");
  KVWIRE_ASSIGN_OR_RETURN(RequestNote note, RequestNote::Parse(in.user_data));
  KVWIRE_ASSIGN_OR_RETURN(std::string kind, note.Get("kind"));
  KVWIRE_RETURN_ERROR_IF(kind != "handoff", kInvalidArgument,
                         "request note of kind '" + kind + "', expected 'handoff'");
  Handoff h;
  KVWIRE_ASSIGN_OR_RETURN(int64_t prompt_tokens,
                          note.GetInt("prompt_tokens", 2, int64_t{kMaxTokens}));
  KVWIRE_RETURN_ERROR_IF(prompt_tokens != int64_t{sh.tokens} + 1, kCorrupt,
                         "request note: prompt_tokens does not match the KV's tokens");
  KVWIRE_ASSIGN_OR_RETURN(int64_t next, note.GetInt("next_token", 0, cfg.vocab_size - 1));
  KVWIRE_ASSIGN_OR_RETURN(int64_t count, note.GetInt("new_tokens", 1, kMaxNewTokens));
  KVWIRE_ASSIGN_OR_RETURN(h.sender_start_ns, note.GetInt("sender_start_ns", 0, INT64_MAX));
  h.next_token = static_cast<int32_t>(next);
  h.new_tokens = static_cast<uint32_t>(count);
  return h;
}

}  // namespace

int RunDecode(const Args& a) {
  SetRoleName("decode");
  StartWatchdog(a.common.timeout_ms + 3000);  // after the own deadlines below
  // Timestamps of both processes are compared on one monotonic clock, so both run on this
  // host: on loopback, or in a network namespace of this host (joined before any socket).
  if (a.netns.empty()) {
    if (Status s = CheckLoopback(a.listen, "--listen"); !s.ok()) return FailStatus(s);
  } else if (Status s = EnterNetns(a.netns); !s.ok()) {
    return FailStatus(s);
  }
  auto loaded = LoadCommon(a.common, /*need_key=*/true, /*need_prompt=*/false);
  if (!loaded.ok()) return FailStatus(loaded.status());
  const Model& model = *loaded->model;
  std::vector<int32_t> reference;
  if (!a.common.reference_file.empty()) {
    auto ref = ReadTokensFile(a.common.reference_file, model.config().vocab_size);
    if (!ref.ok()) return FailStatus(ref.status(), "--reference-file");
    reference = std::move(*ref);
  }

  auto receiver = Receiver::Listen(
      MakeReceiverOptions(a.common, *loaded, a.listen, "decode-" + std::to_string(getpid())));
  if (!receiver.ok()) return FailStatus(receiver.status(), "listen on " + a.listen);
  const std::string address = (*receiver)->address();
  std::cout << "[decode] listening on " << address << " (" << a.common.backend << ")" << std::endl;
  if (!a.common.address_file.empty()) {
    if (Status s = WriteFileAtomic(a.common.address_file, address + "\n"); !s.ok())
      return FailStatus(s);
  }

  const int64_t deadline = NowNs() + int64_t{a.common.timeout_ms} * 1000000;
  auto remaining_ms = [&] { return int(std::max<int64_t>(0, (deadline - NowNs()) / 1000000)); };
  auto in = (*receiver)->NextRequest(remaining_ms());
  const int64_t t_announced = NowNs();
  if (!in.ok()) return FailStatus(in.status(), "waiting for a request");
  const uint64_t id = in->request_id;
  auto handoff = ReadHandoff(*in, model);
  if (!handoff.ok()) {
    (void)(*receiver)->Release(id);
    return FailStatus(handoff.status(), "request from '" + in->peer + "'");
  }

  // B's own cache: the decoded KV lands here, in float32, layer by layer.
  auto cache = KvCache::Create(in->info.shape, DType::kF32);
  if (!cache.ok()) return FailStatus(cache.status());
  cache->metadata() = in->info.metadata;
  if (Status s = (*receiver)->SetDestination(id, cache->view()); !s.ok())
    return FailStatus(s, "set destination");
  std::vector<int64_t> layer_ready_ns;
  for (uint32_t l = 0; l < in->info.shape.layers; ++l) {
    Status s = (*receiver)->WaitLayer(id, l, remaining_ms());
    if (s.in_progress()) return Fail("layer " + std::to_string(l) + " did not arrive in time");
    if (!s.ok()) return FailStatus(s, "layer " + std::to_string(l));
    layer_ready_ns.push_back(NowNs());
  }
  Status all = (*receiver)->Wait(id, remaining_ms());
  const int64_t t_ready = NowNs();
  if (all.in_progress()) return Fail("the KV did not complete in time");
  if (!all.ok()) return FailStatus(all, "receive");
  auto rst = (*receiver)->stats(id);
  if (!rst.ok()) return FailStatus(rst.status());

  // Continue where A stopped: the last prompt token first, then greedy decoding.
  auto seq =
      model.SequenceFromKv(cache->view(), handoff->new_tokens, in->info.metadata.positions_start);
  if (!seq.ok()) return FailStatus(seq.status(), "sequence from the received KV");
  std::vector<int64_t> token_ns;
  auto tokens = GreedyDecode(model, &*seq, handoff->next_token, handoff->new_tokens, &token_ns);
  if (!tokens.ok()) return FailStatus(tokens.status(), "decode");
  const std::string text = model.tokenizer().Decode(*tokens);
  std::cout << "[decode] KV of " << in->info.shape.tokens << " tokens ready "
            << Format("%.1f ms", Ms(t_announced, t_ready)) << " after the request arrived; "
            << tokens->size() << " tokens generated: " << Quoted(text) << std::endl;

  // Accuracy (off the clock): teacher-forced on the reference tokens, position i predicts
  // reference[i] from the received KV plus reference[0..i).
  nlohmann::json agreement = nullptr;
  if (!reference.empty()) {
    const size_t m = std::min<size_t>(reference.size(), handoff->new_tokens);
    std::vector<int32_t> inputs = {handoff->next_token};
    inputs.insert(inputs.end(), reference.begin(), reference.begin() + (m - 1));
    auto ag = TeacherForcedTop1(model, cache->view(), in->info.metadata.positions_start, inputs,
                                std::span<const int32_t>(reference.data(), m));
    if (!ag.ok()) return FailStatus(ag.status(), "teacher-forced agreement");
    agreement = {
        {"positions", ag->positions}, {"agree", ag->agree}, {"first_miss", ag->first_miss}};
  }

  if (!a.common.result_file.empty()) {
    nlohmann::json j;
    j["peer"] = in->peer;
    j["kv_tokens"] = in->info.shape.tokens;
    j["elements"] = in->info.shape.elements();
    j["codec"] = in->levels.empty() ? std::string() : in->levels[0].codec;
    j["announced_ns"] = t_announced;
    j["layer_ready_ns"] = layer_ready_ns;
    j["ready_ns"] = t_ready;
    j["sender_start_ns"] = handoff->sender_start_ns;
    j["token_ns"] = token_ns;
    j["receiver_seconds"] = rst->seconds;
    j["wire_bytes"] = rst->wire_bytes;
    j["chunks"] = rst->chunks;
    j["duplicate_chunks"] = rst->duplicate_chunks;
    j["landed_chunks"] = rst->landed_chunks;
    j["tokens"] = *tokens;
    j["text"] = text;
    j["agreement"] = agreement;
    if (Status s = WriteFileAtomic(a.common.result_file, DumpJson(j)); !s.ok())
      return FailStatus(s);
  }
  (void)(*receiver)->Release(id);
  (*receiver)->Close();
  return 0;
}

}  // namespace kvwire::examples::handoff
