"""Run under torchrun by tests/test_translator_ot.py: NOT and ENOT translators with DDP (gloo, CPU).

    torchrun --standalone --nproc_per_node 2 tests/ddp_translator_ot_worker.py PHOTOS OUT_ROOT

Trains ``OUT_ROOT/not`` (t_steps 1: map and potential steps alternate) and ``OUT_ROOT/enot``, 3
steps each, and writes every rank's final map and potential (``{method}/rank{R}.safetensors``) so
the test can check that the ranks agree (their gradients were reduced) and that everything moved.
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
from hyperdomain.training.translator import _TranslatorRun, train_translator  # noqa: E402


def main() -> None:
    photos, root = Path(sys.argv[1]), Path(sys.argv[2])
    dist = distributed.setup("cpu")
    try:
        G = make_tiny_generator()
        torch.manual_seed(1)
        domain = hd.Domain(torch.randn(G.num_domain_params) * 0.3, G.domain_dims, {"prompt": "Sketch"})
        kept = {}
        real_result = _TranslatorRun.result

        def result(self):  # every rank's state, as its run ends
            kept.update({k: v.detach().clone().contiguous() for k, v in self.state_tensors().items()
                         if v.is_floating_point()})
            return real_result(self)

        _TranslatorRun.result = result
        for method, extra in (("not", dict(t_steps=1)), ("enot", {})):
            kept.clear()
            train_translator(G, domain, method=method, photos=str(photos), iters=3, batch=4, size=32,
                             encoder="tu-resnet10t", encoder_depth=3, decoder_channels=(16, 16, 8), lr=1e-3,
                             potential_width=8, sample_every=0, checkpoint_every=0, lpips_backbone="random",
                             out_dir=root / method, dist=dist, progress=False, **extra)
            save_file(kept, str(root / method / f"rank{dist.rank}.safetensors"))
    finally:
        distributed.teardown(dist)


if __name__ == "__main__":
    main()
