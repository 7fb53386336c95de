"""Low-level StyleGAN2 ops: the modulated conv with the domain multiplier, fused bias +
activation, upfirdn2d, and the modulation's building blocks.

Each op has a plain-PyTorch reference path and fast paths: CUDA kernels (``csrc/``, compiled on
first use with CUDA tensors, see ``_build``) and, for float32 CPU tensors, the C++ CPU library.
``impl="auto"`` picks the fastest path for the tensors given; ``"ref"`` forces the reference;
``"cuda"`` requires the kernels. ``import stylegan2_ops`` needs neither nvcc nor ninja.
"""

from __future__ import annotations

import torch

from . import _build
from .cpu import library as cpu_library
from .bias_act import bias_act
from .modulated_conv import modulated_conv2d, pin_modulated_conv2d
from .modulation import demod_coefficients, modulated_input
from .upfirdn2d import blur_kernel, setup_filter, upfirdn2d

__all__ = ["modulated_conv2d", "pin_modulated_conv2d", "bias_act", "upfirdn2d", "setup_filter", "blur_kernel", "modulated_input",
           "demod_coefficients", "status"]


def status() -> dict:
    """What was built, where and with which flags, or why not (a JSON-able dict).

    ``state`` is "not_attempted" (no CUDA tensor has reached an op yet), "ok" or "failed"
    (``error`` says why); ``strict`` reflects ``HYPERDOMAIN_OPS_STRICT``. ``cpu_library`` is
    the same for the C++ CPU kernels (``cpu_library``), once a CPU op has used them, with the
    ``target`` they were built for ("native" or "portable", ``HYPERDOMAIN_CPU_ARCH``) and
    ``built_for`` (the CPU model and its vector extensions, or the baseline).
    """
    return {**_build.LOADER.status(), "cuda_available": torch.cuda.is_available(),
            "cache_root": str(_build.default_cache_root()), "cpu_library": cpu_library.LIBRARY.status()}
