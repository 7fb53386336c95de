"""Run under torchrun by tests/test_hyper_training.py: train a tiny hypernetwork with DDP (gloo, CPU)
and write every rank's final weights, so the test can compare the ranks.

    torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py OUT_DIR CLIP_JSON DOMAINS ITERS [--resume]
        [--poison-rank R] [--no-convex-hull] [--checkpoint-every N] [--fail-write]

Each rank also writes the training domains it drew at every step (picks_rank{R}.json).
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import make_tiny_generator, nan_on_call  # noqa: E402

from hyperdomain import distributed  # noqa: E402
from hyperdomain.clip import load_clip  # noqa: E402
from hyperdomain.errors import HyperdomainError  # noqa: E402
from hyperdomain.training.hyper import train_hyper  # noqa: E402


def main() -> None:
    out, clip_json, domains, iters = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    resume = "--resume" in sys.argv
    poison = int(sys.argv[sys.argv.index("--poison-rank") + 1]) if "--poison-rank" in sys.argv else None
    every = int(sys.argv[sys.argv.index("--checkpoint-every") + 1]) if "--checkpoint-every" in sys.argv else 2
    torch.set_num_threads(1)
    dist = distributed.setup("cpu")
    import hyperdomain.training.hyper as ht

    if poison is not None and dist.rank == poison:  # a NaN loss on this rank only, at step 3
        import hyperdomain.losses as losses_module  # where the trainer's loss assembly finds it

        losses_module.tt_direction_loss = nan_on_call(losses_module.tt_direction_loss, 3)
    if "--fail-write" in sys.argv:  # rank 0 cannot write its log from step 2 on (e.g. the disk is full)
        real_log = ht._HyperRun._append_log

        def failing_log(self, values):
            if self.step >= 2:
                raise OSError(28, "No space left on device")
            real_log(self, values)

        ht._HyperRun._append_log = failing_log

    picks = []
    real_losses = ht._HyperRun._losses

    def recording(self, domains, batch, trg_i, *args):
        picks.append(trg_i.tolist())
        return real_losses(self, domains, batch, trg_i, *args)

    ht._HyperRun._losses = recording
    try:
        G = make_tiny_generator()
        enc = load_clip([clip_json])
        kwargs = dict(iters=iters) if resume else dict(
            domains=domains, test_domains=None, iters=iters, batch=8, lr=1e-3, width=64, templates="single",
            checkpoint_every=every, sample_every=0, convex_hull="--no-convex-hull" not in sys.argv)
        try:
            net = train_hyper(G, clip=enc, input_clip=enc[0], out_dir=out, resume=out if resume else None,
                              dist=dist, progress=False, **kwargs)
        except HyperdomainError as e:
            print(f"STOPPED: {e}", flush=True)
            sys.exit(2)
        import json

        from safetensors.torch import save_file

        (out / f"picks_rank{dist.rank}.json").write_text(json.dumps(picks))

        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / f"rank{dist.rank}.safetensors"))
    finally:
        distributed.teardown(dist)


if __name__ == "__main__":
    main()
