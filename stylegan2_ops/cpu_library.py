"""The C++ CPU kernels (``csrc/winograd_cpu.cpp``, ``fir_cpu.cpp``, ``act_cpu.cpp``), loaded with ctypes.

A plain shared library without torch headers, compiled on first use in a few seconds and cached
like the CUDA build (``_build.build_cpu_library``). It only speeds things up: without a C++
compiler ``available()`` is False and the callers run their tensor-op paths, silently;
``stylegan2_ops.status()["cpu_library"]`` says why.
"""
from __future__ import annotations

import ctypes

from . import _build

FUNCTIONS = ("hd_wino_input", "hd_wino_output", "hd_wino_phase_weight", "hd_wino_matrices", "hd_fir_separable",
             "hd_demod_bias_lrelu", "hd_demod_bias_lrelu_grad")


def _load():
    lib, info = _build.build_cpu_library()
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    for name in FUNCTIONS:
        getattr(lib, name).restype = i32
    # x, v, C, H, W, OH, OW, n0, n1, t0, t1, tw, stride, offset, A, scale, threads
    lib.hd_wino_input.argtypes = [ptr, ptr] + [i64] * 10 + [i32] * 3 + [ptr, i32]
    # mm, y, O, H, W, OH, OW, n0, n1, t0, t1, tw, stride, A, threads
    lib.hd_wino_output.argtypes = [ptr, ptr] + [i64] * 10 + [i32] * 3
    lib.hd_wino_phase_weight.argtypes = [ptr, ptr, ptr, i64, i64, i32, i32]  # w, K, u, O, C, adjoint, threads
    lib.hd_wino_matrices.argtypes = [i32, ptr, ptr]
    # x, y, planes, H, W, fy, fh, fx, fw, px0, px1, py0, py1, threads
    lib.hd_fir_separable.argtypes = [ptr, ptr] + [i64] * 3 + [ptr, i64] * 2 + [i64] * 4 + [i32]
    f32 = ctypes.c_float
    # x, dc, add, add_stride, bias, y, N, O, HW, alpha, gain, threads
    lib.hd_demod_bias_lrelu.argtypes = [ptr, ptr, ptr, i64, ptr, ptr] + [i64] * 3 + [f32, f32, i32]
    # gy, y, dc, gx, N, O, HW, alpha, gain, threads
    lib.hd_demod_bias_lrelu_grad.argtypes = [ptr] * 4 + [i64] * 3 + [f32, f32, i32]
    return lib, info


LIBRARY = _build.ExtensionLoader(_load, functions=FUNCTIONS, what="CPU kernel library", quiet=True)


def available() -> bool:
    return LIBRARY.get() is not None


def call(name: str, *args, about: str = "") -> None:
    """Calls library function ``name``; its nonzero return (arguments outside what our Python
    side ever passes) becomes a RuntimeError naming the function and ``about``."""
    if getattr(LIBRARY.get(required=True), name)(*args):
        raise RuntimeError(f"{name} rejected {about}")
