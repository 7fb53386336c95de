// Winograd F(4x4, 3x3) and F(4x4, 2x2) input and output transforms for float32 CPU tensors.
//
// stylegan2_ops/winograd_native.py runs a convolution as
//   V = input_transform(x)     [A*A, C, T]   (T tiles of 4x4 outputs, each reading AxA inputs)
//   M = bmm(U, V)              [A*A, O, T]   (torch: the GEMMs; U the transformed weight)
//   y = output_transform(M)
// and this file does the two transforms in one pass each, with the tile gather, the zero border
// and the scatter folded in: each (image, channel, tile row) is read once into row buffers that
// stay in cache. With tensor ops (stylegan2_ops/winograd.py) the same transforms take six passes
// over buffers 2.25x the size of the activation.
//
// A = 6 is F(4x4, 3x3), the stride-1 3x3 conv. A = 5 is F(4x4, 2x2), for the stride-2 ones: a
// stride-2 transposed 3x3 conv is four 2x2 convs of the same input, one per output phase
// (their V shared), and its adjoint, the stride-2 3x3 conv, reads four phases of its input.
// So both transforms can read or write a "phased" tensor: logical position (m, n) of phase
// (a, b) is physical (stride * m + a, stride * n + b).
//
// Plain C ABI (declared in cpu_kernels.h), no torch headers: loaded with ctypes, it builds in
// about a second. Every pointer is a contiguous float32 array.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_kernels.h"
#include "cpu_parallel.h"

