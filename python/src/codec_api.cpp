// kvwire.Profile, encode, decode_into, inspect: the stream functions of `kvwire encode`,
// `decode` and `inspect`, on tensors in memory.
#include <pybind11/stl.h>

#include <span>
#include <string>
#include <vector>

#include "bindings.h"
#include "errors.h"
#include "kvwire/codec.h"
#include "kvwire/stream.h"
#include "kvwire/transport.h"
#include "tensors.h"

namespace kvwire::python {

std::shared_ptr<const PyProfile> ProfileArg(py::handle obj) {
  if (obj.is_none()) return nullptr;
  if (!py::isinstance<PyProfile>(obj)) {
    throw py::type_error("profile must be a kvwire.Profile (kvwire.Profile.load(path)) or None");
  }
  return obj.cast<std::shared_ptr<PyProfile>>();
}

KvMetadata MetadataArg(int64_t positions_start, py::handle rope_theta, py::handle rope_style,
                       const std::string& model_fingerprint) {
  KvMetadata m;
  m.positions_start = positions_start;
  if (!rope_theta.is_none()) m.rope_theta = rope_theta.cast<double>();
  if (!rope_style.is_none()) m.rope_style = rope_style.cast<std::string>();
  m.model_fingerprint = model_fingerprint;
  return m;
}

py::dict MetadataDict(const KvMetadata& m) {
  py::dict d;
  d["positions_start"] = m.positions_start;
  d["rope_theta"] = m.rope_theta;
  d["rope_style"] = m.rope_style;
  d["model_fingerprint"] = m.model_fingerprint;
  return d;
}

namespace {

// The bytes of a bytes-like object, exported for as long as this lives (a bytearray cannot be
// resized meanwhile).
struct StreamBytes {
  py::buffer_info info;
  std::span<const uint8_t> bytes;
};

StreamBytes ReadStream(py::handle obj) {
  if (!PyObject_CheckBuffer(obj.ptr())) {
    throw py::type_error("stream must be bytes-like (bytes, bytearray, memoryview)");
  }
  StreamBytes s;
  s.info = py::reinterpret_borrow<py::buffer>(obj).request();
  if (s.info.ndim != 1 && s.info.size > 0 && s.info.itemsize != 1) {
    throw py::type_error("stream must be a flat buffer of bytes");
  }
  s.bytes = {static_cast<const uint8_t*>(s.info.ptr), static_cast<size_t>(s.info.size)};
  return s;
}

py::bytes Encode(py::handle kv, const std::string& codec, py::handle profile_obj,
                 uint32_t chunk_tokens, int threads, py::handle block_ids,
                 std::optional<uint32_t> tokens, uint32_t token_begin, int64_t positions_start,
                 py::handle rope_theta, py::handle rope_style, const std::string& model_fingerprint,
                 const std::string& layout) {
  const auto profile = ProfileArg(profile_obj);
  const Profile* p = profile ? profile->profile.get() : nullptr;
  BoundKv bound = BindKv(kv, block_ids, tokens, /*writable=*/false, "kv", layout);
  StreamInfo info;
  info.shape = bound.view.shape();
  info.dtype = bound.view.dtype();
  info.token_begin = token_begin;
  info.metadata = MetadataArg(positions_start, rope_theta, rope_style, model_fingerprint);
  if (profile) info.profile_id = profile->id;
  StreamWriterOptions options;
  options.chunk_tokens = chunk_tokens;
  options.threads = threads;
  Result<std::vector<uint8_t>> stream = Status(StatusCode::kInternal, "not run");
  {
    py::gil_scoped_release release;
    // Same canonical spec as `kvwire encode` writes in the header.
    auto c = CreateCodec(codec, p);
    if (!c.ok()) {
      stream = c.status();
    } else {
      info.levels = {(*c)->Spec()};
      stream = EncodeStream(bound.view, std::move(info), options, p);
    }
  }
  const std::vector<uint8_t> bytes = ValueOrThrow(std::move(stream));
  return py::bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

void DecodeInto(py::handle stream_obj, py::handle out, py::handle profile_obj, py::handle block_ids,
                const std::string& layout) {
  const auto profile = ProfileArg(profile_obj);
  const Profile* p = profile ? profile->profile.get() : nullptr;
  StreamBytes stream = ReadStream(stream_obj);
  BoundKv bound = BindKv(out, block_ids, std::nullopt, /*writable=*/true, "out", layout);
  Status status;
  {
    py::gil_scoped_release release;
    auto reader = StreamReader::Open(stream.bytes, p);
    if (!reader.ok()) {
      status = reader.status();
    } else {
      const StreamInfo& info = (*reader)->info();
      if (!info.profile_id.empty() && profile && profile->id != info.profile_id) {
        status = Status(StatusCode::kInvalidArgument, "the stream was encoded with profile " +
                                                          info.profile_id + ", not " + profile->id);
      } else {
        status = (*reader)->DecodeAll(bound.view);
      }
    }
  }
  ThrowIfError(status);
}

// Shape and dtype from the stream header alone (the chunks are checked when they are decoded).
py::dict HeaderInfo(py::handle stream_obj) {
  StreamBytes stream = ReadStream(stream_obj);
  auto reader = StreamReader::OpenForInspection(stream.bytes);
  if (!reader.ok()) throw StatusError(reader.status());
  const StreamInfo& info = (*reader)->info();
  py::dict d;
  d["shape"] = ShapeTuple(info.shape);
  d["dtype"] = DTypePyName(info.dtype);
  return d;
}

py::dict Inspect(py::handle stream_obj) {
  StreamBytes stream = ReadStream(stream_obj);
  Result<StreamSummary> summary = Status(StatusCode::kInternal, "not run");
  {
    py::gil_scoped_release release;
    summary = InspectStream(stream.bytes);
  }
  const StreamSummary s = ValueOrThrow(std::move(summary));
  if (s.bytes != stream.bytes.size()) {
    throw StatusError(Status(StatusCode::kCorrupt,
                             "stream ends at byte " + std::to_string(s.bytes) + " of " +
                                 std::to_string(stream.bytes.size()) + " (trailing bytes)"));
  }
  const StreamInfo& info = s.info;
  py::dict d;
  d["shape"] = ShapeTuple(info.shape);
  d["layers"] = info.shape.layers;
  d["tokens"] = info.shape.tokens;
  d["kv_heads"] = info.shape.kv_heads;
  d["head_dim"] = info.shape.head_dim;
  d["token_begin"] = info.token_begin;
  d["dtype"] = DTypePyName(info.dtype);
  d["codec"] = info.levels.empty() ? std::string() : info.levels[0];
  d["levels"] = info.levels;
  d["elements"] = info.shape.elements();
  d["chunks"] = s.chunks;
  d["bytes"] = s.bytes;
  d["bits_per_element"] = double(s.bytes) * 8.0 / double(info.shape.elements());
  d["header_bytes"] = s.header_bytes;
  d["chunk_header_bytes"] = s.chunk_header_bytes;
  d["payload_bytes"] = s.payload_bytes;
  d["trailer_bytes"] = s.trailer_bytes;
  d["chunks_per_level"] = s.chunks_per_level;
  d["profile_id"] = info.profile_id;
  d["metadata"] = MetadataDict(info.metadata);
  return d;
}

}  // namespace

void AddCodecApi(py::module_& m) {
  py::class_<PyProfile, std::shared_ptr<PyProfile>>(
      m, "Profile", "A calibration profile (.kvp) for profile-based codecs (fraqtl).")
      .def_static(
          "load",
          [](const std::string& path) {
            auto p = std::make_shared<PyProfile>();
            Result<Profile> loaded = Status(StatusCode::kInternal, "not run");
            Result<std::string> id = Status(StatusCode::kInternal, "not run");
            {
              py::gil_scoped_release release;
              loaded = Profile::Load(path);
              if (loaded.ok()) id = loaded->Id();
            }
            if (!loaded.ok()) throw StatusError(loaded.status().WithContext(path));
            p->id = ValueOrThrow(std::move(id));
            p->profile = std::make_shared<const Profile>(std::move(loaded).value());
            return p;
          },
          py::arg("path"), "Loads and validates a profile file.")
      .def_property_readonly("id", [](const PyProfile& p) { return p.id; })
      .def_property_readonly("model_fingerprint",
                             [](const PyProfile& p) { return p.profile->model_fingerprint; })
      .def_property_readonly("layers", [](const PyProfile& p) { return p.profile->layers; })
      .def_property_readonly("kv_heads", [](const PyProfile& p) { return p.profile->kv_heads; })
      .def_property_readonly("head_dim", [](const PyProfile& p) { return p.profile->head_dim; })
      .def_property_readonly("rope_theta", [](const PyProfile& p) { return p.profile->rope_theta; })
      .def_property_readonly("rope_style", [](const PyProfile& p) { return p.profile->rope_style; })
      .def_property_readonly("levels",
                             [](const PyProfile& p) {
                               py::list out;
                               for (const ProfileLevel& l : p.profile->levels) {
                                 py::dict d;
                                 d["name"] = l.name;
                                 d["bits"] = l.bits;
                                 d["kl"] = l.kl;
                                 out.append(d);
                               }
                               return out;
                             })
      .def("__repr__", [](const PyProfile& p) {
        return "<kvwire.Profile " + p.id + ": " + std::to_string(p.profile->layers) + " layers x " +
               std::to_string(p.profile->kv_heads) + " kv heads x " +
               std::to_string(p.profile->head_dim) + ">";
      });

  m.def("encode", &Encode, py::arg("kv"), py::arg("codec") = "fp16",
        py::arg("profile") = py::none(), py::arg("chunk_tokens") = 0, py::arg("threads") = 1,
        py::arg("block_ids") = py::none(), py::arg("tokens") = py::none(),
        py::arg("token_begin") = 0, py::arg("positions_start") = 0,
        py::arg("rope_theta") = py::none(), py::arg("rope_style") = py::none(),
        py::arg("model_fingerprint") = "", py::arg("layout") = "flash_attn",
        "Encodes a KV cache into a kvwire stream (the bytes `kvwire encode` writes).");
  m.def("_decode_into", &DecodeInto, py::arg("stream"), py::arg("out"),
        py::arg("profile") = py::none(), py::arg("block_ids") = py::none(),
        py::arg("layout") = "flash_attn");
  m.def("_header_info", &HeaderInfo, py::arg("stream"));
  m.def("inspect", &Inspect, py::arg("stream"),
        "Validates a whole stream (every CRC32C, the trailer) and describes it.");
  m.def("backends", &AvailableTransports, "Transport backends this build provides.");
  m.def(
      "codecs",
      [] {
        std::vector<std::string> names;
        for (const CodecFamily& f : ListCodecFamilies()) names.push_back(f.pattern);
        return names;
      },
      "Codec families this build provides (patterns such as 'int<b>-token').");
}

}  // namespace kvwire::python
