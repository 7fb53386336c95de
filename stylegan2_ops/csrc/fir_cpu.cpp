// Separable FIR filtering with zero padding (upfirdn2d with up = down = 1) for float32 CPU
// tensors: the blur after every upsampling conv, and its adjoint. torch runs it as a depthwise
// conv2d on a padded copy, several times slower.
//
// Each plane is filtered along x one input row at a time into a ring of fh rows that stays in
// cache, then down y into the output row; the padding never exists in memory.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_kernels.h"
#include "cpu_parallel.h"

extern "C" {

// y[p][j][i] = sum_{a, b} fy[a] fx[b] xp[p][j + a][i + b], where xp is each of the `planes`
// H x W planes of x with px0, px1 zero columns and py0, py1 zero rows added (negative values
// crop). y has (H + py0 + py1 - fh + 1) x (W + px0 + px1 - fw + 1) planes. 0, or -1 for an
// empty output or a filter over 64 taps.
int hd_fir_separable(const float* x, float* y, int64_t planes, int64_t H, int64_t W, const float* fy, int64_t fh,
                     const float* fx, int64_t fw, int64_t px0, int64_t px1, int64_t py0, int64_t py1,
                     int nthreads) {
    const int64_t Wp = W + px0 + px1;
    const int64_t OH = H + py0 + py1 - fh + 1, OW = Wp - fw + 1;
    if (planes < 1 || H < 1 || W < 1 || OH < 1 || OW < 1 || fh < 1 || fw < 1 || fh > 64 || fw > 64) return -1;
    // the input columns that land inside the padded row: [c0, c1)
    const int64_t c0 = std::max<int64_t>(0, -px0), c1 = std::min<int64_t>(W, Wp - px0);
    hd::parallel_for(planes, nthreads, [&](int64_t begin, int64_t end) {
        std::vector<float> line_(Wp), ring_(fh * OW), zero_(OW, 0.0f);
        std::vector<const float*> rows(fh);
        float* __restrict line = line_.data();
        for (int64_t p = begin; p < end; ++p) {
            const float* plane = x + p * H * W;
            // padded row r filtered along x (a slot of the ring, or the zero row)
            auto filtered = [&](int64_t r) -> const float* {
                const int64_t src = r - py0;
                if (src < 0 || src >= H) return zero_.data();
                std::fill(line, line + Wp, 0.0f);
                if (c1 > c0) std::memcpy(line + c0 + px0, plane + src * W + c0, (c1 - c0) * sizeof(float));
                float* __restrict h = ring_.data() + (r % fh) * OW;
                const float f0 = fx[0];
                for (int64_t i = 0; i < OW; ++i) h[i] = f0 * line[i];
                for (int64_t b = 1; b < fw; ++b) {
                    const float fb = fx[b];
                    const float* __restrict s = line + b;
                    for (int64_t i = 0; i < OW; ++i) h[i] += fb * s[i];
                }
                return h;
            };
            for (int64_t a = 1; a < fh; ++a) rows[a] = filtered(a - 1);
            for (int64_t j = 0; j < OH; ++j) {
                std::copy(rows.begin() + 1, rows.end(), rows.begin());
                rows[fh - 1] = filtered(j + fh - 1);
                float* __restrict out = y + (p * OH + j) * OW;
                const float f0 = fy[0];
                const float* __restrict r0 = rows[0];
                for (int64_t i = 0; i < OW; ++i) out[i] = f0 * r0[i];
                for (int64_t a = 1; a < fh; ++a) {
                    const float fa = fy[a];
                    const float* __restrict ra = rows[a];
                    for (int64_t i = 0; i < OW; ++i) out[i] += fa * ra[i];
                }
            }
        }
    });
    return 0;
}

}  // extern "C"
