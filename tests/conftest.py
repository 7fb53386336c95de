import argparse

import pytest
import torch

from hyperdomain.config import GeneratorConfig
from hyperdomain.generator import Generator

TINY = GeneratorConfig(resolution=32, style_dim=32, n_mlp=2, channels=(32, 32, 32, 32))


def make_tiny_generator(seed: int = 0, config: GeneratorConfig = TINY) -> Generator:
    """A random 32 px generator with non-zero noise strengths and biases (so every path matters)."""
    torch.manual_seed(seed)
    G = Generator(config, name="tiny")
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise.weight") or name.endswith("activate.bias") or name.endswith("to_rgb1.bias") \
                    or (name.startswith("to_rgbs") and name.endswith(".bias")):
                p.normal_(0, 0.3)
    G.requires_grad_(False)
    return G.eval()


def nan_on_call(fn, n: int):
    """``fn`` whose ``n``-th call (1-based) returns NaN times its value: a loss that blows up at one step."""
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        value = fn(*args, **kwargs)
        return value * float("nan") if calls["n"] == n else value

    return poisoned


@pytest.fixture
def tiny_G() -> Generator:
    return make_tiny_generator()


@pytest.fixture
def tiny_ckpt(tmp_path, tiny_G):
    """A port-format checkpoint file of the tiny generator, with an argparse Namespace like the port's."""
    path = tmp_path / "tiny.pt"
    latent_avg = torch.randn(tiny_G.w_dim)
    torch.save({"g_ema": tiny_G.state_dict(), "latent_avg": latent_avg,
                "args": argparse.Namespace(size=32, channel_multiplier=2)}, path)
    return path, latent_avg


# A tiny open_clip config: 32 px images, 32-d embeddings, the real tokenizer and context length.
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def tiny_clip_config(tmp_path_factory):
    """The tiny CLIP config as a JSON file (the CLI's --clip accepts such a path)."""
    import json

    path = tmp_path_factory.mktemp("clip") / "tiny_clip.json"
    path.write_text(json.dumps(TINY_CLIP_CONFIG))
    return path


def make_tiny_clip(config_path, seed: int = 0):
    """A frozen tiny CLIP encoder with random weights; seed 0 equals ``load_clip([config_path])``."""
    import json

    import open_clip

    from hyperdomain.clip import ClipEncoder

    cfg = json.loads(open(config_path).read())
    cfg = cfg.get("model_cfg", cfg)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg)
    return ClipEncoder(model, open_clip.SimpleTokenizer(), f"tiny{seed}")


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_config):
    return make_tiny_clip(tiny_clip_config)
