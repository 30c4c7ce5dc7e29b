// prefill_decode_handoff: disaggregated inference on one machine, in two processes.
//
//   prefill (A)  loads the model, prefills the prompt but its last token, and sends the KV with
//                kvwire::Sender as the forward produces it (PushLayer from the layer hook);
//                the request's note carries the last prompt token, the number of tokens to
//                generate and A's clock reading.
//   decode (B)   listens with kvwire::Receiver, receives into its own KvCache (SetDestination),
//                waits layer by layer, builds a Sequence from the received KV and generates
//                greedily from the last prompt token. It never sees the prompt.
//   driver       (default) computes the single-process reference (Model::Generate), starts B
//                and A as child processes, and reports bytes, timings, the text and the top-1
//                agreement; at fp16 it fails unless the text equals the reference.
#pragma once

#include <string>

#include "../common/example_setup.h"

namespace kvwire::examples::handoff {

struct Args {
  CommonArgs common;
  std::string role = "driver";
  std::string listen = "127.0.0.1:0";
  std::string connect;
  bool require_equal = false;  // also fail on a text mismatch with a lossy codec
};

int RunPrefill(const Args& args);
int RunDecode(const Args& args);
int RunDriver(const Args& args);

}  // namespace kvwire::examples::handoff
