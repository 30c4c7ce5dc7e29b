// kvwire.Sender / SendRequest / Receiver / IncomingRequest over kvwire/session.h.
//
// Lifetimes: C++ reads a sender's KV and writes a receiver's destination from its own threads,
// after the Python call that handed them over has returned. So the Python objects behind every
// view are held here (never by C++ threads, which never touch Python) until C++ is done: by the
// Sender until the request has finished (pruned on the next open() and at close()), by the
// Receiver until release() or close().
#include <pybind11/stl.h>

#include <map>
#include <string>
#include <vector>

#include "bindings.h"
#include "errors.h"
#include "kvwire/session.h"
#include "kvwire/transport.h"
#include "tensors.h"

namespace kvwire::python {
namespace {

// Bounds close(): a request's encoder finishes one chunk after cancellation, not minutes later.
constexpr int kCloseWaitMs = 30000;

TransportOptions MakeTransport(const std::string& address, py::handle key,
                               const std::string& key_file, bool insecure,
                               const std::string& node_name) {
  TransportOptions t;
  t.address = address;
  t.node_name = node_name;
  if (!key.is_none()) {
    const std::string k = key.cast<py::bytes>();
    t.key.assign(k.begin(), k.end());
  } else if (!key_file.empty()) {
    t.key = ValueOrThrow(LoadKeyFile(key_file));
  } else if (insecure) {
    t.allow_unauthenticated = true;
  } else {
    throw py::value_error(
        "give key= (>= 16 bytes), key_file= or insecure=True (both ends must agree)");
  }
  return t;
}

// Wait/WaitLayer return kInProgress when the timeout expires: raised as kvwire.TimeoutError.
void ThrowWaitStatus(const Status& s, const std::string& what, int timeout_ms) {
  if (s.in_progress()) {
    throw StatusError(Status(StatusCode::kTimeout,
                             what + " not done after " + std::to_string(timeout_ms) + " ms"));
  }
  ThrowIfError(s);
}

py::dict SendStatsDict(const SendStats& s) {
  py::dict d;
  d["chunks"] = s.chunks;
  d["wire_bytes"] = s.wire_bytes;
  d["resent_chunks"] = s.resent_chunks;
  d["reconnects"] = s.reconnects;
  d["chunks_per_level"] = s.chunks_per_level;
  d["seconds"] = s.seconds;
  d["goodput_bytes_per_s"] = s.goodput_bytes_per_s;
  return d;
}

struct PySendRequest {
  std::shared_ptr<SendRequest> request;
  uint64_t id = 0;
  std::vector<py::object> owners;  // the KV tensors the request reads

  void Push(uint32_t layer) {
    Status s;
    {
      py::gil_scoped_release release;
      s = request->PushLayer(layer);
    }
    ThrowIfError(s);
  }
  void PushAll() {
    Status s;
    {
      py::gil_scoped_release release;
      s = request->PushAll();
    }
    ThrowIfError(s);
  }
  bool Poll() const {
    const Status s = request->Poll();
    if (s.in_progress()) return false;
    ThrowIfError(s);
    return true;
  }
  void Wait(int timeout_ms) {
    Status s;
    {
      py::gil_scoped_release release;
      s = request->Wait(timeout_ms);
    }
    ThrowWaitStatus(s, "request " + std::to_string(id), timeout_ms);
  }
};

struct PySender {
  // Kept after close(): SendRequests still held by Python may refer to it.
  std::unique_ptr<Sender> sender;
  bool closed = false;
  std::shared_ptr<const PyProfile> profile;
  // Requests C++ may still be reading from, with their tensors.
  std::vector<std::shared_ptr<PySendRequest>> live;

  ~PySender() { Close(); }

  void PruneFinished() {
    std::erase_if(live, [](const auto& r) { return !r->request->Poll().in_progress(); });
  }

