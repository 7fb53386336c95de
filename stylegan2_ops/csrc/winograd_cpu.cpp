// Winograd F(4x4, 3x3) input and output transforms for float32 CPU tensors.
//
// stylegan2_ops/winograd_native.py runs a 3x3 "same" convolution as
//   V = input_transform(x)     [36, C, T]   (T tiles of 4x4 outputs, each reading 6x6 inputs)
//   M = bmm(U, V)              [36, O, T]   (torch: the GEMMs; U the transformed weight)
//   y = output_transform(M)
// and this file does the two transforms in one pass each, with the tile gather, the zero border
// and the scatter folded in: each (image, channel, tile row) is read once into row buffers that
// stay in cache. With tensor ops (stylegan2_ops/winograd.py) the same transforms take six passes
// over buffers 2.25x the size of the activation.
//
// Plain C ABI, no torch headers: loaded with ctypes, it builds in about a second. Every pointer
// is a contiguous float32 array.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// Splits [0, n) over OpenMP threads. The library links libgomp.so.1, which resolves to the
// copy torch has already loaded, so this shares torch's thread pool; separate std::threads
// would compete with its workers, which spin for a while after each parallel region.
template <class F>
void parallel_for(int64_t n, int nthreads, F f) {
    const int64_t k = std::max<int64_t>(1, std::min<int64_t>(nthreads, n));
#pragma omp parallel for num_threads(k) schedule(static, 1)
    for (int64_t t = 0; t < k; ++t) f(n * t / k, n * (t + 1) / k);
}

// The exact matrices of stylegan2_ops/winograd.py's matrices(), as constants so that the
// compiler folds the zeros and ones (every entry is dyadic, so exact in float).
// tests/test_ops_winograd_native.py checks them against the Python ones (hd_wino_matrices).
template <int A> struct Mat;
template <> struct Mat<6> {  // F(4x4, 3x3), points 0, 1, -1, 1/2, -2, inf
    static constexpr float bt[6][6] = {
        {1, -1.5f, -2, 1.5f, 1, 0}, {0, -1, 0.5f, 2.5f, 1, 0}, {0, 1, -2.5f, 0.5f, 1, 0},
        {0, -2, -1, 2, 1, 0},       {0, 0.5f, -1, -0.5f, 1, 0}, {0, 1, -1.5f, -2, 1.5f, 1}};
    static constexpr float at[4][6] = {
        {1, 1, 1, 1, 1, 0}, {0, 1, -1, 0.5f, -2, 0}, {0, 1, 1, 0.25f, 4, 0}, {0, 1, -1, 0.125f, -8, 1}};
};

// out[i][j] = sum_r c[i][r] in[r][j] for i < NOUT, r < A, j < n (input rows in_stride apart,
// output rows n apart): one of the transforms' 1-D steps, over n consecutive positions j.
template <int A, int NOUT, class Coef>
void combine_rows(const Coef& c, const float* __restrict in, int64_t in_stride, float* __restrict out, int64_t n) {
    for (int64_t j = 0; j < n; ++j) {
        float d[A];
#pragma GCC unroll 8
        for (int r = 0; r < A; ++r) d[r] = in[r * in_stride + j];
#pragma GCC unroll 8
        for (int i = 0; i < NOUT; ++i) {
            float acc = 0.0f;
#pragma GCC unroll 8
            for (int r = 0; r < A; ++r) acc += c[i][r] * d[r];
            out[i * n + j] = acc;
        }
    }
}

// out[q * L + t] = in[t * m + q]: a row split into its m phases (and back), so that the
// transforms run over consecutive tiles.
template <int m>
void deinterleave(const float* __restrict in, float* __restrict out, int64_t L) {
    for (int64_t t = 0; t < L; ++t)
#pragma GCC unroll 8
        for (int q = 0; q < m; ++q) out[q * L + t] = in[t * m + q];
}

template <int m>
void interleave(const float* __restrict in, float* __restrict out, int64_t L) {
    for (int64_t t = 0; t < L; ++t)
#pragma GCC unroll 8
        for (int q = 0; q < m; ++q) out[t * m + q] = in[q * L + t];
}

