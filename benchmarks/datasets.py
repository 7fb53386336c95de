"""Dataset export speed and memory (``hyperdomain dataset``), and what a mixed-domain pass costs.

For each number of domains per latent (1, 4, 16), a fresh child process builds a random-weight
generator of the given size (port channel widths, channel multiplier 2; 32 px: the tests' tiny
generator), warms up, then exports latents to a temporary folder with ``hd.make_dataset`` (PNG,
WebDataset tar shards): every latent in the source and in each domain, so ``1 + domains`` images a
latent. Every generator pass has 8 rows (the dataset format's fixed pass shape; the last pass of
the export padded); --batch images a step. Figures: images per second of the whole export (render,
PNG encoding, tar writing, the shard digest) and of rendering alone (the generator passes),
medians over --repeats (the two interleaved); peak memory
of one export (peak RSS growth, sampled every 2 ms, on the CPU; ``torch.cuda.max_memory_allocated``
growth on a GPU).

``mixed``: one generator pass of --batch rows with a different domain on every row (``[B, D]``)
against the same pass with one domain for the batch (``(D,)``) and with none; medians.

    python benchmarks/datasets.py --size 256 --images 48 --repeats 3          # CPU
    python benchmarks/datasets.py --size 1024 --images 256 --batch 32 --device cuda
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as the CLI does

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from adapt import RssSampler, _mem_now, _mem_peak, _rss, build_generator, timed  # noqa: E402


def random_domains(G, k: int, seed: int = 0):
    import torch

    import hyperdomain as hd

    g = torch.Generator().manual_seed(seed)
    return [hd.Domain(0.3 * torch.randn(G.num_domain_params, generator=g), G.domain_dims, {"prompt": f"d{i}"})
            for i in range(k)]


def measure_export(size: int, domains: int, images: int, batch: int, repeats: int, device_name: str) -> dict:
    """Runs in the child process."""
    import torch

    import hyperdomain as hd
    from hyperdomain.datasets import dataset_settings
    from hyperdomain.datasets.render import domain_table, render_rows, sample_rows, steps
    from hyperdomain.datasets.settings import named_domains

    device = torch.device(device_name)
    G = build_generator(size, device)
    doms = random_domains(G, domains)
    n = max(1, math.ceil(images / (1 + domains)))
    G.mean_latent()
    tmp = Path(tempfile.mkdtemp(prefix="hd-bench-"))

    def export(i):
        # one shard: passes never span shards, so with several the last pass of each is padded, and
        # the export would do more passes than the render it is compared with (both: 8-row passes,
        # --batch images a step)
        hd.make_dataset(G, tmp / f"run{i}", n, doms, shard_size=n, batch=batch, progress=False)

    settings = dataset_settings(G, n, named_domains(G, doms))
    table = domain_table(G, doms)
    rows = [r for i in range(n) for r in sample_rows(settings, G.z_dim, i)]

    def render():
        for chunk in steps(rows, batch, settings.pass_rows):
            render_rows(G, chunk, table, settings)

    export("warm")
    exports, renders = [], []
    for i in range(repeats):  # interleaved, so a drifting machine hits both alike
        exports.append(timed(lambda: export(i), 1, device))
        renders.append(timed(render, 1, device))
    t_export, t_render = statistics.median(exports), statistics.median(renders)
    base = _mem_now(device) if device.type == "cuda" else _rss(device)
    with RssSampler() as sampler:
        export("mem")
    peak = (_mem_peak(device) if device.type == "cuda" else sampler.peak) - base
    count = n * (1 + domains)
    size_per_image = sum(f.stat().st_size for f in (tmp / "runmem").glob("*.tar")) / count
    shutil.rmtree(tmp)
    return {"size": size, "domains": domains, "latents": n, "images": count, "batch": batch, "device": device_name,
            "export_img_s": count / t_export, "render_img_s": count / t_render, "peak_mb": peak / 2**20,
            "bytes_per_image": size_per_image,
            "torch_threads": torch.get_num_threads()}


def measure_mixed(size: int, batch: int, repeats: int, device_name: str) -> dict:
    import torch

    device = torch.device(device_name)
    G = build_generator(size, device)
    g = torch.Generator().manual_seed(1)
    ws = G.mapping(torch.randn(batch, G.z_dim, generator=g).to(device))
    many = (0.3 * torch.randn(batch, G.num_domain_params, generator=g)).to(device)
    one = many[0].clone()

    def run(domain):
        with torch.no_grad():
            G.synthesis(ws, domain=domain)

    for d in (None, one, many):
        run(d)  # warm-up
    # interleaved, so a drifting machine hits all three alike
    times = {"none": [], "single": [], "mixed": []}
    for _ in range(repeats):
        for key, d in (("none", None), ("single", one), ("mixed", many)):
            times[key].append(timed(lambda: run(d), 1, device))
    out = {k + "_s": statistics.median(v) for k, v in times.items()}
    out.update({"size": size, "batch": batch, "device": device_name,
                "mixed_over_single": out["mixed_s"] / out["single_s"]})
    return out


def child(args) -> dict:
    kind, *rest = args.child
    if kind == "export":
        return measure_export(args.size, int(rest[0]), args.images, args.batch, args.repeats, args.device)
    return measure_mixed(args.size, args.batch, args.repeats, args.device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="Generator resolution (32: the tests' tiny generator).")
    ap.add_argument("--domains", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--images", type=int, default=48, help="Images per export (rounded up to whole latents).")
    ap.add_argument("--batch", type=int, default=16, help="Images per export step (passes of 8 rows); rows of the mixed pass.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, help="Also write the results here.")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)))
        return
    common = ["--size", str(args.size), "--images", str(args.images), "--batch", str(args.batch),
              "--repeats", str(args.repeats), "--device", args.device]
    results = []
    print(f"| size | domains/latent | images | export img/s | render img/s | peak MB | KB/image |")
    print("|---|---|---|---|---|---|---|")
    for k in args.domains:
        r = _run([sys.executable, __file__, *common, "--child", "export", str(k)])
        results.append(r)
        print(f"| {r['size']} | {k} | {r['images']} | {r['export_img_s']:.2f} | {r['render_img_s']:.2f} | "
              f"{r['peak_mb']:.0f} | {r['bytes_per_image'] / 1024:.1f} |", flush=True)
    r = _run([sys.executable, __file__, *common, "--child", "mixed"])
    results.append(r)
    print(f"\nbatch {r['batch']} at {r['size']} px: no domain {r['none_s']:.3f} s, one domain {r['single_s']:.3f} s, "
          f"a domain per row {r['mixed_s']:.3f} s; mixed / single = {r['mixed_over_single']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def _run(cmd) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        sys.exit(f"benchmark child failed: {' '.join(cmd[-3:])}\n{proc.stderr[-3000:]}")
    return json.loads(line[0][7:])


if __name__ == "__main__":
    main()
