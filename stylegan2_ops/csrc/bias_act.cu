// bias_act forward and gradient kernels (elementwise, one grid-stride loop each).
#include "common.cuh"

namespace hdops {

// Value before the clamp: act(x + b) * gain, in the accumulation type.
template <typename T>
__device__ __forceinline__ typename Acc<T>::type bias_act_pre(const BiasActParams& p, int64_t i,
                                                              typename Acc<T>::type* slope) {
  using A = typename Acc<T>::type;
  A v = load(static_cast<const T*>(p.x), i);
  if (p.b != nullptr) v += load(static_cast<const T*>(p.b), (i / p.inner) % p.channels);
  A g = static_cast<A>(1);
  if (p.act == 1 && !(v > static_cast<A>(0))) g = static_cast<A>(p.alpha);  // torch: slope alpha at 0
  *slope = g * static_cast<A>(p.gain);
  return v * *slope;
}

template <typename T>
__global__ void bias_act_fwd_kernel(BiasActParams p) {
  using A = typename Acc<T>::type;
  const A c = static_cast<A>(p.clamp);
  for (int64_t i = global_index(); i < p.numel; i += global_stride()) {
    A slope;
    A v = bias_act_pre<T>(p, i, &slope);
    if (p.clamp >= 0) v = v > c ? c : (v < -c ? -c : v);
    store(static_cast<T*>(p.out), i, v);
  }
}

// dx = dy * d(clamp(act(x + b) * gain))/dx. Like torch.clamp's backward, the gradient passes
// only where -clamp < pre < clamp (zero at the bounds); x is the saved input, not y.
template <typename T>
__global__ void bias_act_grad_kernel(BiasActParams p) {
  using A = typename Acc<T>::type;
  const A c = static_cast<A>(p.clamp);
  for (int64_t i = global_index(); i < p.numel; i += global_stride()) {
    A slope;
    A v = bias_act_pre<T>(p, i, &slope);
    if (p.clamp >= 0 && !(v > -c && v < c)) slope = static_cast<A>(0);
    store(static_cast<T*>(p.out), i, load(static_cast<const T*>(p.dy), i) * slope);
  }
}

cudaError_t launch_bias_act_fwd(const BiasActParams& p, DType t, cudaStream_t s) {
  if (p.numel == 0) return cudaSuccess;
  return dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    HD_LAUNCH(bias_act_fwd_kernel<T>, grid_for(p.numel), kThreads, 0, s, p);
  });
}

cudaError_t launch_bias_act_grad(const BiasActParams& p, DType t, cudaStream_t s) {
  if (p.numel == 0) return cudaSuccess;
  return dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    HD_LAUNCH(bias_act_grad_kernel<T>, grid_for(p.numel), kThreads, 0, s, p);
  });
}

}  // namespace hdops
