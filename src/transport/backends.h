// Backend constructors behind CreateTransport (factory.cpp), and shared helpers.
#pragma once

#include <memory>
#include <string>

#include "kvwire/transport.h"

namespace kvwire::transport {

std::unique_ptr<Transport> MakeInprocTransport();
std::unique_ptr<Transport> MakeTcpTransport();
#if KVWIRE_HAVE_UCX
std::unique_ptr<Transport> MakeUcxTransport();
#endif

/// Logs (stderr) a peer refused during the handshake: who and why.
void LogRefusedPeer(const std::string& where, const Status& why);

}  // namespace kvwire::transport
