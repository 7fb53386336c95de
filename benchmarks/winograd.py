"""Winograd F(4x4, 3x3) against F.conv2d for the 3x3 convs of a 256 px generator, on the CPU.

Batch 4, float32, padding 1. The Winograd time includes its weight transform (done on every
call, as in the generator). The two run interleaved in one process, so a busy machine slows
both alike; times are medians.

    python benchmarks/winograd.py [--repeats 7] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as the CLI does

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (in channels, out channels, size): the stride-1 convs of the 256 px, channel-multiplier-2 generator
SHAPES = [(512, 512, 8), (512, 512, 16), (512, 512, 32), (512, 512, 64), (256, 256, 128), (128, 128, 256)]


def main() -> None:
    import torch
    import torch.nn.functional as F

    from stylegan2_ops.cpu import winograd

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, median of {args.repeats}")
    print("| in -> out @ size | GFLOP (direct) | conv2d ms | Winograd ms | speedup | rel. error conv2d | rel. error Winograd |")
    print("|---|---|---|---|---|---|---|")
    for c, o, h in SHAPES:
        x = torch.randn(args.batch, c, h, h)
        w = torch.randn(o, c, 3, 3) / (9 * c) ** 0.5
        fns = {"direct": lambda: F.conv2d(x, w, padding=1), "winograd": lambda: winograd.conv3x3(x, w)}
        exact = F.conv2d(x.double(), w.double(), padding=1)
        err = {k: ((f().double() - exact).norm() / exact.norm()).item() for k, f in fns.items()}
        times = {k: [] for k in fns}
        for _ in range(args.repeats):
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        gflop = 2 * 9 * args.batch * c * o * h * h / 1e9
        print(f"| {c} -> {o} @ {h} | {gflop:.1f} | {med['direct'] * 1e3:.1f} | {med['winograd'] * 1e3:.1f} | "
              f"{med['direct'] / med['winograd']:.2f}x | {err['direct']:.1e} | {err['winograd']:.1e} |")


if __name__ == "__main__":
    main()
