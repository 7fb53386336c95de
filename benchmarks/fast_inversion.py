"""Encode-and-render (e4e, ReStyle) against II2S for the same photos: seconds per photo, PSNR, LPIPS.

The photos are the generator's own renders (seeds 1000, 1001, ...; truncation 0.7), so the two
methods invert the same images and each can, in principle, reconstruct them exactly. Without
``--generator`` / ``--encoder`` the networks have random weights (a StyleGAN2 of ``--resolution`` px
of the port's widths; an encoder of the released size): the time figures are real, the quality
figures only show the procedure. Give trained files for figures that mean something:

    python benchmarks/fast_inversion.py                                   # CPU, 256 px, random weights
    python benchmarks/fast_inversion.py --ii2s-steps 1000 100 --photos 5
    python benchmarks/fast_inversion.py --device cuda --resolution 1024 --ii2s-steps 1000 100
    python benchmarks/fast_inversion.py --generator ffhq --encoder e4e.safetensors --lpips imagenet

Per photo, batch 1. Encoder: ``encode`` (e4e one pass; ReStyle ``--restyle-iters`` passes and their
renders) plus the final render, median over photos x ``--repeats`` after a warm-up. II2S:
``invert`` with ``steps`` for each photo alone (the P-norm prior's PCA, computed once per
generator and cached, and LPIPS's loading are left out), median over photos. Quality: ``invert``'s
own measures (PSNR of the 8-bit images, LPIPS at 256 px), for both.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_generator(size: int, device: str, seed: int = 0):
    import torch

    from hyperdomain.model.config import GeneratorConfig, port_channels
    from hyperdomain.model.generator import Generator

    torch.manual_seed(seed)
    cfg = GeneratorConfig(resolution=size, style_dim=512, n_mlp=8, channels=port_channels(size, 2))
    return Generator(cfg, name=f"random{size}").to(device).requires_grad_(False).eval()


def build_encoder(kind: str, G, path: str | None, restyle_iters: int):
    import torch

    from hyperdomain.image.encoders import EncoderConfig, PhotoEncoder, default_config, load_encoder

    if path is not None:
        return load_encoder(path).to(G.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = default_config(kind, G.resolution)
        enc = PhotoEncoder(EncoderConfig(**{**base.as_dict(), "w_dim": G.w_dim,
                                            "n_iters": restyle_iters if base.iterative else 1}))
    with torch.no_grad():
        enc.latent_avg.copy_(G.mean_latent().reshape(1, -1).expand(G.num_ws, -1))
    return enc.to(G.device).eval().requires_grad_(False)


def sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def photos_of(G, n: int):
    """The generator's renders as prepared photos (PIL round trip: 8-bit pixels, as a saved photo)."""
    import numpy as np
    import torch
    from PIL import Image

    from hyperdomain.image.inversion import prepare_photo

    out = []
    for i in range(n):
        img = G.sample(1, truncation=0.7, seed=1000 + i)[0]
        pix = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        out.append(prepare_photo(G, Image.fromarray(np.ascontiguousarray(pix)), align=False, index=i))
    return out


def run_encoder(kind: str, G, photos, enc, lpips, repeats: int) -> dict:
    import torch

    from hyperdomain.image.encoders import encode, photo_input
    from hyperdomain.image.inversion import _loss_size, _quality, InversionConfig

    render = lambda ws: G.synthesis(ws, noise_mode="const")  # noqa: E731
    size = _loss_size(G, InversionConfig())
    times, psnr, lp = [], [], []
    with torch.no_grad():
        for p in photos:
            x = photo_input(p.image, enc.config.input_size).to(G.device)
            render(encode(enc, x, render=render))  # warm-up
            for _ in range(repeats):
                sync(G.device)
                t0 = time.perf_counter()
                recon = render(encode(enc, x, render=render))
                sync(G.device)
                times.append(time.perf_counter() - t0)
            q = _quality(recon.float(), p.tensor().to(G.device), p.tensor(size).to(G.device), lpips)
            psnr += q["psnr"]
            lp += q["lpips"]
    return {"what": f"{kind} encode+render" + (f" ({enc.config.n_iters} passes)" if enc.config.iterative else ""),
            "median": statistics.median(times), "min": min(times), "n": len(times),
            "psnr": statistics.median(psnr), "lpips": statistics.median(lp)}


def run_ii2s(steps: int, G, photos, lpips, pca, pca_samples: int) -> dict:
    from hyperdomain.image.inversion import InversionConfig, invert

    config = InversionConfig(steps=steps, pca_samples=pca_samples)
    times, psnr, lp = [], [], []
    for p in photos:
        sync(G.device)
        t0 = time.perf_counter()
        latent = invert(G, [p], config, lpips=lpips, pca=pca, progress=False)[0]
        sync(G.device)
        times.append(time.perf_counter() - t0)
        psnr.append(latent.meta["psnr"])
        lp.append(latent.meta["lpips"])
    return {"what": f"II2S {steps} steps", "median": statistics.median(times), "min": min(times), "n": len(times),
            "psnr": statistics.median(psnr), "lpips": statistics.median(lp)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=256, help="the random generator's (without --generator)")
    ap.add_argument("--generator", help="a generator (manifest name or file) instead of a random one")
    ap.add_argument("--kinds", nargs="*", default=["e4e", "restyle-e4e"], help="none: II2S only")
    ap.add_argument("--encoder", help="a trained encoder file instead of random weights (one kind: its own)")
    ap.add_argument("--restyle-iters", type=int, default=5)
    ap.add_argument("--ii2s-steps", type=int, nargs="*", default=[1000, 50])
    ap.add_argument("--photos", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="encoder timings per photo")
    ap.add_argument("--pca-samples", type=int, default=10_000,
                    help="the P-norm prior's latents (II2S's 1M costs minutes on a CPU, once per generator)")
    ap.add_argument("--lpips", default="random", help="LPIPS VGG16: random (no download), imagenet, or its file")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()

    import torch

    from hyperdomain.image.inversion import latent_pca
    from hyperdomain.image.perceptual import load_lpips
    from hyperdomain.model.generator import load_generator

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.generator:
        G = load_generator(args.generator, device=args.device).requires_grad_(False).eval()
    else:
        G = build_generator(args.resolution, args.device)
    photos = photos_of(G, args.photos)
    lpips = load_lpips(G.device, args.lpips)
    rows = []
    kinds = [None] if args.encoder else args.kinds
    for kind in kinds:
        enc = build_encoder(kind, G, args.encoder, args.restyle_iters)
        rows.append(run_encoder(enc.config.kind, G, photos, enc, lpips, args.repeats))
        print(rows[-1], flush=True)
    if args.ii2s_steps:
        pca = latent_pca(G, args.pca_samples, cache=False)
        for steps in args.ii2s_steps:
            rows.append(run_ii2s(steps, G, photos, lpips, pca, args.pca_samples))
            print(rows[-1], flush=True)
    print(f"\ndevice {args.device} ({torch.get_num_threads()} threads), torch {torch.__version__}, generator "
          f"{G.name} {G.resolution} px, {args.photos} photos, LPIPS {args.lpips}, "
          f"encoder {args.encoder or 'random weights'}")
    print(f"{'method':<34} {'median s/photo':>15} {'min s':>8} {'runs':>5} {'PSNR dB':>8} {'LPIPS':>7}")
    for r in rows:
        print(f"{r['what']:<34} {r['median']:>15.3f} {r['min']:>8.3f} {r['n']:>5} {r['psnr']:>8.2f} "
              f"{r['lpips']:>7.4f}")


if __name__ == "__main__":
    main()