  std::shared_ptr<PySendRequest> Open(py::handle kv, uint64_t request_id, py::handle codec,
                                      py::handle levels, uint32_t chunk_tokens,
                                      py::handle block_ids, std::optional<uint32_t> tokens,
                                      uint32_t token_begin, int deadline_ms, double max_kl,
                                      double min_bits, const py::bytes& user_data,
                                      int64_t positions_start, py::handle rope_theta,
                                      py::handle rope_style, const std::string& model_fingerprint,
                                      const std::string& layout) {
    if (closed) throw StatusError(Status(StatusCode::kCancelled, "the sender is closed"));
    SendRequestOptions o;
    o.request_id = request_id;
    if (!levels.is_none()) {
      if (!codec.is_none()) throw py::value_error("give codec= or levels=, not both");
      for (py::handle l : py::iter(levels)) {
        o.levels.push_back(py::isinstance<py::str>(l) ? LevelSpec{l.cast<std::string>()}
                                                      : l.cast<LevelSpec>());
      }
    } else {
      o.levels.push_back(LevelSpec{codec.is_none() ? "fp16" : codec.cast<std::string>()});
    }
    o.chunk_tokens = chunk_tokens;
    o.token_begin = token_begin;
    o.deadline_ms = deadline_ms;
    o.max_kl = max_kl;
    o.min_bits = min_bits;
    o.user_data = user_data;
    o.metadata = MetadataArg(positions_start, rope_theta, rope_style, model_fingerprint);
    if (profile) o.profile_id = profile->id;
    BoundKv bound = BindKv(kv, block_ids, tokens, /*writable=*/false, "kv", layout);
    PruneFinished();
    Result<std::shared_ptr<SendRequest>> request = Status(StatusCode::kInternal, "not run");
    {
      py::gil_scoped_release release;
      request = sender->Open(bound.view, o);
    }
    auto r = std::make_shared<PySendRequest>();
    r->request = ValueOrThrow(std::move(request));
    r->id = request_id;
    r->owners = std::move(bound.owners);
    live.push_back(r);
    return r;
  }

  void Close() {
    if (closed || !sender) return;
    closed = true;
    // Taken out first: another Python thread may call open() while the GIL is released below.
    // The tensors are let go (GIL held) only once no encoder reads them.
    std::vector<std::shared_ptr<PySendRequest>> pending;
    pending.swap(live);
    py::gil_scoped_release release;
    sender->Close();
    for (const auto& r : pending) (void)r->request->Wait(kCloseWaitMs);
  }
};

struct PyReceiver {
  std::unique_ptr<Receiver> receiver;
  bool closed = false;
  std::shared_ptr<const PyProfile> profile;
  std::map<uint64_t, KvShape> announced;                     // from next_request
  std::map<uint64_t, std::vector<py::object>> destinations;  // tensors C++ may write

  ~PyReceiver() { Close(); }

  Receiver& Get() {
    if (closed || !receiver) {
      throw StatusError(Status(StatusCode::kCancelled, "the receiver is closed"));
    }
    return *receiver;
  }

  IncomingRequest Next(int timeout_ms) {
    Receiver& r = Get();
    Result<IncomingRequest> next = Status(StatusCode::kInternal, "not run");
    {
      py::gil_scoped_release release;
      next = r.NextRequest(timeout_ms);
    }
    IncomingRequest req = ValueOrThrow(std::move(next));
    announced[req.request_id] = req.info.shape;
    return req;
  }

  void SetDestination(uint64_t id, py::handle kv, py::handle block_ids,
                      std::optional<uint32_t> tokens, const std::string& layout) {
    Receiver& r = Get();
    if (!tokens && !block_ids.is_none()) {
      if (auto it = announced.find(id); it != announced.end()) tokens = it->second.tokens;
    }
    BoundKv bound = BindKv(kv, block_ids, tokens, /*writable=*/true, "kv", layout);
    Status s;
    {
      py::gil_scoped_release release;
      s = r.SetDestination(id, bound.view);
    }
    ThrowIfError(s);
    destinations[id] = std::move(bound.owners);
  }

