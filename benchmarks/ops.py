"""Time stylegan2_ops' CUDA kernels against the reference path (forward + backward).

    python benchmarks/ops.py [--dtype float16] [--iters 50]

Needs a CUDA GPU; prints one line per op and impl. No assertions: numbers, not tests.
"""

from __future__ import annotations

import argparse
import json

import torch

import stylegan2_ops as ops


def bench(fn, inputs, iters: int) -> float:
    """Milliseconds per forward + backward, after warm-up."""
    for _ in range(3):
        torch.autograd.grad(fn(*inputs).float().sum(), inputs)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        torch.autograd.grad(fn(*inputs).float().sum(), inputs)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    dt, dev = getattr(torch, args.dtype), "cuda"
    mk = lambda *s: torch.randn(*s, device=dev, dtype=dt, requires_grad=True)  # noqa: E731
    f = ops.setup_filter([1, 3, 3, 1], device=dev)
    cases = {
        "bias_act lrelu [16,512,64,64]": (lambda x, b, impl: ops.bias_act(x, b, act="lrelu", clamp=256, impl=impl),
                                          (mk(16, 512, 64, 64), mk(512))),
        "upfirdn2d up2 [16,512,64,64]": (lambda x, impl: ops.upfirdn2d(x, f, up=2, padding=[2, 1, 2, 1], gain=4,
                                                                        impl=impl), (mk(16, 512, 64, 64),)),
        "modulated_input [16,512,64,64]": (lambda x, s, d, impl: ops.modulated_input(x, s, d, impl=impl),
                                           (mk(16, 512, 64, 64), mk(16, 512), mk(16, 512))),
        "demod_coefficients [512,512,3,3] B=16": (lambda w, s, impl: ops.demod_coefficients(w, s, impl=impl),
                                                  (mk(512, 512, 3, 3), mk(16, 512))),
    }
    for name, (fn, inputs) in cases.items():
        for impl in ("ref", "cuda"):
            ms = bench(lambda *t: fn(*t, impl=impl), inputs, args.iters)
            print(f"{name:40s} {impl:4s} {ms:8.3f} ms fwd+bwd")
    print(json.dumps(ops.status()))


if __name__ == "__main__":
    main()
