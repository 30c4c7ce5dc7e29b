// KV tensors from Python objects: numpy arrays (buffer protocol) and torch tensors (read through
// their Python attributes, so libtorch is never linked), bound into a kvwire::KvView.
//
// Layouts accepted (docs/DESIGN.md, "The Python module"); head_dim must be the contiguous
// dimension, every other stride is free (no copy is made), as long as no two elements alias:
//   contiguous: one tensor [layers, 2, tokens, kv_heads, head_dim], index 0 = K, 1 = V;
//   paged:      a list with one tensor per layer plus block ids: token t lives in block
//               block_ids[t / block_size], slot t % block_size. layout "flash_attn" (vLLM's
//               flash-attention cache): [2, num_blocks, block_size, kv_heads, head_dim], NHD or
//               HND strides; layout "flashinfer": [num_blocks, 2, block_size, kv_heads, head_dim].
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kvwire/kv_view.h"

namespace kvwire::python {

namespace py = pybind11;

/// A view and the Python objects whose memory it points into. Whoever hands `view` to C++ code
/// that runs later keeps `owners` alive at least as long (and drops them with the GIL held).
struct BoundKv {
  KvView view;
  std::vector<py::object> owners;
};

/// Binds `kv` (a tensor, or a list of per-layer paged tensors with `block_ids`) as a KvView.
/// `tokens` (paged only) defaults to len(block_ids) * block_size. `writable`: the view will be
/// written (a read-only numpy array is refused). `layout`: "flash_attn" or "flashinfer" (paged
/// only). Raises ValueError saying what is wrong and what is expected.
BoundKv BindKv(py::handle kv, py::handle block_ids, std::optional<uint32_t> tokens, bool writable,
               const char* what, const std::string& layout = "flash_attn");

/// "float16", "bfloat16", "float32": the numpy/torch name of a kvwire dtype.
const char* DTypePyName(DType dtype);
/// (layers, 2, tokens, kv_heads, head_dim).
py::tuple ShapeTuple(const KvShape& shape);

}  // namespace kvwire::python
