// upfirdn2d: one thread per output sample, direct sum over the filter taps that hit a
// non-zero (i.e. original) sample of the upsampled, padded input.
//
// Along one axis: the upsampled signal u has length in*up with u[m] = x[m / up] when
// m % up == 0 (else 0); padding shifts it by pad0; output o reads taps k = 0..f-1 at
// u[o * down + k - pad0], weighted by w[k] (a correlation; the caller flips the filter
// for a true convolution). So only taps with (o * down - pad0 + k) % up == 0 contribute.
#include "common.cuh"

namespace hdops {

__device__ __forceinline__ int64_t first_tap(int64_t base, int up) {
  // Smallest k >= 0 with (base + k) % up == 0; C++ % keeps the dividend's sign.
  int64_t r = (-base) % up;
  return r < 0 ? r + up : r;
}

template <typename T>
__global__ void upfirdn2d_kernel(Upfirdn2dParams p) {
  using A = typename Acc<T>::type;
  const T* x = static_cast<const T*>(p.x);
  const A* w = static_cast<const A*>(p.w);
  T* y = static_cast<T*>(p.y);
  const int64_t total = p.nc * p.out_h * p.out_w;
  const int64_t up_len_y = p.in_h * p.up_y, up_len_x = p.in_w * p.up_x;

  for (int64_t idx = global_index(); idx < total; idx += global_stride()) {
    const int64_t ox = idx % p.out_w;
    const int64_t t = idx / p.out_w;
    const int64_t oy = t % p.out_h;
    const int64_t nc = t / p.out_h;
    const T* xp = x + nc * p.in_h * p.in_w;

    const int64_t base_y = oy * p.down_y - p.pad_y0;  // upsampled row read by tap ky: base_y + ky
    const int64_t base_x = ox * p.down_x - p.pad_x0;
    const int64_t kx0 = first_tap(base_x, p.up_x);
    A acc = static_cast<A>(0);
    for (int64_t ky = first_tap(base_y, p.up_y); ky < p.fh; ky += p.up_y) {
      const int64_t my = base_y + ky;
      if (my < 0) continue;
      if (my >= up_len_y) break;
      const T* row = xp + (my / p.up_y) * p.in_w;
      const A* wrow = w + ky * p.fw;
      for (int64_t kx = kx0; kx < p.fw; kx += p.up_x) {
        const int64_t mx = base_x + kx;
        if (mx < 0) continue;
        if (mx >= up_len_x) break;
        acc += load(row, mx / p.up_x) * wrow[kx];
      }
    }
    store(y, idx, acc * static_cast<A>(p.gain));
  }
}

cudaError_t launch_upfirdn2d(const Upfirdn2dParams& p, DType t, cudaStream_t s) {
  const int64_t total = p.nc * p.out_h * p.out_w;
  if (total == 0) return cudaSuccess;
  return dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    HD_LAUNCH(upfirdn2d_kernel<T>, grid_for(total), kThreads, 0, s, p);
  });
}

}  // namespace hdops
