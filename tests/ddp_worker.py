"""Run under torchrun by tests/test_hyper_training.py: train a tiny hypernetwork with DDP (gloo, CPU)
and write every rank's final weights, so the test can compare the ranks.

    torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py CLIP_JSON DOMAINS RUN [--then RUN]...

where each RUN is ``OUT_DIR ITERS [--resume] [--poison-rank R] [--no-convex-hull] [--checkpoint-every N]
[--fail-write]``. The runs go one after another in the same process group (a torchrun launch costs
several seconds of imports, a tiny run a fraction of that), each with its own settings and
patches, as if launched alone: the next one starts after the previous one finished or stopped.

Each rank writes the training domains it drew at every step (OUT_DIR/picks_rank{R}.json) and its
final weights (rank{R}.safetensors); a run stopped by a HyperdomainError instead prints
``STOPPED: <message>`` on every rank and writes OUT_DIR/stopped_rank{R}.txt. The worker exits 2
if any of its runs stopped.
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import make_tiny_generator, nan_on_call  # noqa: E402

from hyperdomain import distributed  # noqa: E402
from hyperdomain.guidance.clip import load_clip  # noqa: E402
from hyperdomain.errors import HyperdomainError  # noqa: E402
from hyperdomain.training.hyper import train_hyper  # noqa: E402


def split_runs(argv: list[str]) -> list[list[str]]:
    """``RUN --then RUN ...`` as one argument list per run."""
    runs, current = [], []
    for arg in argv:
        if arg == "--then":
            runs.append(current)
            current = []
        else:
            current.append(arg)
    return runs + [current]


def train_one(dist, clip_json: str, domains: str, args: list[str]) -> bool:
    """One run of ``args`` (OUT_DIR ITERS [options]); False if it stopped with a HyperdomainError.
    Every patch it makes is undone before it returns."""
    import hyperdomain.guidance.losses as losses_module  # where the trainer's loss assembly finds it
    import hyperdomain.training.hyper as ht

    out, iters = Path(args[0]), int(args[1])
    resume = "--resume" in args
    poison = int(args[args.index("--poison-rank") + 1]) if "--poison-rank" in args else None
    every = int(args[args.index("--checkpoint-every") + 1]) if "--checkpoint-every" in args else 2
    real_loss, real_log, real_losses = losses_module.tt_direction_loss, ht._HyperRun._append_log, ht._HyperRun._losses
    if poison is not None and dist.rank == poison:  # a NaN loss on this rank only, at step 3
        losses_module.tt_direction_loss = nan_on_call(real_loss, 3)
    if "--fail-write" in args:  # rank 0 cannot write its log from step 2 on (e.g. the disk is full)
        def failing_log(self, values):
            if self.step >= 2:
                raise OSError(28, "No space left on device")
            real_log(self, values)

        ht._HyperRun._append_log = failing_log

    picks = []

    def recording(self, domains, batch, trg_i, *rest):
        picks.append(trg_i.tolist())
        return real_losses(self, domains, batch, trg_i, *rest)

    ht._HyperRun._losses = recording
    try:
        G = make_tiny_generator()
        enc = load_clip([clip_json])
        kwargs = dict(iters=iters) if resume else dict(
            domains=domains, test_domains=None, iters=iters, batch=8, lr=1e-3, width=64, templates="single",
            checkpoint_every=every, sample_every=0, convex_hull="--no-convex-hull" not in args)
        try:
            net = train_hyper(G, clip=enc, input_clip=enc[0], out_dir=out, resume=out if resume else None,
                              dist=dist, progress=False, **kwargs)
        except HyperdomainError as e:
            print(f"STOPPED: {e}", flush=True)
            (out / f"stopped_rank{dist.rank}.txt").write_text(str(e))
            return False
        from safetensors.torch import save_file

        (out / f"picks_rank{dist.rank}.json").write_text(json.dumps(picks))
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / f"rank{dist.rank}.safetensors"))
        return True
    finally:
        losses_module.tt_direction_loss, ht._HyperRun._append_log = real_loss, real_log
        ht._HyperRun._losses = real_losses


def main() -> None:
    clip_json, domains, runs = sys.argv[1], sys.argv[2], split_runs(sys.argv[3:])
    torch.set_num_threads(1)
    dist = distributed.setup("cpu")
    try:
        finished = [train_one(dist, clip_json, domains, run) for run in runs]
    finally:
        distributed.teardown(dist)
    if not all(finished):
        sys.exit(2)


if __name__ == "__main__":
    main()
