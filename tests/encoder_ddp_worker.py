"""Run under torchrun by tests/test_encoder_training.py: train a tiny encoder with DDP (gloo, CPU)
and write every rank's final encoder, so the test can compare the ranks.

    torchrun --standalone --nproc_per_node 2 tests/encoder_ddp_worker.py OUT_DIR KIND ITERS [--resume]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import make_tiny_generator  # noqa: E402

from hyperdomain import distributed  # noqa: E402
from hyperdomain.training.encoder import train_encoder  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

TINY = {"widths": (16, 16, 32, 32), "units": (1, 1, 1, 1), "losses": {"lpips": 0}, "batch": 4, "lr": 3e-3,
        "checkpoint_every": 2, "sample_every": 0, "sample_n": 2}


def main() -> None:
    out, kind, iters = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    dist = distributed.setup("cpu")
    try:
        G = make_tiny_generator()
        if "--resume" in sys.argv:
            enc = train_encoder(G, resume=out, dist=dist, iters=iters, progress=False)
        else:
            # e4e's progressive stages: heads outside the graph until their turn (DDP must allow it)
            extra = {"progressive_every": 1, **({"n_iters": 2} if kind != "e4e" else {})}
            enc = train_encoder(G, kind, out_dir=out, dist=dist, iters=iters, progress=False, **TINY, **extra)
        state = {k: v.contiguous() for k, v in enc.state_dict().items()}
        save_file(state, str(out / f"rank{dist.rank}.safetensors"))
        print(f"rank {dist.rank}: {enc.meta['iterations']} steps")
    finally:
        distributed.teardown(dist)


if __name__ == "__main__":
    main()
