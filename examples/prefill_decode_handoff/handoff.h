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
//                agreement; at fp16 it fails unless the text equals the reference. With
//                --decode-netns / --prefill-netns it starts B and A inside the named network
//                namespaces (e.g. two ends of a veth pair shaped with tc), still on this host.
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
  // Network namespaces (names under /run/netns, as `ip netns add` makes them). A role joins
  // `netns` before it opens any socket; the driver passes decode_netns / prefill_netns on to
  // its children and has B listen on listen_address (an address inside B's namespace).
  std::string netns;
  std::string decode_netns, prefill_netns, listen_address;
};

/// Moves this process into the network namespace `name` (a name under /run/netns or a path)
/// with setns(2): sockets opened afterwards live there. Needs root (CAP_SYS_ADMIN).
Status EnterNetns(const std::string& name);

int RunPrefill(const Args& args);
int RunDecode(const Args& args);
int RunDriver(const Args& args);

}  // namespace kvwire::examples::handoff