// GCC/Clang vector extensions, for the one loop that GCC 12 will not vectorize by itself
// (along_tiles: "no vectype for stmt"); they lower to whatever SIMD the target has.
typedef float vec8 __attribute__((vector_size(32)));

inline vec8 load8(const float* p) {
    vec8 r;
    std::memcpy(&r, p, sizeof(r));
    return r;
}

inline void store8(float* p, vec8 v) { std::memcpy(p, &v, sizeof(v)); }

// v[k * kstride + t] = sum_s B^T[k][s] row[s % m][t + s / m] for the tiles t of a deinterleaved
// row (its m parts L apart).
template <int A>
void along_tiles(const float* __restrict row, int64_t L, float* __restrict v, int64_t kstride, int64_t tw) {
    constexpr int m = A - 2;
    constexpr auto& c = Mat<A>::bt;
    int64_t t = 0;
    for (; t + 8 <= tw; t += 8) {
        vec8 d[A];
#pragma GCC unroll 8
        for (int s = 0; s < A; ++s) d[s] = load8(row + (s % m) * L + s / m + t);
#pragma GCC unroll 8
        for (int k = 0; k < A; ++k) {
            vec8 acc = d[0] * c[k][0];
#pragma GCC unroll 8
            for (int s = 1; s < A; ++s) acc += d[s] * c[k][s];
            store8(v + k * kstride + t, acc);
        }
    }
    for (; t < tw; ++t) {
        float d[A];
        for (int s = 0; s < A; ++s) d[s] = row[(s % m) * L + s / m + t];
        for (int k = 0; k < A; ++k) {
            float acc = 0.0f;
            for (int s = 0; s < A; ++s) acc += c[k][s] * d[s];
            v[k * kstride + t] = acc;
        }
    }
}

// The transforms work on tile rows stored "deinterleaved", buf[q][t] = row[t * m + q], so that
// every inner loop runs over consecutive tiles t with unit stride and vectorizes; each loop
// body reads A values and writes A results, the A x A products unrolled against constants.

// V[(i * A + k), ci, tile] for tiles of tile rows [t0, t1) of images [n0, n1).
template <int A>
void input_transform(const float* x, float* v, int64_t C, int64_t H, int64_t W, int64_t n0, int64_t n1,
                     int64_t t0, int64_t t1, int64_t tw, const float* scale, int nthreads) {
    constexpr int m = A - 2;
    const int64_t nb = n1 - n0, nt = t1 - t0;
    const int64_t T = nb * nt * tw, ps = C * T;  // ps: between the A*A planes of V
    const int64_t L = tw + 1;  // deinterleaved length: tile t reads row[t * m + s], s < A <= 2m
    const int64_t RL = m * L;  // one deinterleaved row
    parallel_for(nb * C * nt, nthreads, [&](int64_t begin, int64_t end) {
        std::vector<float> rows_(A * RL), cols_(A * RL), line_(RL);
        float* __restrict rows = rows_.data();
        float* __restrict cols = cols_.data();
        float* __restrict line = line_.data();
        for (int64_t item = begin; item < end; ++item) {
            const int64_t ty = item % nt, c = (item / nt) % C, bi = item / (nt * C);
            const int64_t n = n0 + bi;
            const float* plane = x + (n * C + c) * H * W;
            const float s = scale ? scale[n * C + c] : 1.0f;
            // 1. the tile row's A input rows with their zero border, deinterleaved:
            //    rows[r][q][t] = x[row0 + r][t * m + q - 1]
            const int64_t row0 = (t0 + ty) * m - 1;
            for (int r = 0; r < A; ++r) {
                float* dst = rows + r * RL;
                const int64_t lr = row0 + r;
                if (lr < 0 || lr >= H) {
                    std::fill(dst, dst + RL, 0.0f);
                    continue;
                }
                const float* src = plane + lr * W;
                line[0] = 0.0f;
                for (int64_t j = 0; j < W; ++j) line[j + 1] = src[j] * s;
                std::fill(line + W + 1, line + RL, 0.0f);
                deinterleave<m>(line, dst, L);
            }
            // 2. down the columns: cols[i] = sum_r B^T[i][r] rows[r]
            combine_rows<A, A>(Mat<A>::bt, rows, RL, cols, RL);
            // 3. along each tile's row: V[i * A + k][ci][tile] = sum_s B^T[k][s] cols[i][s % m][t + s / m]
            const int64_t tile0 = (bi * nt + ty) * tw;
            for (int i = 0; i < A; ++i)
                along_tiles<A>(cols + i * RL, L, v + (int64_t)(i * A) * ps + c * T + tile0, ps, tw);
        }
    });
}

