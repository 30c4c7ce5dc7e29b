// inproc backend: two queues between threads of one process, with the same handshake and
// bounds as the network backends (so tests exercise the same paths).
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>

#include "transport/auth.h"
#include "transport/backends.h"
#include "transport/framing.h"
#include "transport/message_queue.h"
#include "transport/tls.h"

namespace kvwire::transport {
namespace {

struct Pipe {
  explicit Pipe(uint64_t max_bytes) : queue(max_bytes) {}
  MessageQueue queue;
};

class InprocConnection final : public Connection {
 public:
  InprocConnection(std::shared_ptr<Pipe> out, std::shared_ptr<Pipe> in)
      : out_(std::move(out)), in_(std::move(in)) {}
  ~InprocConnection() override { Close(); }

  Status Send(Message msg) override {
    KVWIRE_RETURN_IF_ERROR(ValidateMessageBounds(msg));
    CopyBorrowed(&msg);  // queued past Send's return
    return out_->queue.Push(std::move(msg));
  }
  Result<Message> Receive(int timeout_ms) override {
    auto m = in_->queue.Pop(timeout_ms);
    if (!m.ok() && m.status().code() == StatusCode::kCancelled && !closed_)
      return Status(StatusCode::kIoError, "peer closed the connection");
    return m;
  }
  void Close() override {
    closed_ = true;
    out_->queue.Close(Status(StatusCode::kIoError, "peer closed the connection"));
    in_->queue.Close(Status(StatusCode::kCancelled, "connection closed"));
  }
  const std::string& peer_name() const override { return peer_name_; }
  void set_peer_name(std::string n) { peer_name_ = std::move(n); }

 private:
  std::shared_ptr<Pipe> out_, in_;
  std::string peer_name_;
  std::atomic<bool> closed_{false};
};

class InprocListener;

// Process-wide name -> listener, so Connect finds Listen by address.
struct Registry {
  std::mutex mu;
  std::map<std::string, InprocListener*> listeners;
  static Registry& Get() {
    static Registry r;
    return r;
  }
};

struct PendingConnection {
  std::unique_ptr<InprocConnection> server_end;
};

class InprocListener final : public Listener {
 public:
  InprocListener(std::string name, TransportOptions options)
      : name_(std::move(name)), options_(std::move(options)) {}
  ~InprocListener() override { Close(); }

  Result<std::unique_ptr<Connection>> Accept(int timeout_ms) override {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      std::unique_ptr<InprocConnection> conn;
      {
        std::unique_lock lock(mu_);
        auto ready = [&] { return closed_ || !pending_.empty(); };
        if (timeout_ms < 0) {
          cv_.wait(lock, ready);
        } else if (!cv_.wait_until(lock, deadline, ready)) {
          return Status(StatusCode::kTimeout,
                        "no connection within " + std::to_string(timeout_ms) + " ms");
        }
        if (closed_) return Status(StatusCode::kCancelled, "listener closed");
        conn = std::move(pending_.front());
        pending_.pop_front();
      }
      std::string peer;
      Status s = ServerHandshake(*conn, options_, &peer);
      if (s.ok()) {
        conn->set_peer_name(std::move(peer));
        return std::unique_ptr<Connection>(std::move(conn));
      }
      LogRefusedPeer("inproc://" + name_, s);
      conn->Close();
    }
  }
  std::string address() const override { return name_; }
  void Close() override {
    {
      std::lock_guard lock(Registry::Get().mu);
      auto it = Registry::Get().listeners.find(name_);
      if (it != Registry::Get().listeners.end() && it->second == this)
        Registry::Get().listeners.erase(it);
    }
    std::lock_guard lock(mu_);
    closed_ = true;
    for (auto& c : pending_) c->Close();
    pending_.clear();
    cv_.notify_all();
  }
  Status Enqueue(std::unique_ptr<InprocConnection> server_end) {
    std::lock_guard lock(mu_);
    KVWIRE_RETURN_ERROR_IF(closed_, kIoError, "listener closed");
    pending_.push_back(std::move(server_end));
    cv_.notify_one();
    return Status::Ok();
  }
  const TransportOptions& options() const { return options_; }

 private:
  std::string name_;
  TransportOptions options_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<InprocConnection>> pending_;
  bool closed_ = false;
};

class InprocTransport final : public Transport {
 public:
  std::string_view name() const override { return "inproc"; }
  TransportCaps caps() const override {
    TransportCaps c;
    c.remote = false;
    return c;
  }
  Result<std::unique_ptr<Listener>> Listen(const TransportOptions& options) override {
    KVWIRE_RETURN_IF_ERROR(ValidateKeyOptions(options));
    KVWIRE_RETURN_IF_ERROR(RefuseTls(options, "inproc"));
    KVWIRE_RETURN_ERROR_IF(options.address.empty(), kInvalidArgument, "inproc needs a name");
    auto l = std::make_unique<InprocListener>(options.address, options);
    std::lock_guard lock(Registry::Get().mu);
    KVWIRE_RETURN_ERROR_IF(Registry::Get().listeners.count(options.address), kInvalidArgument,
                           "inproc address " + options.address + " already in use");
    Registry::Get().listeners[options.address] = l.get();
    return std::unique_ptr<Listener>(std::move(l));
  }
  Result<std::unique_ptr<Connection>> Connect(const TransportOptions& options) override {
    KVWIRE_RETURN_IF_ERROR(ValidateKeyOptions(options));
    KVWIRE_RETURN_IF_ERROR(RefuseTls(options, "inproc"));
    auto a = std::make_shared<Pipe>(options.max_queued_bytes);
    auto b = std::make_shared<Pipe>(options.max_queued_bytes);
    auto client = std::make_unique<InprocConnection>(a, b);
    {
      std::lock_guard lock(Registry::Get().mu);
      auto it = Registry::Get().listeners.find(options.address);
      KVWIRE_RETURN_ERROR_IF(it == Registry::Get().listeners.end(), kIoError,
                             "connection refused: no inproc listener '" + options.address + "'");
      KVWIRE_RETURN_IF_ERROR(it->second->Enqueue(std::make_unique<InprocConnection>(b, a)));
    }
    std::string peer;
    Status s = ClientHandshake(*client, options, &peer);
    if (!s.ok()) {
      client->Close();
      return s.WithContext("connect inproc://" + options.address);
    }
    client->set_peer_name(std::move(peer));
    return std::unique_ptr<Connection>(std::move(client));
  }
};

}  // namespace

std::unique_ptr<Transport> MakeInprocTransport() { return std::make_unique<InprocTransport>(); }

}  // namespace kvwire::transport