  void WaitLayer(uint64_t id, uint32_t layer, int timeout_ms) {
    Receiver& r = Get();
    Status s;
    {
      py::gil_scoped_release release;
      s = r.WaitLayer(id, layer, timeout_ms);
    }
    ThrowWaitStatus(s, "request " + std::to_string(id) + " layer " + std::to_string(layer),
                    timeout_ms);
  }

  void Wait(uint64_t id, int timeout_ms) {
    Receiver& r = Get();
    Status s;
    {
      py::gil_scoped_release release;
      s = r.Wait(id, timeout_ms);
    }
    ThrowWaitStatus(s, "request " + std::to_string(id), timeout_ms);
  }

  // Wait(id, 0) without the ambiguity of a timeout: a request that failed because it stalled
  // raises (kvwire.TimeoutError), one still in progress returns false.
  bool Poll(uint64_t id) {
    const Status s = Get().Wait(id, 0);
    if (s.in_progress()) return false;
    ThrowIfError(s);
    return true;
  }

  void Release(uint64_t id) {
    Receiver& r = Get();
    Status s;
    {
      py::gil_scoped_release release;
      s = r.Release(id);  // afterwards the destination is no longer touched
    }
    destinations.erase(id);
    announced.erase(id);
    ThrowIfError(s);
  }