// y from M[(i * A + k), co, tile]: y = A^T M A per tile, written where the tile lies inside H x W.
template <int A>
void output_transform(const float* mm, float* y, int64_t O, int64_t H, int64_t W, int64_t n0, int64_t n1,
                      int64_t t0, int64_t t1, int64_t tw, int nthreads) {
    constexpr int m = A - 2;
    const int64_t nb = n1 - n0, nt = t1 - t0;
    const int64_t T = nb * nt * tw, ps = O * T;
    parallel_for(nb * O * nt, nthreads, [&](int64_t begin, int64_t end) {
        std::vector<float> u_(A * m * tw), row_(m * tw), line_(m * tw);
        float* __restrict u = u_.data();
        float* __restrict row = row_.data();
        float* __restrict line = line_.data();
        for (int64_t item = begin; item < end; ++item) {
            const int64_t ty = item % nt, o = (item / nt) % O, bi = item / (nt * O);
            const int64_t n = n0 + bi, tile0 = (bi * nt + ty) * tw;
            // 1. along each tile's row, deinterleaved: u[i][q][t] = sum_k A^T[q][k] M[i * A + k][co][tile0 + t]
            for (int i = 0; i < A; ++i)
                combine_rows<A, m>(Mat<A>::at, mm + (int64_t)(i * A) * ps + o * T + tile0, ps, u + i * m * tw, tw);
            // 2. down the columns, then interleaved into y
            float* plane = y + (n * O + o) * H * W;
            for (int p = 0; p < m; ++p) {
                const int64_t lr = (t0 + ty) * m + p;
                if (lr >= H) break;
                combine_rows<A, 1>(Mat<A>::at + p, u, m * tw, row, m * tw);
                interleave<m>(row, line, tw);
                std::memcpy(plane + lr * W, line, W * sizeof(float));
            }
        }
    });
}

bool valid(int64_t C, int64_t H, int64_t W, int64_t n0, int64_t n1, int64_t t0, int64_t t1, int64_t tw) {
    const int64_t th = (H + 3) / 4;
    return C > 0 && H > 0 && W > 0 && 0 <= n0 && n0 < n1 && 0 <= t0 && t0 < t1 && t1 <= th && tw == (W + 3) / 4;
}

}  // namespace

extern "C" {

// One chunk of a conv: images [n0, n1), tile rows [t0, t1) (tw tiles per row). v and mm hold
// [36, C or O, (n1 - n0) * (t1 - t0) * tw]. scale: [N, C] input multipliers, or null.
// Return 0, or -1 for arguments outside what winograd_native.py ever passes.
int hd_wino_input(const float* x, float* v, int64_t C, int64_t H, int64_t W, int64_t n0, int64_t n1, int64_t t0,
                  int64_t t1, int64_t tw, const float* scale, int nthreads) {
    if (!valid(C, H, W, n0, n1, t0, t1, tw)) return -1;
    input_transform<6>(x, v, C, H, W, n0, n1, t0, t1, tw, scale, nthreads);
    return 0;
}

int hd_wino_output(const float* mm, float* y, int64_t O, int64_t H, int64_t W, int64_t n0, int64_t n1, int64_t t0,
                   int64_t t1, int64_t tw, int nthreads) {
    if (!valid(O, H, W, n0, n1, t0, t1, tw)) return -1;
    output_transform<6>(mm, y, O, H, W, n0, n1, t0, t1, tw, nthreads);
    return 0;
}

// B^T [6][6] and A^T [4][6] as compiled in.
void hd_wino_matrices(float* bt, float* at) {
    std::memcpy(bt, Mat<6>::bt, sizeof(Mat<6>::bt));
    std::memcpy(at, Mat<6>::at, sizeof(Mat<6>::at));
}

}  // extern "C"
