// kivi<b> encode/decode kernels (format and recipe in kivi.cuh; the per-thread bodies live there
// too, host+device, so the CPU tests run them). Grid-stride loops only, here:
//  encode: (1) a thread per group: fp16 scale and min into the payload; (2) a thread per 8
//          quantized values: their b bytes of the bit stream; (3) a thread per window value,
//          and the u32 Tq header. (2) re-reads the input: kivi encode reads it twice.
//  decode: (1) a thread per 8 quantized values; (2) a thread per window value. Both check the
//          Tq header first and write nothing when it disagrees.
#include "kivi.cuh"
#include "launch_util.cuh"

namespace kvwire::kern {
namespace {

__device__ inline uint64_t GlobalThread() {
  return uint64_t{blockIdx.x} * blockDim.x + threadIdx.x;
}
__device__ inline uint64_t GridThreads() { return uint64_t{gridDim.x} * blockDim.x; }

// payload sections: see KiviLayout; src/dst: KvTensor layouts of kv_tensor.h
__global__ void KiviParamsKernel(KvTensor src, TokenRange range, KiviParams k, KiviLayout l,
                                 uint8_t* payload, uint32_t* errors) {
  for (uint64_t g = GlobalThread(); g < l.groups; g += GridThreads())
    KiviGroupParamsThread(src, range, k, l, g, payload, errors);
}

__global__ void KiviPackKernel(KvTensor src, TokenRange range, KiviParams k, KiviLayout l,
                               uint8_t* payload) {
  for (uint64_t u = GlobalThread(); u < KiviUnits(l); u += GridThreads())
    KiviPackThread(src, range, k, l, u, payload);
}

__global__ void KiviWindowEncodeKernel(KvTensor src, TokenRange range, KiviParams k, KiviLayout l,
                                       uint8_t* payload, uint32_t* errors) {
  const uint64_t n = uint64_t{range.tokens} * src.row_elems() - l.quant_elems;
  // At least one thread runs (i == 0 writes the header even without a window).
  for (uint64_t i = GlobalThread(); i < (n > 0 ? n : 1); i += GridThreads())
    KiviWindowEncodeThread(src, range, k, l, i, payload, errors);
}

__device__ inline bool HeaderOk(const uint8_t* payload, const KiviParams& k, uint32_t* errors) {
  if (kmath::LoadU32(payload) == k.quant_tokens) return true;
  if (GlobalThread() == 0) RaiseError(errors, kErrBadHeader);
  return false;
}

__global__ void KiviUnpackKernel(const uint8_t* payload, KvTensor dst, TokenRange range,
                                 KiviParams k, KiviLayout l, uint32_t* errors) {
  if (!HeaderOk(payload, k, errors)) return;
  for (uint64_t u = GlobalThread(); u < KiviUnits(l); u += GridThreads())
    KiviUnpackThread(payload, dst, range, k, l, u, errors);
}

__global__ void KiviWindowDecodeKernel(const uint8_t* payload, KvTensor dst, TokenRange range,
                                       KiviParams k, KiviLayout l, uint32_t* errors) {
  if (!HeaderOk(payload, k, errors)) return;
  const uint64_t n = uint64_t{range.tokens} * dst.row_elems() - l.quant_elems;
  for (uint64_t i = GlobalThread(); i < n; i += GridThreads())
    KiviWindowDecodeThread(payload, dst, range, l, i, errors);
}

}  // namespace

Status LaunchKiviEncode(const KvTensor& src, TokenRange range, const KiviParams& k,
                        uint8_t* payload, uint32_t* errors, cudaStream_t stream) {
  const KiviLayout l = KiviLayoutOf(range.tokens, src.row_elems(), k);
  if (l.groups > 0) {
    KiviParamsKernel<<<GridFor(l.groups, kThreads), kThreads, 0, stream>>>(src, range, k, l,
                                                                           payload, errors);
    KVWIRE_RETURN_IF_ERROR(LaunchStatus("kivi encode (group parameters)"));
    KiviPackKernel<<<GridFor(KiviUnits(l), kThreads), kThreads, 0, stream>>>(src, range, k, l,
                                                                             payload);
    KVWIRE_RETURN_IF_ERROR(LaunchStatus("kivi encode (indices)"));
  }
  const uint64_t window = uint64_t{range.tokens} * src.row_elems() - l.quant_elems;
  KiviWindowEncodeKernel<<<GridFor(window, kThreads), kThreads, 0, stream>>>(src, range, k, l,
                                                                             payload, errors);
  return LaunchStatus("kivi encode (window)");
}

Status LaunchKiviDecode(const uint8_t* payload, const KvTensor& dst, TokenRange range,
                        const KiviParams& k, uint32_t* errors, cudaStream_t stream) {
  const KiviLayout l = KiviLayoutOf(range.tokens, dst.row_elems(), k);
  if (l.quant_elems > 0) {
    KiviUnpackKernel<<<GridFor(KiviUnits(l), kThreads), kThreads, 0, stream>>>(payload, dst, range,
                                                                               k, l, errors);
    KVWIRE_RETURN_IF_ERROR(LaunchStatus("kivi decode (indices)"));
  }
  const uint64_t window = uint64_t{range.tokens} * dst.row_elems() - l.quant_elems;
  if (window == 0) return Status::Ok();
  KiviWindowDecodeKernel<<<GridFor(window, kThreads), kThreads, 0, stream>>>(payload, dst, range, k,
                                                                             l, errors);
  return LaunchStatus("kivi decode (window)");
}

}  // namespace kvwire::kern
