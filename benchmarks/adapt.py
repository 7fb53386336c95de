"""Adaptation speed and memory: one training step of ``hyperdomain adapt`` and its parts.

Configs (random weights, real shapes; batch 4 unless --batch):
  tiny        32 px generator with 32 channels, tiny CLIP (the tests' models)
  256-b32     256 px config-f generator, ViT-B/32
  1024-b32b16 1024 px config-f generator (the FFHQ shapes), ViT-B/32 + ViT-B/16 (the paper's setup)

Columns: ``step`` is the trainer's own step (latents, source forward without grad, adapted
forward, CLIP encodes of both batches, backward, Adam); the parts are timed separately:
``src fwd`` (generator, no grad), ``clip src`` (encode the source batch, no grad), ``adapted
fwd+bwd`` (generator forward with grad, CLIP encode, loss, backward). Each config runs in a fresh
subprocess; peak memory is the peak RSS growth of that process over the step (CPU) or
``torch.cuda.max_memory_allocated`` growth (GPU). Times are medians over --repeats after a warm-up.

    python benchmarks/adapt.py --configs tiny 256-b32              # CPU
    python benchmarks/adapt.py --configs tiny 1024-b32b16 --device cuda
"""
from __future__ import annotations

import argparse
import os
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

# As the CLI does (cli/main.py): CPU tensors on transparent huge pages, for both paths alike.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from generator import _sync  # noqa: E402  (benchmarks/generator.py)

CONFIGS = {
    "tiny": (32, ("tiny",)),
    "256-b32": (256, ("ViT-B-32",)),
    "1024-b32b16": (1024, ("ViT-B-32", "ViT-B-16")),
}


def build_generator(size: int, device):
    import torch

    from hyperdomain.model.config import GeneratorConfig, port_channels
    from hyperdomain.model.generator import Generator

    torch.manual_seed(0)
    if size == 32:
        cfg = GeneratorConfig(resolution=32, style_dim=32, n_mlp=2, channels=(32, 32, 32, 32))
    else:
        cfg = GeneratorConfig(resolution=size, style_dim=512, n_mlp=8, channels=port_channels(size, 2))
    return Generator(cfg, name=f"random{size}").to(device).eval().requires_grad_(False)


def build_clip(name: str, device):
    import open_clip
    import torch

    from hyperdomain.guidance.clip import ClipEncoder

    torch.manual_seed(0)
    if name == "tiny":
        cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                                                "head_width": 32},
               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
        model = open_clip.CLIP(**cfg)
    else:
        model = open_clip.create_model(name, pretrained=None)  # real architecture, random weights
    return ClipEncoder(model, open_clip.get_tokenizer("ViT-B-32"), f"{name}:random").to(device)


def timed(fn, repeats: int, device) -> float:
    """The median wall time of ``fn`` over ``repeats`` calls, the device synchronised around each."""
    out = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def _mem_now(device) -> int:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return 0


class RssSampler:
    """Peak RSS while it runs, sampled every 2 ms (the process's lifetime peak may predate the steps)."""

    def __init__(self):
        import threading

        self.peak = _rss(None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss(None))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss(None))


def _mem_peak(device) -> int:
    import torch

    return torch.cuda.max_memory_allocated(device)


def _rss(device) -> int:
    import os

    if device is not None and device.type == "cuda":
        return 0
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(config: str, batch: int, repeats: int, device_name: str) -> dict:
    """Runs in the child process."""
    import torch

    from hyperdomain.training.adapt import AdaptConfig, _AdaptRun
    from hyperdomain.training.latents import sample_training_latents
    from hyperdomain.guidance.losses import direction_loss

    device = torch.device(device_name)
    size, clips = CONFIGS[config]
    G = build_generator(size, device)
    encoders = [build_clip(c, device) for c in clips]
    cfg = AdaptConfig(target="3D render in the style of Pixar", clip=tuple(e.label for e in encoders),
                      batch=batch, sample_every=0, checkpoint_every=0)
    run = _AdaptRun(G, encoders, cfg, None)

    rng = torch.Generator().manual_seed(0)
    tb = sample_training_latents(G, rng, batch, 0.9, device)

    def src_fwd():
        with torch.no_grad():
            return G.synthesis(tb.ws_src, noise=tb.noise_src)

    src_img = src_fwd()

    def clip_src():
        with torch.no_grad():
            return [e.encode_images(src_img) for e in encoders]

    src_emb = clip_src()
    d = torch.zeros(G.num_domain_params, device=device, requires_grad=True)

    def adapted():
        img = G.synthesis(tb.ws_trg, domain=d, noise=tb.noise_trg)
        loss = sum(direction_loss(s, e.encode_images(img), t["direction"])
                   for s, e, t in zip(src_emb, encoders, run.texts))
        loss.backward()

    def step():
        run._one_step()

    step()  # warm-up (allocations, kernel build on CUDA)
    t_step = timed(step, repeats, device)
    base = _mem_now(device) if device.type == "cuda" else _rss(device)
    with RssSampler() as sampler:  # one more step for memory (the sampler thread would skew the timings)
        step()
    peak = (_mem_peak(device) if device.type == "cuda" else sampler.peak) - base
    return {"config": config, "batch": batch, "device": device_name, "step_s": t_step,
            "src_fwd_s": timed(src_fwd, repeats, device), "clip_src_s": timed(clip_src, repeats, device),
            "adapted_fwd_bwd_s": timed(adapted, repeats, device), "peak_mb": peak / 2**20,
            "domain_params": G.num_domain_params, "torch_threads": torch.get_num_threads()}


def run_in_children(script: str, configs, child_args: list[str], columns: list[str], row) -> None:
    """Measure each config in a fresh ``script --child CONFIG`` process; print a markdown table row each.

    ``row(config, result)`` gives a row's cells; a failing child's error is shown, not swallowed.
    """
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for c in configs:
        out = subprocess.run([sys.executable, script, "--child", c, *child_args], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{Path(script).name} --child {c} failed:\n{out.stderr[-3000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print("| " + " | ".join(str(v) for v in row(c, r)) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["tiny", "256-b32"], choices=sorted(CONFIGS))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.batch, args.repeats, args.device)))
        return
    run_in_children(__file__, args.configs, ["--batch", str(args.batch), "--repeats", str(args.repeats),
                                             "--device", args.device],
                    ["config", "device", "batch", "step s", "src fwd s", "clip src s", "adapted fwd+bwd s", "peak MB"],
                    lambda c, r: [c, r["device"], r["batch"], f"{r['step_s']:.3f}", f"{r['src_fwd_s']:.3f}",
                                  f"{r['clip_src_s']:.3f}", f"{r['adapted_fwd_bwd_s']:.3f}", f"{r['peak_mb']:.0f}"])


if __name__ == "__main__":
    main()
