// Host-side interface between ops.cpp (torch, pybind) and the .cu files (plain CUDA).
// The .cu files see only these POD structs and raw pointers, so nvcc never parses the
// torch headers: that keeps the build short and the kernels easy to review.
#pragma once

#include <cstdint>
#include <cuda_runtime_api.h>

namespace hdops {

enum class DType : int { F32 = 0, F64 = 1, F16 = 2, BF16 = 3 };

// ---- bias_act: y = clamp(act(x + b[c]) * gain), c = (i / inner) % channels --------------
struct BiasActParams {
  const void* x = nullptr;   // [numel] contiguous, dtype T
  const void* b = nullptr;   // [channels] dtype T, or nullptr (no bias)
  const void* dy = nullptr;  // grad kernel only: [numel] dtype T
  void* out = nullptr;       // [numel] dtype T (y for forward, dx for grad)
  int64_t numel = 0;
  int64_t inner = 1;         // product of the sizes after the bias dim
  int64_t channels = 1;      // size of the bias dim
  int act = 0;               // 0 linear, 1 lrelu
  double alpha = 0.0;
  double gain = 1.0;
  double clamp = -1.0;       // < 0: no clamp
};
cudaError_t launch_bias_act_fwd(const BiasActParams& p, DType t, cudaStream_t s);
cudaError_t launch_bias_act_grad(const BiasActParams& p, DType t, cudaStream_t s);

// ---- upfirdn2d: correlation of the zero-upsampled, padded input with w, then downsampling --
struct Upfirdn2dParams {
  const void* x = nullptr;   // [nc, in_h, in_w] dtype T
  const void* w = nullptr;   // [fh, fw] accumulation dtype (float, or double when T is double)
  void* y = nullptr;         // [nc, out_h, out_w] dtype T
  int64_t nc = 0, in_h = 0, in_w = 0, out_h = 0, out_w = 0;
  int fh = 1, fw = 1;
  int up_x = 1, up_y = 1, down_x = 1, down_y = 1;
  int pad_x0 = 0, pad_y0 = 0;  // the far-side pads only set out_h/out_w
  double gain = 1.0;
};
cudaError_t launch_upfirdn2d(const Upfirdn2dParams& p, DType t, cudaStream_t s);

// ---- modulation --------------------------------------------------------------------------
struct ModulateParams {     // y[r, k] = x[r, k] * s[r] * (1 + d[r]),  r = b * I + i, k < hw
  const void* x = nullptr;  // [rows, hw] dtype T
  const void* s = nullptr;  // [rows] dtype T
  const void* d = nullptr;  // [rows] dtype T or nullptr
  void* y = nullptr;        // [rows, hw] dtype T
  int64_t rows = 0, hw = 0;
};
cudaError_t launch_modulate(const ModulateParams& p, DType t, cudaStream_t s);

struct RowDotParams {       // out[r] = sum_k a[r, k] * c[r, k]
  const void* a = nullptr;  // [rows, hw] dtype T
  const void* c = nullptr;  // [rows, hw] dtype T
  void* out = nullptr;      // [rows] dtype T
  int64_t rows = 0, hw = 0;
};
cudaError_t launch_rowdot(const RowDotParams& p, DType t, cudaStream_t s);

struct DemodParams {
  const void* w = nullptr;     // [O, I, K] dtype T (K = kh * kw)
  const void* s = nullptr;     // [B, I] dtype T
  void* wsq = nullptr;         // [O, I] accumulation dtype: sum_k w^2
  const void* dq = nullptr;    // [B, O] accumulation dtype: dL/dq, q = sum_i wsq * s^2 + eps
  void* out = nullptr;         // forward: [B, O] dtype T; grads: ds [B, I] or dw [O, I, K], dtype T
  int64_t B = 0, O = 0, I = 0, K = 0;
  double eps = 1e-8;
};
cudaError_t launch_demod_wsq(const DemodParams& p, DType t, cudaStream_t s);        // wsq from w
cudaError_t launch_demod_fwd(const DemodParams& p, DType t, cudaStream_t s);        // out from wsq, s
cudaError_t launch_demod_grad_styles(const DemodParams& p, DType t, cudaStream_t s);  // ds from dq, wsq, s
cudaError_t launch_demod_grad_weight(const DemodParams& p, DType t, cudaStream_t s);  // dw from dq, s, w

}  // namespace hdops
