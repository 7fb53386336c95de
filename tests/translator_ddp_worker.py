"""Run under torchrun by tests/test_translator_ddp.py: train a tiny paired translator with DDP (gloo, CPU)
and write every rank's final network, so the test can compare the ranks.

    torchrun --standalone --nproc_per_node 2 tests/translator_ddp_worker.py OUT_DIR ITERS [--resume]
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import make_tiny_generator  # noqa: E402

import hyperdomain as hd  # noqa: E402
from hyperdomain import distributed  # noqa: E402
from hyperdomain.model.config import GeneratorConfig  # noqa: E402

NARROW = GeneratorConfig(resolution=32, style_dim=32, n_mlp=2, channels=(8, 8, 8, 8))
FAST = dict(size=32, encoder="mobilenet_v2", encoder_depth=3, decoder_channels=(16, 16, 8), losses={"l1": 1},
            sample_every=0, checkpoint_every=2, batch=4, lr=1e-2)


def main() -> None:
    out, iters = Path(sys.argv[1]), int(sys.argv[2])
    dist = distributed.setup("cpu")
    try:
        G = make_tiny_generator(config=NARROW)
        v = torch.zeros(G.num_domain_params)
        v[:8] = -1.0
        domain = hd.Domain(v, G.domain_dims)
        if "--resume" in sys.argv:
            T = hd.train_translator(G, domain, resume=out, iters=iters, dist=dist, progress=False)
        else:
            T = hd.train_translator(G, domain, out_dir=out, dist=dist, progress=False, iters=iters, **FAST)
        state = {k: v.contiguous() for k, v in T.net.state_dict().items() if v.is_floating_point()}
        save_file(state, str(out / f"rank{dist.rank}.safetensors"))
    finally:
        distributed.teardown(dist)


if __name__ == "__main__":
    main()
