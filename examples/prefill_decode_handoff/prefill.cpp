// Process A: prefill the prompt (all but its last token) and send the KV layer by layer.
#include <unistd.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "../common/example_util.h"
#include "../common/generation.h"
#include "../common/request_note.h"
#include "handoff.h"

namespace kvwire::examples::handoff {

int RunPrefill(const Args& a) {
  SetRoleName("prefill");
  StartWatchdog(a.common.timeout_ms + 3000);  // after the own deadlines below
  if (a.connect.empty()) return Fail("--connect HOST:PORT is required with --role prefill");
  // One clock for both processes: loopback, or a network namespace of this host (see decode).
  if (a.netns.empty()) {
    if (Status s = CheckLoopback(a.connect, "--connect"); !s.ok()) return FailStatus(s);
  } else if (Status s = EnterNetns(a.netns); !s.ok()) {
    return FailStatus(s);
  }
  auto loaded = LoadCommon(a.common, /*need_key=*/true, /*need_prompt=*/true);
  if (!loaded.ok()) return FailStatus(loaded.status());
  const Model& model = *loaded->model;
  const ModelConfig& cfg = model.config();
  const std::vector<int32_t>& prompt = loaded->prompt;
  // The last prompt token is not prefilled here: B runs it as its first decode step (it needs
  // that step's logits), so it travels in the request note instead of as KV.
  const auto kv_tokens = static_cast<uint32_t>(prompt.size() - 1);

  // A serving node keeps its connection (and model) up between requests: not on the clock.
  auto sender = Sender::Connect(
      MakeSenderOptions(a.common, *loaded, a.connect, "prefill-" + std::to_string(getpid())));
  if (!sender.ok()) return FailStatus(sender.status(), "connect " + a.connect);

  const int64_t t_start = NowNs();  // the request arrives
  auto seq = model.NewSequence(kv_tokens);
  if (!seq.ok()) return FailStatus(seq.status());
  auto view = SequenceRows(*seq, cfg, 0, kv_tokens);
  if (!view.ok()) return FailStatus(view.status());

  SendRequestOptions r;
  r.request_id = 1;
  r.levels = LevelsFor(a.common.codec);
  r.chunk_tokens = a.common.chunk_tokens;
  r.metadata = model.kv_metadata();  // positions from 0, rope and the model's fingerprint
  RequestNote note;
  note.Set("kind", "handoff");
  note.SetInt("prompt_tokens", int64_t(prompt.size()));
  note.SetInt("next_token", prompt.back());
  note.SetInt("new_tokens", a.common.new_tokens);
  note.SetInt("sender_start_ns", t_start);
  r.user_data = note.Encode();
  auto req = (*sender)->Open(*view, r);
  if (!req.ok()) return FailStatus(req.status(), "open request");

  // Each layer goes out as soon as the forward has written its K/V: layer l is encoded and on
  // the wire while layers l+1... compute.
  std::vector<int64_t> layer_ns(cfg.layers, 0);
  Status push = Status::Ok();
  ForwardOptions fo(ForwardOptions::Logits::kNone);
  fo.on_layer_done = [&](uint32_t layer) {
    layer_ns[layer] = NowNs();
    if (push.ok()) push = (*req)->PushLayer(layer);
  };
  Status fwd =
      model.Forward(&*seq, std::span<const int32_t>(prompt.data(), kv_tokens), fo, nullptr);
  const int64_t t_prefill = NowNs();
  if (!fwd.ok()) return FailStatus(fwd, "prefill");
  if (!push.ok()) return FailStatus(push, "push layer");

  Status done = (*req)->Wait(a.common.timeout_ms);
  const int64_t t_confirmed = NowNs();
  if (done.in_progress())
    return Fail("the decode process did not confirm the KV within " +
                std::to_string(a.common.timeout_ms) + " ms");
  if (!done.ok()) return FailStatus(done, "send");
  const SendStats st = (*req)->stats();
  auto header = StreamHeaderBytes(*view, r, loaded->profile.get());
  if (!header.ok()) return FailStatus(header.status());

  std::cout << "[prefill] " << kv_tokens << " prompt tokens prefilled in "
            << Format("%.1f ms", Ms(t_start, t_prefill)) << ", KV sent (" << a.common.codec << ", "
            << a.common.backend << "): " << Thousands(st.chunks) << " chunks, "
            << Thousands(st.wire_bytes) << " bytes; confirmed by the decode process at "
            << Format("%.1f ms", Ms(t_start, t_confirmed)) << std::endl;

  if (!a.common.result_file.empty()) {
    nlohmann::json j;
    j["prompt_tokens"] = prompt.size();
    j["kv_tokens"] = kv_tokens;
    j["start_ns"] = t_start;
    j["prefill_done_ns"] = t_prefill;
    j["confirmed_ns"] = t_confirmed;
    j["layer_done_ns"] = layer_ns;
    j["wire_bytes"] = st.wire_bytes;
    j["header_bytes"] = *header;
    j["user_data_bytes"] = r.user_data.size();
    j["chunks"] = st.chunks;
    j["resent_chunks"] = st.resent_chunks;
    j["send_seconds"] = st.seconds;
    if (Status s = WriteFileAtomic(a.common.result_file, DumpJson(j)); !s.ok())
      return FailStatus(s);
  }
  (*sender)->Close();
  return 0;
}

}  // namespace kvwire::examples::handoff
