#include "transport/tls.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "transport/backends.h"

namespace kvwire::transport {
namespace {

using Clock = std::chrono::steady_clock;

// The RFC 8446 exporter label of the pre-shared-key channel binding (docs/PROTOCOL.md).
constexpr char kBindingLabel[] = "EXPORTER-kvwire-psk-binding";
constexpr size_t kBindingBytes = 32;
// One SSL_write call encrypts at most this much, so the other thread waits at most that long
// for the mutex.
constexpr size_t kMaxWriteSlice = 1u << 20;

// The reasons in OpenSSL's error queue of this thread ("certificate verify failed"), oldest
// first; the queue is emptied.
std::string OpenSslErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    const char* reason = ERR_reason_error_string(e);
    char buf[256];
    if (reason == nullptr) {
      ERR_error_string_n(e, buf, sizeof buf);
      reason = buf;
    }
    if (!out.empty()) out += "; ";
    out += reason;
  }
  return out.empty() ? "no reason given by OpenSSL" : out;
}

// A BIO on the socket that writes with MSG_NOSIGNAL (OpenSSL's own socket BIO would raise SIGPIPE
// in the whole process when the peer has gone) and records why it stopped.
struct SocketState {
  int fd = -1;
  bool eof = false;
  int error = 0;  // errno of the last failed send/recv
};

int SocketWrite(BIO* bio, const char* data, size_t n, size_t* written) {
  BIO_clear_retry_flags(bio);
  auto* st = static_cast<SocketState*>(BIO_get_data(bio));
  for (;;) {
    ssize_t r = ::send(st->fd, data, n, MSG_NOSIGNAL);
    if (r >= 0) {
      *written = static_cast<size_t>(r);
      return 1;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      BIO_set_retry_write(bio);
    } else {
      st->error = errno;
    }
    return 0;
  }
}

int SocketRead(BIO* bio, char* out, size_t n, size_t* got) {
  BIO_clear_retry_flags(bio);
  auto* st = static_cast<SocketState*>(BIO_get_data(bio));
  for (;;) {
    ssize_t r = ::recv(st->fd, out, n, 0);
    if (r > 0) {
      *got = static_cast<size_t>(r);
      return 1;
    }
    if (r == 0) {
      st->eof = true;
      return 0;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      BIO_set_retry_read(bio);
    } else {
      st->error = errno;
    }
    return 0;
  }
}

long SocketCtrl(BIO*, int cmd, long, void*) { return cmd == BIO_CTRL_FLUSH ? 1 : 0; }

const BIO_METHOD* SocketMethod() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "kvwire socket");
    BIO_meth_set_write_ex(m, SocketWrite);
    BIO_meth_set_read_ex(m, SocketRead);
    BIO_meth_set_ctrl(m, SocketCtrl);
    BIO_meth_set_create(m, [](BIO* b) {
      BIO_set_init(b, 1);
      return 1;
    });
    return m;
  }();
  return method;
}

Status CheckReadable(const std::string& what, const std::string& path) {
  struct stat st {};
  KVWIRE_RETURN_ERROR_IF(::stat(path.c_str(), &st) != 0, kNotFound,
                         "tls: " + what + " " + path + " not found");
  return Status::Ok();
}

