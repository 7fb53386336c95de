// The C ABI of the CPU library: every exported function, declared once.
//
// Each *_cpu.cpp includes this header, so the C++ compiler rejects a definition whose types
// disagree with its declaration here (two C-linkage functions of one name cannot differ), and
// -Werror=missing-declarations rejects an exported function missing here. cpu_library.py reads
// this file for the ctypes signatures and checks its Python wrappers against it, so it keeps to
// a restricted style that cpu_library.parse_header() accepts and nothing else:
//   int hd_name(type name, ...);
// with the types const float*, float*, int64_t, int and float, and HD_OPTIONAL before a pointer
// that may be NULL (its wrapper takes None). Every float pointer is a contiguous float32 array.
// Each function returns 0, or -1 for arguments outside what it supports.
#pragma once

#include <stdint.h>

#define HD_OPTIONAL

#ifdef __cplusplus
extern "C" {
#endif

// winograd_cpu.cpp

// One chunk of a Winograd conv's input transform: images [n0, n1), tile rows [t0, t1) of a
// logical OH x OW grid (tw tiles per row) read from x [N, C, H, W] (its stride^2 phases, tile
// row ty from logical row 4 ty + offset); A is 6 (F(4x4, 3x3)) or 5 (F(4x4, 2x2)). v: [A*A,
// C * stride^2, tiles]. scale: [N, C] input multipliers, or NULL.
int hd_wino_input(const float* x, float* v, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW, int64_t n0,
                  int64_t n1, int64_t t0, int64_t t1, int64_t tw, int stride, int offset, int A,
                  HD_OPTIONAL const float* scale, int nthreads);

// Its output transform: y [N, O, H, W] (phase p of channel o written with stride) from mm
// [A*A, O * stride^2, tiles], for the same chunk.
int hd_wino_output(const float* mm, float* y, int64_t O, int64_t H, int64_t W, int64_t OH, int64_t OW, int64_t n0,
                   int64_t n1, int64_t t0, int64_t t1, int64_t tw, int stride, int A, int nthreads);

// The stride-2 convs' transformed weight: u [25, 4 O, C] (adjoint = 0) or [25, C, 4 O]
// (adjoint = 1) from w [O, C, 3, 3] and K [25, 4].
int hd_wino_phase_weight(const float* w, const float* K, float* u, int64_t O, int64_t C, int adjoint, int nthreads);

// B^T [A, A] and A^T [4, A] as compiled in, for A = 6 or 5.
int hd_wino_matrices(int A, float* bt, float* at);

// fir_cpu.cpp

// y [planes, H + py0 + py1 - fh + 1, W + px0 + px1 - fw + 1]: x [planes, H, W] zero-padded
// (negative pads crop) and correlated with fy [fh] down and fx [fw] across (at most 64 taps each).
int hd_fir_separable(const float* x, float* y, int64_t planes, int64_t H, int64_t W, const float* fy, int64_t fh,
                     const float* fx, int64_t fw, int64_t px0, int64_t px1, int64_t py0, int64_t py1, int nthreads);

// act_cpu.cpp

// y [N, O, HW] = lrelu(x * dc [N, O] + add + bias [O]) * gain, add [HW] per image advancing
// add_stride floats (0: one plane for all) or NULL. y may be x.
int hd_demod_bias_lrelu(const float* x, const float* dc, HD_OPTIONAL const float* add, int64_t add_stride,
                        const float* bias, float* y, int64_t N, int64_t O, int64_t HW, float alpha, float gain,
                        int nthreads);

// gx [N, O, HW] = gy * dc [N, O] * (y > 0 ? gain : alpha * gain), from the output y.
int hd_demod_bias_lrelu_grad(const float* gy, const float* y, const float* dc, float* gx, int64_t N, int64_t O,
                             int64_t HW, float alpha, float gain, int nthreads);

#ifdef __cplusplus
}  // extern "C"
#endif