  void Close() {
    if (closed || !receiver) return;
    closed = true;
    {
      py::gil_scoped_release release;
      receiver->Close();  // returns once no connection handler decodes any more
    }
    destinations.clear();
    announced.clear();
  }
};

}  // namespace

void AddSessionApi(py::module_& m) {
  py::class_<LevelSpec>(m, "LevelSpec",
                        "One level a request may use: a codec spec and what it costs and loses.")
      .def(py::init([](std::string codec, double bits, double kl, double enc, double dec) {
             return LevelSpec{std::move(codec), bits, kl, enc, dec};
           }),
           py::arg("codec"), py::arg("bits_per_element") = 16.0, py::arg("kl") = -1.0,
           py::arg("encode_elements_per_s") = 0.0, py::arg("decode_elements_per_s") = 0.0)
      .def_readwrite("codec", &LevelSpec::codec)
      .def_readwrite("bits_per_element", &LevelSpec::bits_per_element)
      .def_readwrite("kl", &LevelSpec::kl)
      .def_readwrite("encode_elements_per_s", &LevelSpec::encode_elements_per_s)
      .def_readwrite("decode_elements_per_s", &LevelSpec::decode_elements_per_s)
      .def("__repr__", [](const LevelSpec& l) {
        return "LevelSpec('" + l.codec +
               "', bits_per_element=" + std::to_string(l.bits_per_element) + ")";
      });

  py::class_<PySendRequest, std::shared_ptr<PySendRequest>>(m, "SendRequest",
                                                            "One request being sent.")
      .def_readonly("request_id", &PySendRequest::id)
      .def("push_layer", &PySendRequest::Push, py::arg("layer"),
           "Layer `layer` of the KV is ready: encode and send it (layers in increasing order).")
      .def("push_all", &PySendRequest::PushAll, "Pushes every layer not pushed yet.")
      .def(
          "poll", &PySendRequest::Poll,
          "True once the receiver confirmed every chunk, False while in progress; raises on error.")
      .def("wait", &PySendRequest::Wait, py::arg("timeout_ms") = -1,
           "Waits for completion (timeout_ms < 0: no limit); kvwire.TimeoutError on timeout.")
      .def_property_readonly(
          "stats", [](const PySendRequest& r) { return SendStatsDict(r.request->stats()); });

  py::class_<PySender>(m, "Sender", "Sends KV caches to a kvwire Receiver.")
      .def_static(
          "connect",
          [](const std::string& address, const std::string& backend, py::handle key,
             const std::string& key_file, py::handle profile_obj, bool insecure,
             const std::string& node_name, int connect_timeout_ms, uint64_t max_inflight_bytes,
             int stall_timeout_ms, int reconnect_window_ms, int encode_threads, bool verbose) {
            auto s = std::make_unique<PySender>();
            s->profile = ProfileArg(profile_obj);
            SenderOptions o;
            o.backend = backend;
            o.transport = MakeTransport(address, key, key_file, insecure, node_name);
            o.transport.connect_timeout_ms = connect_timeout_ms;
            o.max_inflight_bytes = max_inflight_bytes;
            o.stall_timeout_ms = stall_timeout_ms;
            o.reconnect_window_ms = reconnect_window_ms;
            o.encode_threads = encode_threads;
            o.profile = s->profile ? s->profile->profile.get() : nullptr;
            o.verbose = verbose;
            Result<std::unique_ptr<Sender>> sender = Status(StatusCode::kInternal, "not run");
            {
              py::gil_scoped_release release;
              sender = Sender::Connect(o);
            }
            s->sender = ValueOrThrow(std::move(sender));
            return s;
          },
          py::arg("address"), py::arg("backend") = "tcp", py::arg("key") = py::none(),
          py::arg("key_file") = "", py::arg("profile") = py::none(), py::arg("insecure") = false,
          py::arg("node_name") = "kvwire-python", py::arg("connect_timeout_ms") = 5000,
          py::arg("max_inflight_bytes") = SenderOptions{}.max_inflight_bytes,
          py::arg("stall_timeout_ms") = SenderOptions{}.stall_timeout_ms,
          py::arg("reconnect_window_ms") = SenderOptions{}.reconnect_window_ms,
          py::arg("encode_threads") = 0, py::arg("verbose") = false,
          "Connects and authenticates to a receiver at HOST:PORT.")
      .def("open", &PySender::Open, py::arg("kv"), py::arg("request_id"),
           py::arg("codec") = py::none(), py::arg("levels") = py::none(),
           py::arg("chunk_tokens") = 0, py::arg("block_ids") = py::none(),
           py::arg("tokens") = py::none(), py::arg("token_begin") = 0, py::arg("deadline_ms") = 0,
           py::arg("max_kl") = 0.0, py::arg("min_bits") = 0.0, py::arg("user_data") = py::bytes(),
           py::arg("positions_start") = 0, py::arg("rope_theta") = py::none(),
           py::arg("rope_style") = py::none(), py::arg("model_fingerprint") = "",
           py::arg("layout") = "flash_attn", py::keep_alive<0, 1>(),
           "Opens a request for `kv` (kept referenced until the request finishes).")
      .def("close", &PySender::Close, "Fails unfinished requests (cancelled) and disconnects.")
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PySender& s, py::args) { s.Close(); });

  py::class_<IncomingRequest>(m, "IncomingRequest", "A request announced to a Receiver.")
      .def_readonly("request_id", &IncomingRequest::request_id)
      .def_property_readonly("shape",
                             [](const IncomingRequest& r) { return ShapeTuple(r.info.shape); })
      .def_property_readonly("layers", [](const IncomingRequest& r) { return r.info.shape.layers; })
      .def_property_readonly("tokens", [](const IncomingRequest& r) { return r.info.shape.tokens; })
      .def_property_readonly("dtype",
                             [](const IncomingRequest& r) { return DTypePyName(r.info.dtype); })
      .def_property_readonly("token_begin",
                             [](const IncomingRequest& r) { return r.info.token_begin; })
      .def_property_readonly("levels", [](const IncomingRequest& r) { return r.info.levels; })
      .def_property_readonly("profile_id",
                             [](const IncomingRequest& r) { return r.info.profile_id; })
      .def_property_readonly("metadata",
                             [](const IncomingRequest& r) { return MetadataDict(r.info.metadata); })
      .def_readonly("peer", &IncomingRequest::peer)
      .def_readonly("max_kl", &IncomingRequest::max_kl)
      .def_readonly("deadline_ms", &IncomingRequest::deadline_ms)
      .def_property_readonly("user_data",
                             [](const IncomingRequest& r) { return py::bytes(r.user_data); });

  py::class_<PyReceiver>(m, "Receiver", "Receives KV caches from kvwire Senders.")
      .def_static(
          "listen",
          [](const std::string& address, const std::string& backend, py::handle key,
             const std::string& key_file, py::handle profile_obj, bool insecure,
             int stall_timeout_ms, uint64_t max_buffered_bytes, bool fetch_profiles,
             const std::string& node_name, bool verbose) {
            auto r = std::make_unique<PyReceiver>();
            r->profile = ProfileArg(profile_obj);
            ReceiverOptions o;
            o.backend = backend;
            o.transport = MakeTransport(address, key, key_file, insecure, node_name);
            o.stall_timeout_ms = stall_timeout_ms;
            o.max_buffered_bytes = max_buffered_bytes;
            o.fetch_profiles = fetch_profiles;
            o.profile = r->profile ? r->profile->profile.get() : nullptr;
            o.verbose = verbose;
            Result<std::unique_ptr<Receiver>> receiver = Status(StatusCode::kInternal, "not run");
            {
              py::gil_scoped_release release;
              receiver = Receiver::Listen(o);
            }
            r->receiver = ValueOrThrow(std::move(receiver));
            return r;
          },
          py::arg("address") = "127.0.0.1:0", py::arg("backend") = "tcp",
          py::arg("key") = py::none(), py::arg("key_file") = "", py::arg("profile") = py::none(),
          py::arg("insecure") = false,
          py::arg("stall_timeout_ms") = ReceiverOptions{}.stall_timeout_ms,
          py::arg("max_buffered_bytes") = ReceiverOptions{}.max_buffered_bytes,
          py::arg("fetch_profiles") = true, py::arg("node_name") = "kvwire-python",
          py::arg("verbose") = false, "Listens on HOST:PORT (port 0: an ephemeral port).")
      .def_property_readonly("address", [](PyReceiver& r) { return r.Get().address(); })
      .def("next_request", &PyReceiver::Next, py::arg("timeout_ms") = -1,
           "The next new request; kvwire.TimeoutError after timeout_ms (< 0: no limit).")
      .def("set_destination", &PyReceiver::SetDestination, py::arg("request_id"), py::arg("kv"),
           py::arg("block_ids") = py::none(), py::arg("tokens") = py::none(),
           py::arg("layout") = "flash_attn",
           "Where the request decodes to (kept referenced until release() or close()).")
      .def("wait_layer", &PyReceiver::WaitLayer, py::arg("request_id"), py::arg("layer"),
           py::arg("timeout_ms") = -1)
      .def("wait", &PyReceiver::Wait, py::arg("request_id"), py::arg("timeout_ms") = -1)
      .def("poll", &PyReceiver::Poll, py::arg("request_id"),
           "True once every chunk is decoded, False while in progress; raises if it failed.")
      .def(
          "stats",
          [](PyReceiver& r, uint64_t id) {
            const ReceiveStats s = ValueOrThrow(r.Get().stats(id));
            py::dict d;
            d["chunks"] = s.chunks;
            d["duplicate_chunks"] = s.duplicate_chunks;
            d["landed_chunks"] = s.landed_chunks;
            d["wire_bytes"] = s.wire_bytes;
            d["chunks_per_level"] = s.chunks_per_level;
            d["seconds"] = s.seconds;
            return d;
          },
          py::arg("request_id"))
      .def("release", &PyReceiver::Release, py::arg("request_id"),
           "Forgets a request; its destination is no longer touched (or referenced).")
      .def("close", &PyReceiver::Close)
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyReceiver& r, py::args) { r.Close(); });
}

}  // namespace kvwire::python
