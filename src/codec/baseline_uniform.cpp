#include "codec/baseline_uniform.h"

#include <vector>

#include "codec/quant_common.h"

namespace kvwire::baseline {
namespace {

float LevelsMinus1(int bits) { return static_cast<float>((1 << bits) - 1); }

bool ParamsValid(const uint8_t* scales, const uint8_t* mins, size_t n) {
  return HalvesAreScales(scales, n) && HalvesFinite(mins, n);
}

// ---- reference: one element at a time, straight from the recipe ----

void QuantizeRowGroupsRef(const float* in, size_t groups, size_t g, int bits, uint8_t* scales,
                          uint8_t* mins, uint8_t* idx) {
  const float levels = LevelsMinus1(bits);
  for (size_t r = 0; r < groups; ++r) {
    const float* x = in + r * g;
    float lo = x[0], hi = x[0];
    for (size_t j = 1; j < g; ++j) {
      if (x[j] < lo) lo = x[j];
      if (x[j] > hi) hi = x[j];
    }
    const UniformParams p = ChooseUniform(lo, hi, (1 << bits) - 1);
    StoreU16(scales + 2 * r, p.scale_h);
    StoreU16(mins + 2 * r, p.min_h);
    for (size_t j = 0; j < g; ++j) idx[r * g + j] = QuantizeUniform(x[j], p.min, p.div, levels);
  }
}

void DequantizeRowGroupsRef(const uint8_t* scales, const uint8_t* mins, const uint8_t* idx,
                            size_t groups, size_t g, float* out) {
  for (size_t r = 0; r < groups; ++r) {
    const UniformParams p = UniformFromHalves(LoadU16(scales + 2 * r), LoadU16(mins + 2 * r));
    for (size_t j = 0; j < g; ++j)
      out[r * g + j] = DequantizeUniform(idx[r * g + j], p.scale, p.min);
  }
}

void QuantizeColumnGroupsRef(const float* in, size_t rows, size_t cols, int bits, uint8_t* scales,
                             uint8_t* mins, uint8_t* idx) {
  const float levels = LevelsMinus1(bits);
  for (size_t c = 0; c < cols; ++c) {
    float lo = in[c], hi = in[c];
    for (size_t t = 1; t < rows; ++t) {
      const float x = in[t * cols + c];
      if (x < lo) lo = x;
      if (x > hi) hi = x;
    }
    const UniformParams p = ChooseUniform(lo, hi, (1 << bits) - 1);
    StoreU16(scales + 2 * c, p.scale_h);
    StoreU16(mins + 2 * c, p.min_h);
    for (size_t t = 0; t < rows; ++t) {
      idx[t * cols + c] = QuantizeUniform(in[t * cols + c], p.min, p.div, levels);
    }
  }
}

void DequantizeColumnGroupsRef(const uint8_t* scales, const uint8_t* mins, const uint8_t* idx,
                               size_t rows, size_t cols, float* out) {
  for (size_t c = 0; c < cols; ++c) {
    const UniformParams p = UniformFromHalves(LoadU16(scales + 2 * c), LoadU16(mins + 2 * c));
    for (size_t t = 0; t < rows; ++t) {
      out[t * cols + c] = DequantizeUniform(idx[t * cols + c], p.scale, p.min);
    }
  }
}

// ---- optimized: integer-key reductions, hoisted parameters, row-wise column loops ----

void QuantizeRowGroupsOpt(const float* in, size_t groups, size_t g, int bits, uint8_t* scales,
                          uint8_t* mins, uint8_t* idx) {
  const float levels = LevelsMinus1(bits);
  for (size_t r = 0; r < groups; ++r) {
    const float* x = in + r * g;
    float lo, hi;
    MinMaxFast(x, g, &lo, &hi);
    const UniformParams p = ChooseUniform(lo, hi, (1 << bits) - 1);
    StoreU16(scales + 2 * r, p.scale_h);
    StoreU16(mins + 2 * r, p.min_h);
    const float min = p.min, div = p.div;
    uint8_t* q = idx + r * g;
    for (size_t j = 0; j < g; ++j) q[j] = QuantizeUniform(x[j], min, div, levels);
  }
}

void DequantizeRowGroupsOpt(const uint8_t* scales, const uint8_t* mins, const uint8_t* idx,
                            size_t groups, size_t g, float* out) {
  for (size_t r = 0; r < groups; ++r) {
    const UniformParams p = UniformFromHalves(LoadU16(scales + 2 * r), LoadU16(mins + 2 * r));
    const float scale = p.scale, min = p.min;
    const uint8_t* q = idx + r * g;
    float* o = out + r * g;
    for (size_t j = 0; j < g; ++j) o[j] = DequantizeUniform(q[j], scale, min);
  }
}

void QuantizeColumnGroupsOpt(const float* in, size_t rows, size_t cols, int bits, uint8_t* scales,
                             uint8_t* mins, uint8_t* idx) {
  const float levels = LevelsMinus1(bits);
  // Column-wise min/max as element-wise selects over whole rows (same comparisons, same order
  // per column as the reference, so the same results).
  std::vector<float> lo(in, in + cols), hi(in, in + cols);
  for (size_t t = 1; t < rows; ++t) {
    const float* x = in + t * cols;
    for (size_t c = 0; c < cols; ++c) {
      lo[c] = x[c] < lo[c] ? x[c] : lo[c];
      hi[c] = x[c] > hi[c] ? x[c] : hi[c];
    }
  }
  std::vector<float> min(cols), div(cols);
  for (size_t c = 0; c < cols; ++c) {
    const UniformParams p = ChooseUniform(lo[c], hi[c], (1 << bits) - 1);
    StoreU16(scales + 2 * c, p.scale_h);
    StoreU16(mins + 2 * c, p.min_h);
    min[c] = p.min;
    div[c] = p.div;
  }
  for (size_t t = 0; t < rows; ++t) {
    const float* x = in + t * cols;
    uint8_t* q = idx + t * cols;
    for (size_t c = 0; c < cols; ++c) q[c] = QuantizeUniform(x[c], min[c], div[c], levels);
  }
}

void DequantizeColumnGroupsOpt(const uint8_t* scales, const uint8_t* mins, const uint8_t* idx,
                               size_t rows, size_t cols, float* out) {
  std::vector<float> scale(cols), min(cols);
  LoadHalves(scales, cols, scale.data());
  LoadHalves(mins, cols, min.data());
  for (size_t t = 0; t < rows; ++t) {
    const uint8_t* q = idx + t * cols;
    float* o = out + t * cols;
    for (size_t c = 0; c < cols; ++c) o[c] = DequantizeUniform(q[c], scale[c], min[c]);
  }
}

}  // namespace

void QuantizeRowGroups(const float* in, size_t groups, size_t g, int bits, uint8_t* scales,
                       uint8_t* mins, uint8_t* idx, CodecImpl impl) {
  if (groups == 0 || g == 0) return;
  if (impl == CodecImpl::kReference) {
    QuantizeRowGroupsRef(in, groups, g, bits, scales, mins, idx);
  } else {
    QuantizeRowGroupsOpt(in, groups, g, bits, scales, mins, idx);
  }
}

bool DequantizeRowGroups(const uint8_t* scales, const uint8_t* mins, const uint8_t* idx,
                         size_t groups, size_t g, float* out, CodecImpl impl) {
  if (!ParamsValid(scales, mins, groups)) return false;
  if (impl == CodecImpl::kReference) {
    DequantizeRowGroupsRef(scales, mins, idx, groups, g, out);
  } else {
    DequantizeRowGroupsOpt(scales, mins, idx, groups, g, out);
  }
  return true;
}

void QuantizeColumnGroups(const float* in, size_t rows, size_t cols, int bits, uint8_t* scales,
                          uint8_t* mins, uint8_t* idx, CodecImpl impl) {
  if (rows == 0 || cols == 0) return;
  if (impl == CodecImpl::kReference) {
    QuantizeColumnGroupsRef(in, rows, cols, bits, scales, mins, idx);
  } else {
    QuantizeColumnGroupsOpt(in, rows, cols, bits, scales, mins, idx);
  }
}

bool DequantizeColumnGroups(const uint8_t* scales, const uint8_t* mins, const uint8_t* idx,
                            size_t rows, size_t cols, float* out, CodecImpl impl) {
  if (!ParamsValid(scales, mins, cols)) return false;
  if (impl == CodecImpl::kReference) {
    DequantizeColumnGroupsRef(scales, mins, idx, rows, cols, out);
  } else {
    DequantizeColumnGroupsOpt(scales, mins, idx, rows, cols, out);
  }
  return true;
}

}  // namespace kvwire::baseline
