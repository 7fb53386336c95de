// Style/domain modulation of conv inputs, and the demodulation coefficients computed from
// the shared weight and the styles (never from a per-sample weight tensor).
#include "common.cuh"

namespace hdops {

// y[r, k] = x[r, k] * s[r] * (1 + d[r])
template <typename T>
__global__ void modulate_kernel(ModulateParams p) {
  using A = typename Acc<T>::type;
  const T* s = static_cast<const T*>(p.s);
  const T* d = static_cast<const T*>(p.d);
  const int64_t total = p.rows * p.hw;
  for (int64_t idx = global_index(); idx < total; idx += global_stride()) {
    const int64_t r = idx / p.hw;
    A m = load(s, r);
    if (d != nullptr) m *= static_cast<A>(1) + load(d, r);
    store(static_cast<T*>(p.y), idx, load(static_cast<const T*>(p.x), idx) * m);
  }
}

// out[r] = sum_k a[r, k] * c[r, k]; one block per row, tree reduction in shared memory.
template <typename T>
__global__ void rowdot_kernel(RowDotParams p) {
  using A = typename Acc<T>::type;
  __shared__ A buf[kThreads];
  const T* a = static_cast<const T*>(p.a);
  const T* c = static_cast<const T*>(p.c);
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {  // uniform per block
    const int64_t off = r * p.hw;
    A acc = static_cast<A>(0);
    for (int64_t k = threadIdx.x; k < p.hw; k += blockDim.x) acc += load(a, off + k) * load(c, off + k);
    buf[threadIdx.x] = acc;
    __syncthreads();
    for (int step = kThreads / 2; step > 0; step >>= 1) {
      if (threadIdx.x < step) buf[threadIdx.x] += buf[threadIdx.x + step];
      __syncthreads();
    }
    if (threadIdx.x == 0) store(static_cast<T*>(p.out), r, buf[0]);
    __syncthreads();  // buf is reused by the next row
  }
}

// wsq[o, i] = sum_k w[o, i, k]^2
template <typename T>
__global__ void demod_wsq_kernel(DemodParams p) {
  using A = typename Acc<T>::type;
  const T* w = static_cast<const T*>(p.w);
  A* wsq = static_cast<A*>(p.wsq);
  for (int64_t oi = global_index(); oi < p.O * p.I; oi += global_stride()) {
    A acc = static_cast<A>(0);
    for (int64_t k = 0; k < p.K; ++k) {
      const A v = load(w, oi * p.K + k);
      acc += v * v;
    }
    wsq[oi] = acc;
  }
}

// out[b, o] = rsqrt(sum_i wsq[o, i] * s[b, i]^2 + eps); one warp per (b, o).
template <typename T>
__global__ void demod_fwd_kernel(DemodParams p) {
  using A = typename Acc<T>::type;
  const T* s = static_cast<const T*>(p.s);
  const A* wsq = static_cast<const A*>(p.wsq);
  const int lane = threadIdx.x & 31;
  for (int64_t bo = global_index() / 32; bo < p.B * p.O; bo += global_stride() / 32) {  // uniform per warp
    const int64_t b = bo / p.O, o = bo % p.O;
    A acc = static_cast<A>(0);
    for (int64_t i = lane; i < p.I; i += 32) {
      const A sv = load(s, b * p.I + i);
      acc += wsq[o * p.I + i] * sv * sv;
    }
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) store(static_cast<T*>(p.out), bo, rsqrt_acc(acc + static_cast<A>(p.eps)));
  }
}

// ds[b, i] = 2 s[b, i] sum_o dq[b, o] wsq[o, i]
template <typename T>
__global__ void demod_grad_styles_kernel(DemodParams p) {
  using A = typename Acc<T>::type;
  const T* s = static_cast<const T*>(p.s);
  const A* wsq = static_cast<const A*>(p.wsq);
  const A* dq = static_cast<const A*>(p.dq);
  for (int64_t bi = global_index(); bi < p.B * p.I; bi += global_stride()) {
    const int64_t b = bi / p.I, i = bi % p.I;
    A acc = static_cast<A>(0);
    for (int64_t o = 0; o < p.O; ++o) acc += dq[b * p.O + o] * wsq[o * p.I + i];
    store(static_cast<T*>(p.out), bi, static_cast<A>(2) * load(s, bi) * acc);
  }
}

// dw[o, i, k] = 2 w[o, i, k] sum_b dq[b, o] s[b, i]^2
template <typename T>
__global__ void demod_grad_weight_kernel(DemodParams p) {
  using A = typename Acc<T>::type;
  const T* s = static_cast<const T*>(p.s);
  const T* w = static_cast<const T*>(p.w);
  const A* dq = static_cast<const A*>(p.dq);
  for (int64_t oi = global_index(); oi < p.O * p.I; oi += global_stride()) {
    const int64_t o = oi / p.I, i = oi % p.I;
    A acc = static_cast<A>(0);
    for (int64_t b = 0; b < p.B; ++b) {
      const A sv = load(s, b * p.I + i);
      acc += dq[b * p.O + o] * sv * sv;
    }
    for (int64_t k = 0; k < p.K; ++k)
      store(static_cast<T*>(p.out), oi * p.K + k, static_cast<A>(2) * load(w, oi * p.K + k) * acc);
  }
}

cudaError_t launch_modulate(const ModulateParams& p, DType t, cudaStream_t s) {
  const int64_t total = p.rows * p.hw;
  if (total == 0) return cudaSuccess;
  return dispatch(t, [&](auto tag) {
    HD_LAUNCH(modulate_kernel<decltype(tag)>, grid_for(total), kThreads, 0, s, p);
  });
}

cudaError_t launch_rowdot(const RowDotParams& p, DType t, cudaStream_t s) {
  if (p.rows == 0) return cudaSuccess;  // hw == 0 still writes zeros
  const unsigned int blocks = static_cast<unsigned int>(std::min<int64_t>(p.rows, 65535LL * 16));
  return dispatch(t, [&](auto tag) {
    HD_LAUNCH(rowdot_kernel<decltype(tag)>, blocks, kThreads, 0, s, p);
  });
}

cudaError_t launch_demod_wsq(const DemodParams& p, DType t, cudaStream_t s) {
  if (p.O * p.I == 0) return cudaSuccess;
  return dispatch(t, [&](auto tag) {
    HD_LAUNCH(demod_wsq_kernel<decltype(tag)>, grid_for(p.O * p.I), kThreads, 0, s, p);
  });
}

cudaError_t launch_demod_fwd(const DemodParams& p, DType t, cudaStream_t s) {
  if (p.B * p.O == 0) return cudaSuccess;
  return dispatch(t, [&](auto tag) {
    HD_LAUNCH(demod_fwd_kernel<decltype(tag)>, grid_for(p.B * p.O * 32), kThreads, 0, s, p);
  });
}

cudaError_t launch_demod_grad_styles(const DemodParams& p, DType t, cudaStream_t s) {
  if (p.B * p.I == 0) return cudaSuccess;
  return dispatch(t, [&](auto tag) {
    HD_LAUNCH(demod_grad_styles_kernel<decltype(tag)>, grid_for(p.B * p.I), kThreads, 0, s, p);
  });
}

cudaError_t launch_demod_grad_weight(const DemodParams& p, DType t, cudaStream_t s) {
  if (p.O * p.I == 0) return cudaSuccess;
  return dispatch(t, [&](auto tag) {
    HD_LAUNCH(demod_grad_weight_kernel<decltype(tag)>, grid_for(p.O * p.I), kThreads, 0, s, p);
  });
}

}  // namespace hdops