Status LoadCertAndKey(SSL_CTX* ctx, const TlsOptions& tls) {
  KVWIRE_RETURN_ERROR_IF(tls.cert_file.empty() != tls.key_file.empty(), kInvalidArgument,
                         "tls: a certificate needs its key and a key its certificate "
                         "(set both cert_file and key_file)");
  if (tls.cert_file.empty()) return Status::Ok();
  KVWIRE_RETURN_IF_ERROR(CheckReadable("certificate file", tls.cert_file));
  KVWIRE_RETURN_IF_ERROR(CheckReadable("key file", tls.key_file));
  ERR_clear_error();
  if (SSL_CTX_use_certificate_chain_file(ctx, tls.cert_file.c_str()) != 1)
    return Status(StatusCode::kInvalidArgument,
                  "tls: cannot load certificate " + tls.cert_file + ": " + OpenSslErrors());
  // With the certificate loaded, this also refuses a key that does not belong to it.
  if (SSL_CTX_use_PrivateKey_file(ctx, tls.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    const std::string why = OpenSslErrors();
    if (why.find("mismatch") != std::string::npos)
      return Status(StatusCode::kInvalidArgument, "tls: key " + tls.key_file +
                                                      " does not belong to certificate " +
                                                      tls.cert_file);
    return Status(StatusCode::kInvalidArgument,
                  "tls: cannot load private key " + tls.key_file + ": " + why);
  }
  return Status::Ok();
}

Status LoadCa(SSL_CTX* ctx, const std::string& ca_file) {
  KVWIRE_RETURN_IF_ERROR(CheckReadable("CA file", ca_file));
  ERR_clear_error();
  if (SSL_CTX_load_verify_locations(ctx, ca_file.c_str(), nullptr) != 1)
    return Status(StatusCode::kInvalidArgument,
                  "tls: cannot load CA file " + ca_file + ": " + OpenSslErrors());
  return Status::Ok();
}

Result<SSL_CTX*> NewContext(const SSL_METHOD* method) {
  SSL_CTX* ctx = SSL_CTX_new(method);
  if (ctx == nullptr) return Status(StatusCode::kInternal, "tls: " + OpenSslErrors());
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  return ctx;
}

bool IsIpAddress(const std::string& host) {
  in6_addr a6;
  in_addr a4;
  return ::inet_pton(AF_INET, host.c_str(), &a4) == 1 || ::inet_pton(AF_INET6, host.c_str(), &a6) == 1;
}

}  // namespace

Status RefuseTls(const TransportOptions& options, const std::string& backend) {
  KVWIRE_RETURN_ERROR_IF(options.tls.enabled, kUnsupported,
                         "the " + backend +
                             " backend has no TLS: TLS encrypts the tcp backend only (use "
                             "tcp, or a network that is already private)");
  return Status::Ok();
}

TlsContext::~TlsContext() { SSL_CTX_free(ctx_); }

Result<std::shared_ptr<TlsContext>> TlsContext::ForServer(const TlsOptions& tls) {
  KVWIRE_RETURN_ERROR_IF(tls.cert_file.empty() || tls.key_file.empty(), kInvalidArgument,
                         "tls: the listening side needs a certificate and its key "
                         "(cert_file and key_file)");
  std::shared_ptr<TlsContext> c(new TlsContext());
  KVWIRE_ASSIGN_OR_RETURN(c->ctx_, NewContext(TLS_server_method()));
  KVWIRE_RETURN_IF_ERROR(LoadCertAndKey(c->ctx_, tls));
  // No session tickets: after its handshake the server never writes on its own, so the only TLS
  // traffic is the data each end sends.
  SSL_CTX_set_num_tickets(c->ctx_, 0);
  if (!tls.ca_file.empty()) {
    KVWIRE_RETURN_IF_ERROR(LoadCa(c->ctx_, tls.ca_file));
    SSL_CTX_set_verify(c->ctx_, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    c->verifies_peer_ = true;
  }
  return c;
}

Result<std::shared_ptr<TlsContext>> TlsContext::ForClient(const TlsOptions& tls, bool have_key) {
  KVWIRE_RETURN_ERROR_IF(tls.ca_file.empty() && !have_key, kInvalidArgument,
                         "tls: the connecting side cannot tell the server from an impostor: give "
                         "it a CA file (ca_file) to verify the server's certificate, or a "
                         "pre-shared key, whose binding to the TLS session authenticates it");
  std::shared_ptr<TlsContext> c(new TlsContext());
  KVWIRE_ASSIGN_OR_RETURN(c->ctx_, NewContext(TLS_client_method()));
  KVWIRE_RETURN_IF_ERROR(LoadCertAndKey(c->ctx_, tls));
  if (!tls.ca_file.empty()) {
    KVWIRE_RETURN_IF_ERROR(LoadCa(c->ctx_, tls.ca_file));
    SSL_CTX_set_verify(c->ctx_, SSL_VERIFY_PEER, nullptr);
    c->verifies_peer_ = true;
  } else {
    SSL_CTX_set_verify(c->ctx_, SSL_VERIFY_NONE, nullptr);
  }
  c->server_name_ = tls.server_name;
  return c;
}

TlsSession::~TlsSession() {
  SSL_free(ssl_);  // frees the BIO too
  delete static_cast<SocketState*>(state_);
}

Result<std::unique_ptr<TlsSession>> TlsSession::Connect(std::shared_ptr<TlsContext> ctx, int fd,
                                                        const std::string& host, int timeout_ms) {
  std::unique_ptr<TlsSession> s(new TlsSession(ctx, fd));
  KVWIRE_RETURN_IF_ERROR(s->Init());
  const std::string name = ctx->server_name().empty() ? host : ctx->server_name();
  const bool ip = IsIpAddress(name);
  if (!ip && !name.empty()) SSL_set_tlsext_host_name(s->ssl_, name.c_str());
  if (ctx->verifies_peer()) {
    int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s->ssl_), name.c_str())
                : SSL_set1_host(s->ssl_, name.c_str());
    KVWIRE_RETURN_ERROR_IF(ok != 1, kInvalidArgument,
                           "tls: cannot verify the server against the name '" + name + "'");
  }
  SSL_set_connect_state(s->ssl_);
  KVWIRE_RETURN_IF_ERROR(s->Handshake(/*client=*/true, timeout_ms));
  return s;
}

