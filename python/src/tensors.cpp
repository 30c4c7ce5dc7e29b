#include "tensors.h"

#include <cstring>
#include <limits>
#include <string>

namespace kvwire::python {
namespace {

// One tensor as kvwire sees it: base address, shape and strides in bytes, and the Python
// object that owns the memory.
struct Tensor {
  py::object owner;
  uint8_t* data = nullptr;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // bytes
  DType dtype = DType::kF16;
};

[[noreturn]] void Fail(const std::string& message) { throw py::value_error(message); }

std::string Join(const std::vector<int64_t>& v) {
  std::string s = "(";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + (v.size() == 1 ? ",)" : ")");
}

// Torch tensors are read through the attributes every torch version has, so that the module
// neither links libtorch nor depends on its ABI.
Tensor FromTorch(py::handle obj, const std::string& what) {
  const std::string device = py::str(obj.attr("device").attr("type"));
  if (device != "cpu") {
    Fail(what + " is a torch tensor on device '" + device +
         "'; expected a CPU tensor (kvwire reads and writes host memory only)");
  }
  const std::string name = py::str(obj.attr("dtype"));
  Tensor t;
  if (name == "torch.float16") {
    t.dtype = DType::kF16;
  } else if (name == "torch.bfloat16") {
    t.dtype = DType::kBF16;
  } else if (name == "torch.float32") {
    t.dtype = DType::kF32;
  } else {
    Fail(what + " has dtype " + name + "; expected torch.float16, torch.bfloat16 or torch.float32");
  }
  const auto itemsize = obj.attr("element_size")().cast<int64_t>();
  if (itemsize != static_cast<int64_t>(DTypeSize(t.dtype))) {
    Fail(what + ": element_size() " + std::to_string(itemsize) + " does not match " + name);
  }
  for (py::handle d : obj.attr("shape")) t.shape.push_back(d.cast<int64_t>());
  for (py::handle s : py::tuple(obj.attr("stride")()))
    t.strides.push_back(s.cast<int64_t>() * itemsize);
  t.data = reinterpret_cast<uint8_t*>(obj.attr("data_ptr")().cast<uintptr_t>());
  t.owner = py::reinterpret_borrow<py::object>(obj);
  return t;
}

Tensor FromBuffer(py::handle obj, bool writable, const std::string& what) {
  if (!PyObject_CheckBuffer(obj.ptr())) {
    Fail(what + " is a " + std::string(py::str(py::type::handle_of(obj).attr("__name__"))) +
         "; expected a numpy array or a torch tensor");
  }
  py::buffer_info info;
  try {
    info = py::reinterpret_borrow<py::buffer>(obj).request(writable);
  } catch (const py::error_already_set& e) {
    Fail(what + " cannot be " + (writable ? "written" : "read") + " through the buffer protocol (" +
         e.what() + ")" + (writable ? "; expected a writable array" : ""));
  }
  Tensor t;
  std::string format = info.format;
  if (!format.empty() && (format[0] == '<' || format[0] == '=' || format[0] == '@')) {
    format = format.substr(1);
  }
  if (format == "e" && info.itemsize == 2) {
    t.dtype = DType::kF16;
  } else if (format == "f" && info.itemsize == 4) {
    t.dtype = DType::kF32;
  } else {
    Fail(what + " has element format '" + info.format +
         "'; expected float16 or float32 (bfloat16 only as a torch tensor)");
  }
  t.shape.assign(info.shape.begin(), info.shape.end());
  t.strides.assign(info.strides.begin(), info.strides.end());
  t.data = static_cast<uint8_t*>(info.ptr);
  t.owner = py::reinterpret_borrow<py::object>(obj);
  return t;
}

Tensor ReadTensor(py::handle obj, bool writable, const std::string& what) {
  if (py::hasattr(obj, "data_ptr") && py::hasattr(obj, "element_size") &&
      py::hasattr(obj, "stride") && py::hasattr(obj, "device")) {
    return FromTorch(obj, what);
  }
  return FromBuffer(obj, writable, what);
}

uint32_t Dim(const Tensor& t, size_t i, const std::string& what) {
  const int64_t d = t.shape[i];
  if (d <= 0 || d > std::numeric_limits<uint32_t>::max()) {
    Fail(what + " has shape " + Join(t.shape) + ": dimension " + std::to_string(i) +
         " must be positive");
  }
  return static_cast<uint32_t>(d);
}

// True when dimensions [first, rank) are laid out back to back, row-major (dimensions of size 1
// may have any stride).
bool Packed(const Tensor& t, size_t first) {
  int64_t expected = static_cast<int64_t>(DTypeSize(t.dtype));
  for (size_t i = t.shape.size(); i-- > first;) {
    if (t.shape[i] != 1 && t.strides[i] != expected) return false;
    expected *= t.shape[i];
  }
  return true;
}

std::string Strides(const Tensor& t) {
  std::vector<int64_t> elements;
  for (int64_t s : t.strides) elements.push_back(s / static_cast<int64_t>(DTypeSize(t.dtype)));
  return Join(elements);
}

BoundKv BindContiguous(py::handle obj, bool writable, const std::string& what) {
  Tensor t = ReadTensor(obj, writable, what);
  if (t.shape.size() != 5 || t.shape[1] != 2) {
    Fail(what + " has shape " + Join(t.shape) +
         "; expected (layers, 2, tokens, kv_heads, head_dim) with index 0 = K and 1 = V, or "
         "for a paged cache a list of per-layer (2, num_blocks, block_size, kv_heads, head_dim) "
         "tensors and block_ids");
  }
  const KvShape shape{Dim(t, 0, what), Dim(t, 2, what), Dim(t, 3, what), Dim(t, 4, what)};
  if (!Packed(t, 2)) {
    Fail(what + " is not contiguous (strides " + Strides(t) + " in elements); expected each " +
         "[tokens, kv_heads, head_dim] slab contiguous: use .contiguous() or "
         "numpy.ascontiguousarray");
  }
  std::vector<void*> k(shape.layers), v(shape.layers);
  for (uint32_t l = 0; l < shape.layers; ++l) {
    k[l] = t.data + l * t.strides[0];
    v[l] = t.data + l * t.strides[0] + t.strides[1];
  }
  auto view = KvView::Contiguous(shape, t.dtype, std::move(k), std::move(v));
  if (!view.ok()) Fail(what + ": " + view.status().message());
  BoundKv bound{std::move(view).value(), {}};
  bound.owners.push_back(std::move(t.owner));
  return bound;
}

std::vector<int32_t> BlockIds(py::handle ids, const std::string& what) {
  std::vector<int32_t> out;
  for (py::handle h : py::iter(ids)) {
    const auto id = py::int_(py::reinterpret_borrow<py::object>(h)).cast<int64_t>();
    if (id < 0 || id > std::numeric_limits<int32_t>::max()) {
      Fail(what + ": block id " + std::to_string(id) + " is out of range");
    }
    out.push_back(static_cast<int32_t>(id));
  }
  if (out.empty()) Fail(what + ": block_ids is empty");
  return out;
}

BoundKv BindPaged(py::sequence layers, py::handle block_ids, std::optional<uint32_t> tokens,
                  bool writable, const std::string& what) {
  if (layers.size() == 0) Fail(what + " is an empty list; expected one tensor per layer");
  if (block_ids.is_none()) {
    Fail(what + " is a list of per-layer tensors (a paged cache), so block_ids is required");
  }
  BoundKv bound;
  std::vector<void*> k, v;
  Tensor first;
  for (size_t l = 0; l < layers.size(); ++l) {
    const std::string name = what + "[" + std::to_string(l) + "]";
    Tensor t = ReadTensor(layers[l], writable, name);
    if (t.shape.size() != 5 || t.shape[0] != 2) {
      Fail(name + " has shape " + Join(t.shape) +
           "; expected (2, num_blocks, block_size, kv_heads, head_dim) with index 0 = K, 1 = V");
    }
    for (size_t i = 1; i < 5; ++i) Dim(t, i, name);
    if (l == 0) {
      first = t;
    } else if (t.shape != first.shape || t.dtype != first.dtype) {
      Fail(name + " has shape " + Join(t.shape) + " and dtype " + DTypePyName(t.dtype) +
           "; expected those of layer 0: " + Join(first.shape) + ", " + DTypePyName(first.dtype));
    }
    if (!Packed(t, 1)) {
      Fail(name + " is not contiguous (strides " + Strides(t) + " in elements); expected each " +
           "[num_blocks, block_size, kv_heads, head_dim] half contiguous");
    }
    k.push_back(t.data);
    v.push_back(t.data + t.strides[0]);
    bound.owners.push_back(std::move(t.owner));
  }
  const std::vector<int32_t> ids = BlockIds(block_ids, what);
  const auto block_size = static_cast<uint32_t>(first.shape[2]);
  const uint64_t capacity = uint64_t{block_size} * ids.size();
  const uint64_t n = tokens ? *tokens : capacity;
  if (n == 0 || n > capacity || n <= capacity - block_size) {
    Fail(what + ": " + std::to_string(n) + " tokens need " +
         std::to_string((n + block_size - 1) / block_size) + " block ids of " +
         std::to_string(block_size) + " tokens, got " + std::to_string(ids.size()));
  }
  const KvShape shape{static_cast<uint32_t>(layers.size()), static_cast<uint32_t>(n),
                      static_cast<uint32_t>(first.shape[3]), static_cast<uint32_t>(first.shape[4])};
  auto view = KvView::Paged(shape, first.dtype, block_size, static_cast<uint32_t>(first.shape[1]),
                            std::move(k), std::move(v), ids);
  if (!view.ok()) Fail(what + ": " + view.status().message());
  bound.view = std::move(view).value();
  return bound;
}

}  // namespace

const char* DTypePyName(DType dtype) {
  switch (dtype) {
    case DType::kF16:
      return "float16";
    case DType::kBF16:
      return "bfloat16";
    case DType::kF32:
      return "float32";
  }
  return "?";
}

py::tuple ShapeTuple(const KvShape& s) {
  return py::make_tuple(s.layers, 2, s.tokens, s.kv_heads, s.head_dim);
}

BoundKv BindKv(py::handle kv, py::handle block_ids, std::optional<uint32_t> tokens, bool writable,
               const char* what) {
  if (py::isinstance<py::list>(kv) || py::isinstance<py::tuple>(kv)) {
    return BindPaged(py::reinterpret_borrow<py::sequence>(kv), block_ids, tokens, writable, what);
  }
  if (!block_ids.is_none()) {
    Fail(std::string(what) +
         " is one tensor, but block_ids was given; a paged cache is a list "
         "of per-layer (2, num_blocks, block_size, kv_heads, head_dim) tensors");
  }
  return BindContiguous(kv, writable, what);
}

}  // namespace kvwire::python
