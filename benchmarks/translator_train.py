"""One step of `hyperdomain translator train --method paired`: a random generator renders the pairs on
the fly, the default U-Net learns them with L1 + LPIPS (a random VGG: the same cost as the real one).

    python benchmarks/translator_train.py --sizes 32 64 --repeats 5

Prints the median step time of each run (steps 3 and on: the first ones warm caches) and the
median over the runs. The generator is the tests' random one at each size (32 channels).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import hyperdomain as hd  # noqa: E402
from conftest import make_tiny_generator  # noqa: E402
from hyperdomain.image.perceptual import load_lpips  # noqa: E402
from hyperdomain.model.config import GeneratorConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    lpips = load_lpips(args.device, "random")
    for res in args.sizes:
        config = GeneratorConfig(resolution=res, style_dim=32, n_mlp=2, channels=(32,) * (res.bit_length() - 2))
        G = make_tiny_generator(config=config).to(args.device)
        v = torch.zeros(G.num_domain_params)
        v[:32] = -1.0
        domain = hd.Domain(v, G.domain_dims)
        runs = []
        for _ in range(args.repeats):
            times, last = [], [time.perf_counter()]

            def tick(step, values):
                now = time.perf_counter()
                times.append(now - last[0])
                last[0] = now

            hd.train_translator(G, domain, size=res, iters=args.iters, batch=args.batch, lpips=lpips, progress=False,
                                callback=tick, sample_every=0, checkpoint_every=0)
            runs.append(statistics.median(times[2:]))
        print(f"{res} px, batch {args.batch}: step {statistics.median(runs):.3f} s "
              f"(runs: {', '.join(f'{r:.3f}' for r in runs)})", flush=True)


if __name__ == "__main__":
    main()