Result<std::unique_ptr<TlsSession>> TlsSession::Accept(std::shared_ptr<TlsContext> ctx, int fd,
                                                       int timeout_ms) {
  std::unique_ptr<TlsSession> s(new TlsSession(std::move(ctx), fd));
  KVWIRE_RETURN_IF_ERROR(s->Init());
  SSL_set_accept_state(s->ssl_);
  KVWIRE_RETURN_IF_ERROR(s->Handshake(/*client=*/false, timeout_ms));
  return s;
}

Status TlsSession::Init() {
  const int flags = ::fcntl(fd_, F_GETFL, 0);
  KVWIRE_RETURN_ERROR_IF(flags < 0 || ::fcntl(fd_, F_SETFL, flags | O_NONBLOCK) != 0, kIoError,
                         std::string("tls: cannot make the socket non-blocking: ") +
                             std::strerror(errno));
  auto* st = new SocketState{fd_};
  state_ = st;
  ssl_ = SSL_new(ctx_->get());
  KVWIRE_RETURN_ERROR_IF(ssl_ == nullptr, kInternal, "tls: " + OpenSslErrors());
  BIO* bio = BIO_new(SocketMethod());
  KVWIRE_RETURN_ERROR_IF(bio == nullptr, kInternal, "tls: " + OpenSslErrors());
  BIO_set_data(bio, st);
  SSL_set_bio(ssl_, bio, bio);  // the SSL owns it (one reference for both directions)
  return Status::Ok();
}

Status TlsSession::Failure(int ssl_error, const std::string& during) {
  auto* st = static_cast<SocketState*>(state_);
  if (ssl_error == SSL_ERROR_ZERO_RETURN || (st->eof && ERR_peek_error() == 0) ||
      (st->eof && ssl_error == SSL_ERROR_SSL)) {
    ERR_clear_error();
    return Status(StatusCode::kIoError, during + ": peer closed the connection");
  }
  if (ssl_error == SSL_ERROR_SYSCALL && st->error != 0) {
    const int e = st->error;
    ERR_clear_error();
    if (e == EPIPE || e == ECONNRESET)
      return Status(StatusCode::kIoError, during + ": peer closed the connection");
    return Status(StatusCode::kIoError, during + ": " + std::strerror(e));
  }
  // A refused certificate: the alert names the problem, our text names the fix. With TLS 1.3
  // the client learns of it at its first read after the handshake, not in the handshake.
  if (ssl_error == SSL_ERROR_SSL) {
    const int reason = ERR_GET_REASON(ERR_peek_error());
    const char* what = nullptr;
    if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
      what = "the client sent no certificate, and this listener requires one signed by its CA "
             "(--tls-ca)";
    } else if (reason == SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED) {
      what = "the server requires a client certificate (--tls-cert and --tls-key)";
    } else if (reason == SSL_R_TLSV1_ALERT_UNKNOWN_CA ||
               reason == SSL_R_SSLV3_ALERT_BAD_CERTIFICATE ||
               reason == SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED ||
               reason == SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED ||
               reason == SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE ||
               reason == SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN) {
      what = "the peer refused our certificate";
    }
    if (what != nullptr)
      return Status(StatusCode::kUnauthenticated,
                    during + ": " + what + " (" + OpenSslErrors() + ")");
  }
  return Status(StatusCode::kIoError, during + ": " + OpenSslErrors());
}

