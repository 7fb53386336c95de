"""HyperDomainNet training speed and memory: seconds per step and peak memory of ``train-hyper``.

Configs as in ``benchmarks/adapt.py`` (random weights, real shapes): ``tiny``, ``256-b32``,
``1024-b32b16`` (the paper's FFHQ setup: 1024 px generator, ViT-B/32 + ViT-B/16 losses, ViT-B/32
input). The paper's defaults otherwise: batch 8, direction + 0.4 tt_direction, convex hull,
resampling at cosine 0.95, crop 0.8, the ImageNet templates, hidden width 512 (3 backbone
blocks, 1 per head). The step is the trainer's own (draws, hypernetwork forward, generator source
and adapted passes, CLIP encodes, backward, Adam). Each config runs in a fresh subprocess; peak
memory is the peak RSS growth over the steps (CPU) or ``torch.cuda.max_memory_allocated``
growth (GPU). Times are medians over --repeats steps after one warm-up step.

    python benchmarks/hyper.py --configs tiny 256-b32
    python benchmarks/hyper.py --configs 1024-b32b16 --device cuda
"""
from __future__ import annotations

import argparse
import os
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

# As the CLI does (cli/main.py): CPU tensors on transparent huge pages, for both paths alike.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from adapt import (CONFIGS, RssSampler, _mem_now, _mem_peak, _rss, _sync, build_clip,  # noqa: E402
                   build_generator, run_in_children)


def measure(config: str, batch: int, repeats: int, device_name: str, prompts: int) -> dict:
    import torch

    from hyperdomain.guidance.domain_lists import builtin_domain_list, read_domain_list
    from hyperdomain.training.hyper import HyperTrainConfig, _HyperRun

    device = torch.device(device_name)
    size, clips = CONFIGS[config]
    G = build_generator(size, device)
    encoders = [build_clip(c, device) for c in clips]
    listing = read_domain_list(builtin_domain_list("train"))[:prompts]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "domains.txt"
        path.write_text("".join(d.target + "\n" for d in listing))
        t = time.perf_counter()
        cfg = HyperTrainConfig(domains=str(path), test_domains=None, clip=tuple(e.label for e in encoders),
                               input_clip=encoders[0].label,
                               batch=batch, sample_every=0, checkpoint_every=0,
                               width=64 if config == "tiny" else 512)
        run = _HyperRun(G, cfg, encoders, encoders[0], None, _dist(device))
        setup_s = time.perf_counter() - t
    run._one_step()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        run._one_step()
        _sync(device)
        times.append(time.perf_counter() - t)
    base = _mem_now(device) if device.type == "cuda" else _rss(device)
    with RssSampler() as sampler:  # one more step for memory (the sampler thread would skew the timings)
        run._one_step()
    peak = (_mem_peak(device) if device.type == "cuda" else sampler.peak) - base
    params = sum(p.numel() for p in run.net.parameters())
    return {"config": config, "device": device_name, "batch": batch, "step_s": statistics.median(times),
            "peak_mb": peak / 2**20, "hypernet_params": params, "setup_s": setup_s, "prompts": len(listing)}


def _dist(device):
    from hyperdomain.distributed import DistInfo

    return DistInfo(device=device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["tiny", "256-b32"], choices=sorted(CONFIGS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=16, help="Training prompts (text-table size; not per-step cost).")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.batch, args.repeats, args.device, args.prompts)))
        return
    run_in_children(__file__, args.configs, ["--batch", str(args.batch), "--repeats", str(args.repeats),
                                             "--device", args.device, "--prompts", str(args.prompts)],
                    ["config", "device", "batch", "step s", "peak MB", "hypernet params", "setup s (text table)"],
                    lambda c, r: [c, r["device"], r["batch"], f"{r['step_s']:.3f}", f"{r['peak_mb']:.0f}",
                                  f"{r['hypernet_params'] / 1e6:.1f}M", f"{r['setup_s']:.1f} ({r['prompts']} prompts)"])


if __name__ == "__main__":
    main()
