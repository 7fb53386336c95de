"""Photos through an encoder end to end: the time per photo of ``hd.invert(G, photos, encoder=...)``.

What ``hyperdomain invert --encoder KIND`` does after loading: the photo at the generator's size
(centre crop, no alignment here), resized to 256 px, the encoder's pass (ReStyle: ``--steps``
passes, each after a render of the generator at its full size), then the reconstruction rendered
and measured (PSNR, LPIPS at 256 px). Random weights at the released sizes (a 1024 px config-f
generator, 18 style layers, IR-SE50): the cost does not depend on the values. LPIPS on a random
VGG16 (same cost as the real one). Medians over ``--repeats`` after one warm-up photo.

    python benchmarks/encode_photos.py                        # CPU, 1024 px, e4e and ReStyle-e4e
    python benchmarks/encode_photos.py --size 256 --kinds e4e restyle-psp --steps 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as the CLI does (cli/main.py)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", nargs="+", default=["e4e", "restyle-e4e"])
    ap.add_argument("--size", type=int, default=1024, help="the generator's resolution")
    ap.add_argument("--steps", type=int, default=5, help="ReStyle's passes")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    import hyperdomain as hd
    from benchmarks.generator import build
    from hyperdomain.image.encoders import PhotoEncoder, default_config
    from hyperdomain.image.perceptual import load_lpips

    G = build(args.size, args.device)
    lpips = load_lpips(args.device, "random")
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (args.size, args.size, 3), dtype=np.uint8))
    print(f"device {args.device} ({torch.get_num_threads()} threads), torch {torch.__version__}, generator "
          f"{args.size} px, one photo, median of {args.repeats} after a warm-up")
    for kind in args.kinds:
        torch.manual_seed(0)
        enc = PhotoEncoder(default_config(kind, resolution=args.size), {"generator_fingerprint": G.fingerprint})
        enc.latent_avg = G.mean_latent()[None].repeat(enc.config.n_styles, 1).clone()
        steps = args.steps if enc.config.iterative else None
        times = []
        for i in range(args.repeats + 1):
            t0 = time.perf_counter()
            hd.invert(G, [photo], encoder=enc, restyle_steps=steps, lpips=lpips, align=False, progress=False)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
        passes = steps or 1
        print(f"{kind:<12} {passes} pass{'es' * (passes > 1)}: median {statistics.median(times):.2f} s, "
              f"best {min(times):.2f} s a photo ({', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
