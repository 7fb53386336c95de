// The tail of a StyleGAN2 styled conv in one pass, for float32 CPU tensors: demodulation, the
// scaled noise, the bias, leaky ReLU and its gain. torch does the same in three passes over
// the layer's output forward (addcmul, add, leaky_relu_) and three backward.
#include <cstdint>

#include "cpu_kernels.h"
#include "cpu_parallel.h"

extern "C" {

// y[n][o][i] = lrelu(x[n][o][i] * dc[n][o] + add[n][i] + bias[o]) * gain for i < HW, with add
// (or null) advancing add_stride floats per image (0: one plane for all). y may be x.
int hd_demod_bias_lrelu(const float* x, const float* dc, const float* add, int64_t add_stride, const float* bias,
                        float* y, int64_t N, int64_t O, int64_t HW, float alpha, float gain, int nthreads) {
    if (N < 1 || O < 1 || HW < 1) return -1;
    const float neg = alpha * gain;
    hd::parallel_for(N * O, nthreads, [&](int64_t begin, int64_t end) {
        // local copies: captured by reference, GCC cannot rule out that dst overlaps them and
        // leaves the loops scalar (5x slower)
        const float pos_slope = gain, neg_slope = neg;
        for (int64_t p = begin; p < end; ++p) {
            const int64_t n = p / O, o = p % O;
            const float d = dc[p], b = bias[o];
            const float* __restrict src = x + p * HW;
            float* __restrict dst = y + p * HW;
            if (add) {
                const float* __restrict a = add + n * add_stride;
                for (int64_t i = 0; i < HW; ++i) {
                    const float v = src[i] * d + a[i] + b;
                    dst[i] = v * (v > 0.0f ? pos_slope : neg_slope);
                }
            } else {
                for (int64_t i = 0; i < HW; ++i) {
                    const float v = src[i] * d + b;
                    dst[i] = v * (v > 0.0f ? pos_slope : neg_slope);
                }
            }
        }
    });
    return 0;
}

// The gradient of hd_demod_bias_lrelu with respect to x, from its output y (gain > 0, so the
// sign of y is that of the pre-activation): gx = gy * dc[n][o] * (y > 0 ? gain : alpha * gain).
int hd_demod_bias_lrelu_grad(const float* gy, const float* y, const float* dc, float* gx, int64_t N, int64_t O,
                             int64_t HW, float alpha, float gain, int nthreads) {
    if (N < 1 || O < 1 || HW < 1) return -1;
    hd::parallel_for(N * O, nthreads, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
            const float pos = dc[p] * gain, neg = dc[p] * gain * alpha;
            const float* __restrict g = gy + p * HW;
            const float* __restrict v = y + p * HW;
            float* __restrict dst = gx + p * HW;
            for (int64_t i = 0; i < HW; ++i) dst[i] = g[i] * (v[i] > 0.0f ? pos : neg);
        }
    });
    return 0;
}

}  // extern "C"
