// Backend constructors behind CreateTransport (factory.cpp), and shared helpers.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "kvwire/transport.h"

namespace kvwire::transport {

std::unique_ptr<Transport> MakeInprocTransport();
std::unique_ptr<Transport> MakeTcpTransport();
/// The UCX tcp transport's segment size the ucx backend sets on both ends (TX_SEG_SIZE and
/// RX_SEG_SIZE, unless UCX_TCP_TX_SEG_SIZE / UCX_TCP_RX_SEG_SIZE are set): the size of the
/// fragments its rendezvous data moves in (see ucx.cpp).
inline constexpr const char* kUcxTcpSegSize = "1M";
/// UCX's ZCOPY_THRESH the ucx backend sets (unless UCX_ZCOPY_THRESH is set): zero-copy sends off
/// (see ucx.cpp, Init).
inline constexpr const char* kUcxZcopyThresh = "inf";
#if KVWIRE_HAVE_UCX
std::unique_ptr<Transport> MakeUcxTransport();
#endif

/// Logs (stderr) a peer refused during the handshake: who and why.
void LogRefusedPeer(const std::string& where, const Status& why);

/// Whole milliseconds from now to `deadline` (steady clock), 0 once it has passed.
inline int RemainingMs(std::chrono::steady_clock::time_point deadline) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      deadline - std::chrono::steady_clock::now())
                      .count();
  return ms > 0 ? static_cast<int>(ms) : 0;
}

}  // namespace kvwire::transport
