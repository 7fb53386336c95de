"""The image side's speed and memory: an inversion step, and a one-shot adaptation step.

Configs as in benchmarks/adapt.py (random weights, real shapes): ``tiny`` (the tests' 32 px
generator and tiny CLIP), ``256-b32`` (256 px config-f generator, ViT-B/32), ``1024-b32b16`` (the
FFHQ shapes and the paper's two CLIP models). LPIPS runs on a random VGG16 backbone: the same
network and cost as the ImageNet one, with no download.

Columns: ``invert step`` is one Adam step of ``hd.invert`` for --photos photos (generator forward
and backward to W+, LPIPS at 256 px, the P-norm), ``steps/s`` its rate, ``invert peak MB`` the
peak memory growth over a step; ``one-shot step`` one step of ``hd.adapt_image`` (batch 4) with
its peak. Each config runs in a fresh process; times are medians over --repeats after a warm-up.

    python benchmarks/image.py --configs tiny 256-b32
    python benchmarks/image.py --configs 1024-b32b16 --device cuda
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as the hyperdomain command does

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from adapt import (CONFIGS, RssSampler, _mem_now, _mem_peak, _rss, build_clip, build_generator,  # noqa: E402
                   run_in_children, timed)


def _peak(fn, device) -> float:
    base = _mem_now(device) if device.type == "cuda" else _rss(device)
    with RssSampler() as sampler:
        fn()
    return ((_mem_peak(device) if device.type == "cuda" else sampler.peak) - base) / 2**20


def measure(config: str, photos: int, repeats: int, device_name: str) -> dict:
    """Runs in the child process."""
    import numpy as np
    import torch
    from PIL import Image

    import hyperdomain as hd
    from hyperdomain.image.inversion import _optimise, latent_pca
    from hyperdomain.image.perceptual import load_lpips

    device = torch.device(device_name)
    size, clips = CONFIGS[config]
    G = build_generator(size, device)
    lpips = load_lpips(device, "random")
    pca = latent_pca(G, 2000, cache=False)
    g = np.random.default_rng(0)
    imgs = [Image.fromarray(np.uint8(g.integers(0, 255, (size, size, 3)))) for _ in range(photos)]

    def invert_steps(n):
        _optimise(G, imgs, hd.InversionConfig(steps=n, pca_samples=2000), lpips, pca, False, None)

    invert_steps(1)  # warm-up
    # n steps minus 1 step: the per-step time without the setup (targets, optimizer)
    t_invert = max(timed(lambda: invert_steps(3), repeats, device) - timed(lambda: invert_steps(1), repeats, device),
                   0) / 2
    invert_peak = _peak(lambda: invert_steps(1), device)

    encoders = [build_clip(c, device) for c in clips]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HYPERDOMAIN_HOME"] = tmp  # the reference's inversion is cached there, not in the user's folder
        imgs[0].resize((max(size, 64), max(size, 64))).save(Path(tmp) / "ref.png")
        from hyperdomain.training.one_shot import ImageAdaptConfig, _ImageRun

        cfg = ImageAdaptConfig(image=str(Path(tmp) / "ref.png"), clip=tuple(e.label for e in encoders),
                               inversion=hd.InversionConfig(steps=1, pca_samples=2000), sample_every=0,
                               checkpoint_every=0)
        run = _ImageRun(G, encoders, cfg, None, lpips, None)
    run._one_step()  # warm-up
    t_oneshot = timed(run._one_step, repeats, device)
    oneshot_peak = _peak(run._one_step, device)
    return {"config": config, "device": device_name, "photos": photos, "invert_step_s": t_invert,
            "invert_steps_per_s": 1 / max(t_invert, 1e-9), "invert_peak_mb": invert_peak,
            "oneshot_step_s": t_oneshot, "oneshot_peak_mb": oneshot_peak, "torch_threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["tiny", "256-b32"], choices=sorted(CONFIGS))
    ap.add_argument("--photos", type=int, default=1, help="Photos inverted together.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeats < 1 or args.photos < 1:
        print(f"image.py: --repeats and --photos must be at least 1", file=sys.stderr)
        raise SystemExit(2)
    if args.child:
        print(json.dumps(measure(args.child, args.photos, args.repeats, args.device)))
        return
    run_in_children(__file__, args.configs, ["--photos", str(args.photos), "--repeats", str(args.repeats),
                                             "--device", args.device],
                    ["config", "device", "photos", "invert step s", "steps/s", "invert peak MB", "one-shot step s",
                     "one-shot peak MB"],
                    lambda c, r: [c, r["device"], r["photos"], f"{r['invert_step_s']:.3f}",
                                  f"{r['invert_steps_per_s']:.2f}", f"{r['invert_peak_mb']:.0f}",
                                  f"{r['oneshot_step_s']:.3f}", f"{r['oneshot_peak_mb']:.0f}"])


if __name__ == "__main__":
    main()
