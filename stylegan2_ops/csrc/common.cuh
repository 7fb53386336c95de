// Device-side helpers shared by the .cu files: load/store with a float (or double)
// accumulator, a grid-stride launch shape, and a dtype switch.
#pragma once

#ifdef HDOPS_HOST_EMULATION
#include "host_emulation.h"  // tests without a GPU: the kernels run on the CPU
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
// A launch as nvcc spells it; host_emulation.h gives the CPU version.
#define HD_LAUNCH(kernel, grid, block, shared, stream, ...) kernel<<<(grid), (block), (shared), (stream)>>>(__VA_ARGS__)
#define HD_LAST_ERROR() cudaGetLastError()
#endif

#include <algorithm>
#include <cstdint>

#include "ops.h"

namespace hdops {

// Accumulate half/bfloat16/float in float, double in double.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ double load(const double* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }

__device__ __forceinline__ void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(double* p, int64_t i, double v) { p[i] = v; }
__device__ __forceinline__ void store(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

__device__ __forceinline__ float rsqrt_acc(float v) { return rsqrtf(v); }
__device__ __forceinline__ double rsqrt_acc(double v) { return rsqrt(v); }

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n items; the loops index with int64_t, so n may exceed 2^31.
inline unsigned int grid_for(int64_t n) {
  int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(blocks, 65535LL * 16)));
}

__device__ __forceinline__ int64_t global_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t global_stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// Calls fn(T{}) with T the CUDA storage type for the dtype code.
template <typename Fn>
cudaError_t dispatch(DType t, Fn&& fn) {
  switch (t) {
    case DType::F32: fn(float{}); break;
    case DType::F64: fn(double{}); break;
    case DType::F16: fn(__half{}); break;
    case DType::BF16: fn(__nv_bfloat16{}); break;
    default: return cudaErrorInvalidValue;
  }
  return HD_LAST_ERROR();
}

}  // namespace hdops
