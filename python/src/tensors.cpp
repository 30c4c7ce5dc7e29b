#include "tensors.h"

#include <algorithm>
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

std::string Strides(const Tensor& t) {
  std::vector<int64_t> elements;
  for (int64_t s : t.strides) elements.push_back(s / static_cast<int64_t>(DTypeSize(t.dtype)));
  return Join(elements);
}

// The last dimension (head_dim) must be contiguous; every other stride is free as long as no two
// elements share memory. Sufficient check (the one KvView::Strided makes for each K|V tensor,
// here over the whole tensor so that K and V do not overlap either): sorted by stride, each
// dimension's stride reaches past what the smaller ones span. Dimensions of size 1 are skipped.
void CheckStrides(const Tensor& t, const std::string& what, const char* expected) {
  const auto element = static_cast<int64_t>(DTypeSize(t.dtype));
  const size_t last = t.shape.size() - 1;
  if (t.shape[last] != 1 && t.strides[last] != element) {
    Fail(what + " has strides " + Strides(t) + " (in elements): its last dimension (head_dim) " +
         "must be contiguous (stride 1); expected " + expected);
  }
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size)
  for (size_t i = 0; i < t.shape.size(); ++i) {
    if (t.shape[i] == 1) continue;
    if (t.strides[i] <= 0 || t.strides[i] % element != 0) {
      Fail(what + " has strides " + Strides(t) + " (in elements): dimension " + std::to_string(i) +
           " has a " + (t.strides[i] <= 0 ? "zero or negative" : "fractional") +
           " stride (an expanded or flipped tensor?); use .contiguous()");
    }
    dims.emplace_back(t.strides[i], t.shape[i]);
  }
  std::sort(dims.begin(), dims.end());
  __int128 span = element;
  for (const auto& [stride, size] : dims) {
    if (stride < span) {
      Fail(what + " has shape " + Join(t.shape) + " and strides " + Strides(t) +
           " (in elements): distinct elements share memory; use .contiguous()");
    }
    span += static_cast<__int128>(size - 1) * stride;
  }
}

KvStrides KvStridesOf(const Tensor& t, size_t block_axis, size_t token_axis, size_t head_axis) {
  KvStrides s;
  s.block = block_axis < t.strides.size() ? t.strides[block_axis] : 0;
  s.token = t.strides[token_axis];
  s.head = t.strides[head_axis];
  // Strides of dimensions of size 1 are arbitrary (torch may report anything); KvView never
  // steps along them, so give them a value that passes its checks.
  if (t.shape[token_axis] == 1) s.token = 0;
  if (t.shape[head_axis] == 1) s.head = 0;
  if (block_axis < t.strides.size() && t.shape[block_axis] == 1) s.block = 0;
  return s;
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
  CheckStrides(t, what, "(layers, 2, tokens, kv_heads, head_dim) with any strides but the last");
  StridedKv d;
  d.shape = shape;
  d.dtype = t.dtype;
  d.strides = KvStridesOf(t, /*block_axis=*/5, 2, 3);
  for (uint32_t l = 0; l < shape.layers; ++l) {
    d.k.push_back(t.data + l * t.strides[0]);
    d.v.push_back(t.data + l * t.strides[0] + t.strides[1]);
  }
  auto view = KvView::Strided(d);
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

// Axes of a per-layer paged tensor in each layout.
struct PagedAxes {
  size_t kv, block;  // slot, head and head_dim are axes 2, 3, 4 in both
  const char* shape;
};

PagedAxes AxesOf(const std::string& layout, const std::string& what) {
  if (layout == "flash_attn") return {0, 1, "(2, num_blocks, block_size, kv_heads, head_dim)"};
  if (layout == "flashinfer") return {1, 0, "(num_blocks, 2, block_size, kv_heads, head_dim)"};
  Fail(what + ": layout '" + layout + "' is unknown; expected 'flash_attn' (per-layer (2, " +
       "num_blocks, block_size, kv_heads, head_dim), vLLM's flash-attention cache) or " +
       "'flashinfer' ((num_blocks, 2, block_size, kv_heads, head_dim))");
}

BoundKv BindPaged(py::sequence layers, py::handle block_ids, std::optional<uint32_t> tokens,
                  bool writable, const std::string& what, const std::string& layout) {
  const PagedAxes axes = AxesOf(layout, what);
  if (layers.size() == 0) Fail(what + " is an empty list; expected one tensor per layer");
  if (block_ids.is_none()) {
    Fail(what + " is a list of per-layer tensors (a paged cache), so block_ids is required");
  }
  BoundKv bound;
  StridedKv d;
  Tensor first;
  for (size_t l = 0; l < layers.size(); ++l) {
    const std::string name = what + "[" + std::to_string(l) + "]";
    Tensor t = ReadTensor(layers[l], writable, name);
    if (t.shape.size() != 5 || t.shape[axes.kv] != 2) {
      Fail(name + " has shape " + Join(t.shape) + "; expected " + axes.shape +
           " with K at index 0 and V at 1 of the dimension of size 2 (layout='" + layout + "')");
    }
    for (size_t i = 0; i < 5; ++i) Dim(t, i, name);
    CheckStrides(t, name, (std::string(axes.shape) + " with head_dim contiguous").c_str());
    if (l == 0) {
      first = t;
    } else if (t.shape != first.shape || t.dtype != first.dtype) {
      Fail(name + " has shape " + Join(t.shape) + " and dtype " + DTypePyName(t.dtype) +
           "; expected those of layer 0: " + Join(first.shape) + ", " + DTypePyName(first.dtype));
    } else if (KvStridesOf(t, axes.block, 2, 3) != KvStridesOf(first, axes.block, 2, 3)) {
      Fail(name + " has strides " + Strides(t) + "; expected those of layer 0: " + Strides(first) +
           " (every layer laid out alike)");
    }
    d.k.push_back(t.data);
    d.v.push_back(t.data + t.strides[axes.kv]);
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
  const auto num_blocks = static_cast<uint32_t>(first.shape[axes.block]);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (static_cast<uint32_t>(ids[i]) >= num_blocks) {
      Fail(what + ": block_ids[" + std::to_string(i) + "] = " + std::to_string(ids[i]) +
           " is not a block of the cache (it has " + std::to_string(num_blocks) + ")");
    }
  }
  d.shape = {static_cast<uint32_t>(layers.size()), static_cast<uint32_t>(n),
             static_cast<uint32_t>(first.shape[3]), static_cast<uint32_t>(first.shape[4])};
  d.dtype = first.dtype;
  d.strides = KvStridesOf(first, axes.block, 2, 3);
  d.block_size = block_size;
  d.num_blocks = num_blocks;
  d.block_table = ids;
  auto view = KvView::Strided(d);
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
               const char* what, const std::string& layout) {
  if (py::isinstance<py::list>(kv) || py::isinstance<py::tuple>(kv)) {
    return BindPaged(py::reinterpret_borrow<py::sequence>(kv), block_ids, tokens, writable, what,
                     layout);
  }
  if (layout != "flash_attn") {
    Fail(std::string(what) + " is one tensor, but layout='" + layout +
         "' was given; layouts apply to paged caches (a list of per-layer tensors)");
  }
  if (!block_ids.is_none()) {
    Fail(std::string(what) +
         " is one tensor, but block_ids was given; a paged cache is a list "
         "of per-layer (2, num_blocks, block_size, kv_heads, head_dim) tensors");
  }
  return BindContiguous(kv, writable, what);
}

}  // namespace kvwire::python
