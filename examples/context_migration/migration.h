// context_migration: move a live sequence from decode node A to decode node B while A keeps
// generating, in two processes on loopback.
//
//   source (A)  generates greedily from the prompt. After --migrate-after tokens it is told to
//               migrate: it pre-copies the KV it holds (request 1, every cached token, for
//               every codec: the tail may start mid-group) and keeps generating while
//               that is on the wire (at least --overlap-tokens tokens, and until B confirmed
//               the prefix), then stops, sends the tail generated meanwhile (request 2,
//               SendRequestOptions::token_begin = the prefix length) with the next input token
//               in the request note, and frees its cache once B confirmed the tail.
//   target (B)  listens, receives both requests into one KvCache (the whole sequence), builds a
//               Sequence from it and generates the remaining tokens.
//   driver      (default) computes the unmigrated single-process run, starts B and A as child
//               processes and reports bytes, times and agreement; at fp16 it fails unless A's
//               tokens followed by B's equal the unmigrated run.
#pragma once

#include <string>

#include "../common/example_setup.h"

namespace kvwire::examples::migration {

struct Args {
  CommonArgs common;
  std::string role = "driver";
  std::string listen = "127.0.0.1:0";
  std::string connect;
  uint32_t migrate_after = 16;  // tokens A generates before it is told to migrate
  uint32_t overlap_tokens = 8;  // tokens A generates at least while the prefix is sent
  bool require_equal = false;
};

int RunSource(const Args& args);
int RunTarget(const Args& args);
int RunDriver(const Args& args);

}  // namespace kvwire::examples::migration
