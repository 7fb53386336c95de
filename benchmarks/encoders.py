"""Photo encoders: the time of one encoder pass at 256 px (e4e, and ReStyle per iteration).

Random-weight networks of the released size (1024 px generator: 18 style layers; IR-SE50
backbone), eval mode, no grad, batch 1 by default. ReStyle's figure is one pass of the encoder on
photo + current image; a whole ReStyle iteration adds one render by the generator (timed by
``benchmarks/generator.py``), and an encode of ``n`` iterations is ``n`` passes and ``n - 1`` renders
plus the average image's. Times are medians over ``--repeats`` after one warm-up pass.

    python benchmarks/encoders.py                     # CPU, e4e and ReStyle-pSp / ReStyle-e4e
    python benchmarks/encoders.py --repeats 9 --batch 4 --device cuda
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def time_pass(kind: str, size: int, batch: int, repeats: int, device: str) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from hyperdomain.image.encoders import PhotoEncoder, default_config

    torch.manual_seed(0)
    enc = PhotoEncoder(default_config(kind, input_size=size)).to(device).eval()
    x = torch.rand(batch, enc.config.input_nc, size, size, device=device) * 2 - 1

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    times = []
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            enc.encoder(x)  # the warm-up pass, counted
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            enc.encoder(x)
            sync()
            times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in enc.encoder.parameters())
    return {"kind": kind, "median": statistics.median(times), "min": min(times), "gflop": fc.get_total_flops() / 1e9,
            "params": params}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", nargs="+", default=["e4e", "restyle-psp", "restyle-e4e"])
    ap.add_argument("--size", type=int, default=256, help="input side (the releases read 256)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import torch

    rows = [time_pass(k, args.size, args.batch, args.repeats, args.device) for k in args.kinds]
    print(f"device {args.device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
          f"input {args.batch} x {args.size}x{args.size}, median of {args.repeats}")
    print(f"{'encoder':<14} {'what':<22} {'median s':>9} {'min s':>8} {'GFLOP':>7} {'params M':>9}")
    for r in rows:
        what = "one pass" if r["kind"] == "e4e" else "one pass (per iter.)"
        print(f"{r['kind']:<14} {what:<22} {r['median']:>9.3f} {r['min']:>8.3f} {r['gflop']:>7.1f} "
              f"{r['params'] / 1e6:>9.1f}")


if __name__ == "__main__":
    main()