namespace {

// The exact matrices of stylegan2_ops/winograd.py's matrices(), as constants so that the
// compiler folds the zeros and ones (every entry is dyadic or an integer, so exact in float).
// tests/test_ops_winograd_native.py checks them against the Python ones (hd_wino_matrices).
template <int A> struct Mat;
template <> struct Mat<5> {  // F(4x4, 2x2), points 0, 1, -1, 2, inf
    static constexpr float bt[5][5] = {
        {2, -1, -2, 1, 0}, {0, -2, -1, 1, 0}, {0, 2, -3, 1, 0}, {0, -1, 0, 1, 0}, {0, 2, -1, -2, 1}};
    static constexpr float at[4][5] = {{1, 1, 1, 1, 0}, {0, 1, -1, 2, 0}, {0, 1, 1, 4, 0}, {0, 1, -1, 8, 1}};
};
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

constexpr int TILE = 4;  // outputs per tile side, for both A

// v[k * kstride + t] = sum_s B^T[k][s] row[s % TILE][t + s / TILE] for the tiles t of a
// deinterleaved row (its TILE parts L apart).
template <int A>
void along_tiles(const float* __restrict row, int64_t L, float* __restrict v, int64_t kstride, int64_t tw) {
    constexpr int m = TILE;
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

// Where the tiles read and write. The tiles cover a logical OH x OW grid (tw tiles per row);
// tile row ty reads logical rows ty * TILE + offset + r, r < A. A tensor of P = stride^2 phases
// holds logical (m, n) of phase p = a * stride + b at physical (stride * m + a, stride * n + b)
// of its H x W planes; outside them it reads as zero.
struct Layout {
    int64_t H, W, OH, OW, n0, n1, t0, t1, tw;
    int stride, offset;
    int64_t phases() const { return stride * stride; }
    int64_t tiles() const { return (n1 - n0) * (t1 - t0) * tw; }
};

// V[(i * A + k), c * P + p, tile] for tiles of tile rows [t0, t1) of images [n0, n1): every
// phase p of every channel c of x, times scale[n, c] if given.
template <int A>
void input_transform(const float* x, float* v, int64_t C, const Layout& g, const float* scale, int nthreads) {
    constexpr int m = TILE;
    const int64_t nb = g.n1 - g.n0, nt = g.t1 - g.t0, P = g.phases(), tw = g.tw;
    const int64_t T = g.tiles(), ps = C * P * T;  // ps: between the A*A planes of V
    const int64_t L = tw + 1;  // deinterleaved length: tile t reads row[t * m + s], s < A <= 2m
    const int64_t RL = m * L;  // one deinterleaved row
    hd::parallel_for(nb * C * P * nt, nthreads, [&](int64_t begin, int64_t end) {
        std::vector<float> rows_(A * RL), cols_(A * RL), line_(RL);
        float* __restrict rows = rows_.data();
        float* __restrict cols = cols_.data();
        float* __restrict line = line_.data();
        for (int64_t item = begin; item < end; ++item) {
            const int64_t ty = item % nt, cp = (item / nt) % (C * P), bi = item / (nt * C * P);
            const int64_t c = cp / P, a = (cp % P) / g.stride, b = cp % g.stride;
            const int64_t n = g.n0 + bi;
            const float* plane = x + (n * C + c) * g.H * g.W;
            const float s = scale ? scale[n * C + c] : 1.0f;
            // the logical columns q + offset, q < RL, that lie inside the plane: [q0, q1)
            const int64_t q0 = std::max<int64_t>(0, -g.offset);
            const int64_t q1 = std::max<int64_t>(q0, std::min<int64_t>(RL, (g.W - b + g.stride - 1) / g.stride - g.offset));
            // 1. the tile row's A input rows with their zero border, deinterleaved:
            //    rows[r][q % m][q / m] = x[logical row0 + r][logical column q + offset]
            const int64_t row0 = (g.t0 + ty) * m + g.offset;
            for (int r = 0; r < A; ++r) {
                float* dst = rows + r * RL;
                const int64_t lr = row0 + r, pr = g.stride * lr + a;
                if (lr < 0 || pr >= g.H || q0 >= q1) {
                    std::fill(dst, dst + RL, 0.0f);
                    continue;
                }
                const float* src = plane + pr * g.W + g.stride * (q0 + g.offset) + b;
                std::fill(line, line + q0, 0.0f);
                if (g.stride == 1)
                    for (int64_t q = q0; q < q1; ++q) line[q] = src[q - q0] * s;
                else
                    for (int64_t q = q0; q < q1; ++q) line[q] = src[(q - q0) * g.stride] * s;
                std::fill(line + q1, line + RL, 0.0f);
                deinterleave<m>(line, dst, L);
            }
            // 2. down the columns: cols[i] = sum_r B^T[i][r] rows[r]
            combine_rows<A, A>(Mat<A>::bt, rows, RL, cols, RL);
            // 3. along each tile's row: V[i * A + k][cp][tile] = sum_s B^T[k][s] cols[i][s % m][t + s / m]
            const int64_t tile0 = (bi * nt + ty) * tw;
            for (int i = 0; i < A; ++i)
                along_tiles<A>(cols + i * RL, L, v + (int64_t)(i * A) * ps + cp * T + tile0, ps, tw);
        }
    });
}

// y from M[(i * A + k), o * P + p, tile]: y = A^T M A per tile, written to phase p of channel o
// where the tile lies inside the logical OH x OW grid.
template <int A>
void output_transform(const float* mm, float* y, int64_t O, const Layout& g, int nthreads) {
    constexpr int m = TILE;
    const int64_t nb = g.n1 - g.n0, nt = g.t1 - g.t0, P = g.phases(), tw = g.tw;
    const int64_t T = g.tiles(), ps = O * P * T;
    hd::parallel_for(nb * O * nt, nthreads, [&](int64_t begin, int64_t end) {
        std::vector<float> u_(A * m * tw), row_(m * tw), line_(m * tw);
        float* __restrict u = u_.data();
        float* __restrict row = row_.data();
        float* __restrict line = line_.data();
        for (int64_t item = begin; item < end; ++item) {
            const int64_t ty = item % nt, o = (item / nt) % O, bi = item / (nt * O);
            const int64_t n = g.n0 + bi, tile0 = (bi * nt + ty) * tw;
            float* plane = y + (n * O + o) * g.H * g.W;
            for (int64_t p = 0; p < P; ++p) {  // all phases of one channel: one thread writes these rows
                const int64_t a = p / g.stride, b = p % g.stride;
                const float* mp = mm + (o * P + p) * T + tile0;
                // 1. along each tile's row, deinterleaved: u[i][q][t] = sum_k A^T[q][k] M[i * A + k][op][tile0 + t]
                for (int i = 0; i < A; ++i) combine_rows<A, m>(Mat<A>::at, mp + (int64_t)(i * A) * ps, ps, u + i * m * tw, tw);
                // 2. down the columns, then interleaved into y
                for (int r = 0; r < m; ++r) {
                    const int64_t lr = (g.t0 + ty) * m + r;
                    if (lr >= g.OH) break;
                    combine_rows<A, 1>(Mat<A>::at + r, u, m * tw, row, m * tw);
                    interleave<m>(row, line, tw);
                    float* dst = plane + (g.stride * lr + a) * g.W + b;
                    if (g.stride == 1)
                        std::memcpy(dst, line, g.OW * sizeof(float));
                    else
                        for (int64_t q = 0; q < g.OW; ++q) dst[q * g.stride] = line[q];
                }
            }
        }
    });
}

// The transformed weight of the stride-2 convs, from w [O][C][3][3]. Output phase p = 2a + b of
// the transposed conv is the 2x2 kernel P[i][j] = w[TAP[a][i]][TAP[b][j]] (tap 3: zero) on
// inputs (m - 1 + i, n - 1 + j); its adjoint reads the phases with the taps reversed. With
// K = kron(G, G) [25][4]: U[k][o * 4 + p][c] = sum_t K[k][t] P[t] (forward), or
// U[k][c][o * 4 + p] = sum_t K[k][t] P[3 - t] (adjoint).
void phase_weight(const float* w, const float* K, float* u, int64_t O, int64_t C, bool adjoint, int nthreads) {
    constexpr int TAP[2][2] = {{2, 0}, {3, 1}};
    constexpr int64_t BLOCK = 64;  // U entries computed per row before they are stored
    const int64_t rows = adjoint ? C : 4 * O, cols = adjoint ? 4 * O : C;  // of each of the 25 planes
    hd::parallel_for(rows, nthreads, [&](int64_t begin, int64_t end) {
        float buf[25][BLOCK];
        for (int64_t row = begin; row < end; ++row)
            for (int64_t col0 = 0; col0 < cols; col0 += BLOCK) {
                const int64_t nc = std::min(BLOCK, cols - col0);
                for (int64_t e = 0; e < nc; ++e) {
                    const int64_t col = col0 + e;
                    const int64_t op = adjoint ? col : row, c = adjoint ? row : col;
                    const int64_t o = op / 4, a = (op % 4) / 2, b = op % 2;
                    const float* k3 = w + (o * C + c) * 9;
                    float t[4];
                    for (int i = 0; i < 2; ++i)
                        for (int j = 0; j < 2; ++j) {
                            const int ky = TAP[a][i], kx = TAP[b][j];
                            t[adjoint ? 3 - (2 * i + j) : 2 * i + j] = (ky == 3 || kx == 3) ? 0.0f : k3[ky * 3 + kx];
                        }
                    for (int k = 0; k < 25; ++k)
                        buf[k][e] = K[k * 4] * t[0] + K[k * 4 + 1] * t[1] + K[k * 4 + 2] * t[2] + K[k * 4 + 3] * t[3];
                }
                for (int k = 0; k < 25; ++k)
                    std::memcpy(u + (k * rows + row) * cols + col0, buf[k], nc * sizeof(float));
            }
    });
}

// The tiles fit the grid, and every write lands inside the planes.
bool valid(int64_t C, const Layout& g, bool writes) {
    const int64_t th = (g.OH + TILE - 1) / TILE;
    const bool layout = C > 0 && g.OH > 0 && g.OW > 0 && g.H > 0 && g.W > 0 && 0 <= g.n0 && g.n0 < g.n1 &&
                        0 <= g.t0 && g.t0 < g.t1 && g.t1 <= th && g.tw == (g.OW + TILE - 1) / TILE &&
                        (g.stride == 1 || g.stride == 2) && -TILE <= g.offset && g.offset <= TILE;
    if (!layout || !writes) return layout;
    return g.stride * (g.OH - 1) + g.stride - 1 < g.H && g.stride * (g.OW - 1) + g.stride - 1 < g.W;
}

}  // namespace

extern "C" {

// One chunk of a conv: images [n0, n1), tile rows [t0, t1) of a logical OH x OW grid (tw tiles
// per row; x or y has H x W planes, see Layout). A is 6 (F(4x4, 3x3)) or 5 (F(4x4, 2x2)).
// v holds [A*A, C * stride^2, tiles] and mm [A*A, O * stride^2, tiles]. scale: [N, C] input
// multipliers, or null. Return 0, or -1 for arguments outside what winograd_native.py passes.
int hd_wino_input(const float* x, float* v, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW, int64_t n0,
                  int64_t n1, int64_t t0, int64_t t1, int64_t tw, int stride, int offset, int A, const float* scale,
                  int nthreads) {
    const Layout g{H, W, OH, OW, n0, n1, t0, t1, tw, stride, offset};
    if (!valid(C, g, false)) return -1;
    if (A == 6) input_transform<6>(x, v, C, g, scale, nthreads);
    else if (A == 5) input_transform<5>(x, v, C, g, scale, nthreads);
    else return -1;
    return 0;
}

int hd_wino_output(const float* mm, float* y, int64_t O, int64_t H, int64_t W, int64_t OH, int64_t OW, int64_t n0,
                   int64_t n1, int64_t t0, int64_t t1, int64_t tw, int stride, int A, int nthreads) {
    const Layout g{H, W, OH, OW, n0, n1, t0, t1, tw, stride, 0};
    if (!valid(O, g, true)) return -1;
    if (A == 6) output_transform<6>(mm, y, O, g, nthreads);
    else if (A == 5) output_transform<5>(mm, y, O, g, nthreads);
    else return -1;
    return 0;
}

// U [25, 4 O, C] (adjoint = 0) or [25, C, 4 O] (adjoint = 1) from w [O, C, 3, 3] and K [25, 4];
// see phase_weight. 0, or -1 for empty sizes.
int hd_wino_phase_weight(const float* w, const float* K, float* u, int64_t O, int64_t C, int adjoint, int nthreads) {
    if (O < 1 || C < 1) return -1;
    phase_weight(w, K, u, O, C, adjoint != 0, nthreads);
    return 0;
}

// B^T [A][A] and A^T [4][A] as compiled in, for A = 6 or 5; 0, or -1 for another A.
int hd_wino_matrices(int A, float* bt, float* at) {
    if (A == 6) {
        std::memcpy(bt, Mat<6>::bt, sizeof(Mat<6>::bt));
        std::memcpy(at, Mat<6>::at, sizeof(Mat<6>::at));
    } else if (A == 5) {
        std::memcpy(bt, Mat<5>::bt, sizeof(Mat<5>::bt));
        std::memcpy(at, Mat<5>::at, sizeof(Mat<5>::at));
    } else {
        return -1;
    }
    return 0;
}

}  // extern "C"