void TlsSession::WaitForSocket(int ssl_error, int timeout_ms) const {
  pollfd p{fd_, static_cast<short>(ssl_error == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT), 0};
  ::poll(&p, 1, timeout_ms);
}

Status TlsSession::Handshake(bool client, int timeout_ms) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    ERR_clear_error();
    const int r = SSL_do_handshake(ssl_);
    if (r == 1) break;
    const int e = SSL_get_error(ssl_, r);
    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
      const long verify = SSL_get_verify_result(ssl_);
      if (verify != X509_V_OK) {
        ERR_clear_error();
        return Status(StatusCode::kUnauthenticated,
                      std::string("tls: the ") + (client ? "server's" : "client's") +
                          " certificate was refused: " + X509_verify_cert_error_string(verify));
      }
      // Not a certificate: mostly a peer without TLS (it hangs up, or answers in plain frames:
      // "wrong version number").
      Status why = Failure(e, "tls handshake");
      if (why.code() == StatusCode::kUnauthenticated) return why;  // a certificate, named
      return Status(why.code(), why.message() + " (does the peer have TLS enabled too?)");
    }
    const int left = RemainingMs(deadline);
    KVWIRE_RETURN_ERROR_IF(left == 0, kTimeout,
                           "tls handshake: no answer within " + std::to_string(timeout_ms) +
                               " ms (does the peer have TLS enabled too?)");
    WaitForSocket(e, left);
  }
  binding_.resize(kBindingBytes);
  KVWIRE_RETURN_ERROR_IF(
      SSL_export_keying_material(ssl_, binding_.data(), binding_.size(), kBindingLabel,
                                 sizeof kBindingLabel - 1, nullptr, 0, 0) != 1,
      kInternal, "tls: exporting the channel binding failed: " + OpenSslErrors());
  return Status::Ok();
}

Status TlsSession::ReadExactly(uint8_t* out, size_t n) {
  while (n != 0) {
    size_t got = 0;
    int e = SSL_ERROR_NONE;
    {
      std::lock_guard lock(mu_);
      ERR_clear_error();
      if (SSL_read_ex(ssl_, out, n, &got) != 1) {
        e = SSL_get_error(ssl_, 0);
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) return Failure(e, "read");
      }
    }
    if (e == SSL_ERROR_NONE) {
      out += got;
      n -= got;
      continue;
    }
    WaitForSocket(e, -1);  // a shutdown of the socket (Fail, Close) ends it
  }
  return Status::Ok();
}

Status TlsSession::WriteAll(const uint8_t* data, size_t n) {
  while (n != 0) {
    size_t put = 0;
    int e = SSL_ERROR_NONE;
    {
      std::lock_guard lock(mu_);
      ERR_clear_error();
      if (SSL_write_ex(ssl_, data, std::min(n, kMaxWriteSlice), &put) != 1) {
        e = SSL_get_error(ssl_, 0);
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) return Failure(e, "write");
      }
    }
    if (e == SSL_ERROR_NONE) {
      data += put;
      n -= put;
      continue;
    }
    WaitForSocket(e, -1);
  }
  return Status::Ok();
}

}  // namespace kvwire::transport
