"""Translators: ENOT against NOT on Gaussians, and a translator's throughput against inversion + render.

    python benchmarks/translator.py gaussians [--dims 16 --seeds 5 ...]     # benchmarks/translator_ot.py's table
    python benchmarks/translator.py throughput --resolution 256             # CPU
    python benchmarks/translator.py throughput --resolution 1024 --device cuda --batch 8

``gaussians`` runs ``benchmarks/translator_ot.py`` (its options pass through): wall and CPU time
until ENOT's and NOT's maps reach an L2-UVP threshold on problems with a closed-form answer.

``throughput`` compares the two roads from a photo to its domain image at one resolution, random
weights (the cost does not depend on their values): a translator (the trainer's default U-Net,
tu-resnet18 encoder unless --encoder, working at the generator's resolution) translating batches of ``--batch``
photos, against II2S inversion (``--inversion-steps`` steps, the paper's 1000 by default) of one
photo and a render of its latent with a domain. The inversion's time is its measured per-step time
(3 steps minus 1 step, so the setup is not counted) times the step count, plus the render: a full
1000-step run is not waited for. Medians of ``--repeats`` after a warm-up. Numbers, not tests.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _median_time(fn, repeats: int, device) -> float:
    import torch

    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out.append(time.perf_counter() - start)
    return statistics.median(out)


def throughput(resolution: int, device_name: str, batch: int, repeats: int, inversion_steps: int,
               encoder: str) -> dict:
    import torch

    from adapt import build_generator
    from hyperdomain.image.inversion import InversionConfig, _optimise, latent_pca
    from hyperdomain.image.perceptual import load_lpips
    from hyperdomain.image.translators import Translator, TranslatorConfig, build_translator

    device = torch.device(device_name)
    G = build_generator(resolution, device)
    config = TranslatorConfig(size=resolution, **({"encoder": encoder} if encoder else {}))
    torch.manual_seed(0)
    translator = Translator(build_translator(config).to(device), config, "enot")
    photos = torch.rand(batch, 3, resolution, resolution, device=device) * 2 - 1
    translator(photos)  # warm-up
    t_batch = _median_time(lambda: translator(photos), repeats, device)

    lpips = load_lpips(device, "random")
    pca = latent_pca(G, 2000, cache=False)
    loss_size = min(256, resolution)
    target = photos[:1]
    target_small = torch.nn.functional.interpolate(target, size=(loss_size, loss_size), mode="area")

    def invert(n):
        _optimise(G, target, target_small, InversionConfig(steps=n, pca_samples=2000, loss_size=loss_size),
                  lpips, pca, False, None)

    invert(1)  # warm-up
    t_step = max(_median_time(lambda: invert(3), repeats, device) - _median_time(lambda: invert(1), repeats, device),
                 0) / 2
    domain = torch.randn(G.num_domain_params, device=device) * 0.1
    ws = G.mapping(torch.randn(1, G.z_dim, device=device))

    def render():
        with torch.no_grad():
            G.synthesis(ws, domain=domain, noise_mode="const")

    render()
    t_render = _median_time(render, repeats, device)
    t_inversion = inversion_steps * t_step + t_render
    return {"resolution": resolution, "device": device_name, "batch": batch, "encoder": config.encoder,
            "translator_batch_s": t_batch, "translator_images_per_s": batch / t_batch,
            "invert_step_s": t_step, "render_s": t_render, "inversion_steps": inversion_steps,
            "inversion_images_per_s": 1 / t_inversion, "speedup": (batch / t_batch) * t_inversion,
            "threads": torch.get_num_threads(), "load": os.getloadavg()[0]}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "gaussians":
        import translator_ot

        sys.argv = [sys.argv[0] + " gaussians", *sys.argv[2:]]
        translator_ot.main()
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["throughput", "gaussians"])
    ap.add_argument("--resolution", type=int, default=256, choices=[32, 256, 512, 1024])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=4, help="photos per translator batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--inversion-steps", type=int, default=1000, help="II2S steps per photo (the paper's: 1000)")
    ap.add_argument("--encoder", default=None, help="the translator's U-Net encoder [default: the trainer's]")
    args = ap.parse_args()
    if args.batch < 1 or args.repeats < 1 or args.inversion_steps < 1:
        print("translator.py: --batch, --repeats and --inversion-steps must be at least 1", file=sys.stderr)
        raise SystemExit(2)
    r = throughput(args.resolution, args.device, args.batch, args.repeats, args.inversion_steps, args.encoder)
    print(f"torch threads {r['threads']}, load average {r['load']:.1f}, medians of {args.repeats}")
    print("| px | device | translator batch | translator s/batch | translator images/s | II2S step s | render s | "
          "inversion + render images/s | translator speed-up |")
    print("|---" * 9 + "|")
    print(f"| {r['resolution']} | {r['device']} | {r['batch']} | {r['translator_batch_s']:.3f} | "
          f"{r['translator_images_per_s']:.2f} | {r['invert_step_s']:.3f} | {r['render_s']:.3f} | "
          f"{r['inversion_images_per_s']:.5f} ({r['inversion_steps']} steps) | {r['speedup']:.0f}x |")


if __name__ == "__main__":
    main()
