"""ENOT against NOT on Gaussians: wall and CPU time, and steps, until the learnt map reaches an L2-UVP threshold.

    python benchmarks/translator_ot.py                       # 2-D and 16-D, 3 seeds, NOT with t_steps 10 and 3
    python benchmarks/translator_ot.py --dims 16 --threshold 16=5 --seeds 5 --threads 2

Both methods train the same MLPs (2 hidden layers of 64, SiLU) with the same Adam (lr 1e-3, betas
(0, 0.9), batch 128, constant lr) on the tests' problems (``random_gaussian_problem(dim, 3)``).
Every ``--eval-every`` map updates the L2-UVP is measured on 4096 fixed samples, outside the timed
region; a run has reached the threshold at the first evaluation that is below it and whose next
evaluation is too (a single dip of an oscillating game does not count). Medians over seeds; a run
that does not get there within ``--max-seconds`` of training counts as infinite. On a shared machine
the process's CPU time (one thread) is the steadier figure; wall time includes waiting for a core.
Numbers, not tests.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from dataclasses import dataclass

import torch

from hyperdomain.image.translators import (
    ENOTConfig, NOTConfig, affine_map, enot_optimizers, enot_step, gaussian_ot_map, l2_uvp, not_optimizers, not_step,
)
from hyperdomain.image.translators.toy import gaussian_sampler, mlp, random_gaussian_problem

THRESHOLDS = {2: 2.0, 16: 10.0}  # L2-UVP %, per dimension


@dataclass
class Run:
    seconds: float  # training wall time until the threshold (inf if never)
    cpu_seconds: float  # this process's CPU time over the same span: steadier on a shared machine
    steps: int  # solver steps until then (a NOT step is t_steps map updates and one potential update)
    map_updates: int
    final_uvp: float


def run(method: str, t_steps: int, dim: int, seed: int, threshold: float, lr: float, eval_every: int,
        max_seconds: float) -> Run:
    m1, S1, m2, S2 = random_gaussian_problem(dim, seed=3)
    T_star = affine_map(*gaussian_ot_map(m1, S1, m2, S2))
    sample_x, sample_y = gaussian_sampler(m1, S1), gaussian_sampler(m2, S2)
    torch.manual_seed(10_000 + seed)
    x_eval, var = sample_x(4096), torch.trace(S2).item()
    torch.manual_seed(seed)
    T, f = mlp(dim, dim), mlp(dim, 1)
    if method == "enot":
        config = ENOTConfig(lr=lr, betas=(0.0, 0.9), batch=128)
        opts = enot_optimizers(T, f, config)
        step, updates_per_step = (lambda i: enot_step(T, f, *opts, sample_x, sample_y, config)), 1
    else:
        config = NOTConfig(lr=lr, betas=(0.0, 0.9), batch=128, t_steps=t_steps)
        opts = not_optimizers(T, f, config)
        step, updates_per_step = (lambda i: not_step(T, f, *opts, sample_x, sample_y, config, step=i)), t_steps
    steps_per_eval = max(1, eval_every // updates_per_step)

    trained, cpu, i, below_since, uvp = 0.0, 0.0, 0, None, math.inf
    while trained < max_seconds:
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(steps_per_eval):
            step(i)
            i += 1
        trained += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        uvp = l2_uvp(T, T_star, x_eval, var)
        if uvp < threshold:
            if below_since is not None:
                return Run(*below_since, below_since[2] * updates_per_step, uvp)
            below_since = (trained, cpu, i)
        else:
            below_since = None
    return Run(math.inf, math.inf, i, i * updates_per_step, uvp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 16], choices=sorted(THRESHOLDS))
    parser.add_argument("--threshold", action="append", default=[], metavar="DIM=PCT",
                        help=f"L2-UVP threshold for a dimension (default {THRESHOLDS})")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--not-t-steps", type=int, nargs="+", default=[10, 3],
                        help="NOT's map updates per potential update (the paper's code: 10)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=10, help="map updates between evaluations")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="training time cap per run")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    thresholds = dict(THRESHOLDS)
    for item in args.threshold:
        dim, pct = item.split("=")
        thresholds[int(dim)] = float(pct)
    torch.set_num_threads(args.threads)

    methods = [("ENOT", "enot", 1)] + [(f"NOT t_steps={t}", "not", t) for t in args.not_t_steps]
    print(f"torch {torch.__version__}, {args.threads} thread(s), lr {args.lr}, seeds 0..{args.seeds - 1}, "
          f"load average {os.getloadavg()[0]:.1f}; medians; reached = below threshold at two evaluations in a row")
    print("| dim | L2-UVP threshold | method | wall s to reach | CPU s to reach | steps | map updates | "
          "wall s per seed | L2-UVP when stopped | ENOT speed-up (wall, CPU) |")
    print("|---" * 10 + "|")
    for dim in args.dims:
        threshold = thresholds[dim]
        runs: dict[str, list[Run]] = {label: [] for label, _, _ in methods}
        for seed in range(args.seeds):  # methods interleaved, so a busy spell of the machine hits them all
            for label, method, t in methods:
                runs[label].append(run(method, t, dim, seed, threshold, args.lr, args.eval_every, args.max_seconds))
        enot_wall = statistics.median(r.seconds for r in runs["ENOT"])
        enot_cpu = statistics.median(r.cpu_seconds for r in runs["ENOT"])
        for label, method, _ in methods:
            rs = runs[label]
            wall, cpu = statistics.median(r.seconds for r in rs), statistics.median(r.cpu_seconds for r in rs)
            speedup = "" if method == "enot" else f"{wall / enot_wall:.1f}x, {cpu / enot_cpu:.1f}x"
            print(f"| {dim} | {threshold:g}% | {label} | {wall:.2f} | {cpu:.2f} | "
                  f"{statistics.median(r.steps for r in rs):g} | "
                  f"{statistics.median(r.map_updates for r in rs):g} | {', '.join(f'{r.seconds:.2f}' for r in rs)} | "
                  f"{', '.join(f'{r.final_uvp:.2f}' for r in rs)} | {speedup} |", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
