"""Generator speed and memory: activation-side domain modulation vs the paper's weight-side form.

Measures, for random-weight generators at batch 4:
  forward    adapted forward (a domain vector given), no grad
  fwd+bwd    adapted forward and backward to the domain vector
  step       one adaptation step's generator part: source forward without grad, adapted
             forward, backward to the domain vector
Each (config, path) runs in a fresh subprocess so peak memory is its own: peak RSS growth over
the process after setup on CPU, ``torch.cuda.max_memory_allocated`` on CUDA. Times are medians.
With ``--rounds K`` the two paths' subprocesses alternate K times (A W, W A, A W, ...): on a
shared machine whose speed drifts over minutes, the ratio of each round's pair is far steadier
than the ratio of two runs minutes apart. The table gives the median over rounds, and the summary
the range of the per-round ratios.

    python benchmarks/generator.py                       # 256 px (ch. mult. 2) and 1024 px on CPU
    python benchmarks/generator.py --sizes 256 --repeats 7 --device cuda
    python benchmarks/generator.py --sizes 256 --repeats 3 --rounds 3   # noisy CPU: paired rounds
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# As the CLI does (cli/main.py): CPU tensors on transparent huge pages, for both paths alike.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PATHS = ("activation", "weight")


def build(size: int, device, seed: int = 0):
    import torch

    from hyperdomain.model.config import GeneratorConfig, port_channels
    from hyperdomain.model.generator import Generator

    torch.manual_seed(seed)
    cfg = GeneratorConfig(resolution=size, style_dim=512, n_mlp=8, channels=port_channels(size, 2))
    G = Generator(cfg, name=f"random{size}").to(device)
    G.requires_grad_(False)
    return G.eval()


def path_context(path: str):
    """The weight side: every modulated conv on ``stylegan2_ops.modulated_conv2d``'s reference path,
    the paper's form (per-sample weights, grouped convolutions, plain PyTorch blur and activation)."""
    import contextlib

    import stylegan2_ops

    return stylegan2_ops.pin_modulated_conv2d("ref") if path == "weight" else contextlib.nullcontext()


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _current_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure_one(size: int, path: str, batch: int, repeats: int, device_name: str) -> dict:
    """Runs inside the child process."""
    import torch

    device = torch.device(device_name)
    G = build(size, device)
    z = torch.randn(batch, G.z_dim, device=device)
    d = (0.1 * torch.randn(G.num_domain_params, device=device)).requires_grad_(True)
    w = G.mapping(z)

    def forward():
        with torch.no_grad():
            G.synthesis(w, domain=d)

    def fwd_bwd():
        G.synthesis(w, domain=d).square().mean().backward()

    def step():
        with torch.no_grad():
            src = G.synthesis(w)
        (G.synthesis(w, domain=d) - src).square().mean().backward()

    from stylegan2_ops.cpu import winograd

    out = {"size": size, "path": path, "batch": batch, "device": device_name,
           "thp": os.environ.get("THP_MEM_ALLOC_ENABLE"), "winograd": winograd.enabled()}
    # peak memory first, in this fresh process: nothing before the step has touched that much memory
    base = _current_bytes(device)
    step()
    _sync(device)
    out["step_peak_mb"] = (_peak_bytes(device) - base) / 2**20
    d.grad = None
    for name, fn in (("forward", forward), ("fwd_bwd", fwd_bwd), ("step", step)):
        fn()  # warm-up (allocator, kernel choice)
        _sync(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
            d.grad = None
        out[name + "_s"] = statistics.median(times)
    out["step_flops"] = count_flops(step)
    return out


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_rate(device_name: str, n: int = 2048, repeats: int = 5) -> float:
    """fp32 matmul GFLOP/s of this machine (median), the yardstick for the step's FLOPs."""
    import torch

    device = torch.device(device_name)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def _run_child(size: int, path: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", str(size), path, "--batch", str(args.batch),
           "--repeats", str(args.repeats), "--device", args.device]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        print(proc.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f"benchmark child failed for {size} px {path}")
    return json.loads(line[0][7:])


def _median_result(runs: list[dict]) -> dict:
    """One row from several rounds of the same (size, path): the median of each measured figure."""
    out = dict(runs[0])
    for key in ("forward_s", "fwd_bwd_s", "step_s", "step_peak_mb"):
        out[key] = statistics.median(r[key] for r in runs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1, help="Alternate the two paths' subprocesses this many times.")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, help="Also write the results here.")
    ap.add_argument("--child", nargs=2, metavar=("SIZE", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rounds < 1 or args.repeats < 1:
        print(f"generator.py: --rounds and --repeats must be at least 1, got {args.rounds} and {args.repeats}",
              file=sys.stderr)
        raise SystemExit(2)

    if args.child:
        with path_context(args.child[1]):
            res = measure_one(int(args.child[0]), args.child[1], args.batch, args.repeats, args.device)
        print("RESULT " + json.dumps(res))
        return

    import torch

    rate = matmul_rate(args.device)
    print(f"device {args.device}, torch {torch.__version__}, {os.cpu_count()} cpus, "
          f"fp32 matmul {rate:.0f} GFLOP/s, batch {args.batch}, median of {args.repeats}"
          + (f" per run, {args.rounds} paired rounds" if args.rounds > 1 else ""))
    rounds: dict[tuple[int, str], list[dict]] = {}
    for size in args.sizes:
        for k in range(args.rounds):
            for path in PATHS if k % 2 == 0 else PATHS[::-1]:
                rounds.setdefault((size, path), []).append(_run_child(size, path, args))
    results = [_median_result(rs) for rs in rounds.values()]
    print("| size | path | forward s | fwd+bwd s | step s | step peak MB | step GFLOP | step at matmul rate |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        gf = r["step_flops"] / 1e9
        print(f"| {r['size']} | {r['path']} | {r['forward_s']:.3f} | {r['fwd_bwd_s']:.3f} | {r['step_s']:.3f} | "
              f"{r['step_peak_mb']:.0f} | {gf:.1f} | {gf / rate / r['step_s'] * 100:.0f}% |")
    for size in args.sizes:
        pairs = list(zip(rounds[(size, "activation")], rounds[(size, "weight")]))
        speed = sorted(wr["step_s"] / ar["step_s"] for ar, wr in pairs)
        memory = sorted(ar["step_peak_mb"] / max(wr["step_peak_mb"], 1e-9) for ar, wr in pairs)
        spread = f" (rounds: {speed[0]:.2f}-{speed[-1]:.2f}x, memory {memory[0]:.2f}-{memory[-1]:.2f}x)" if len(pairs) > 1 else ""
        print(f"{size} px: step {statistics.median(speed):.2f}x faster, peak memory "
              f"{statistics.median(memory):.2f}x of the weight-side form{spread}")
    if args.json:
        args.json.write_text(json.dumps({"matmul_gflops": rate, "results": results,
                                         "rounds": [r for rs in rounds.values() for r in rs]}, indent=1))


if __name__ == "__main__":
    main()
