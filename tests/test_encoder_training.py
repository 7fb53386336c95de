"""Training an encoder for a generator (``hd.train_encoder``) and the sizes that make a small one."""
from __future__ import annotations

import json

import pytest
import torch

from hyperdomain.errors import HyperdomainError
from hyperdomain.image.encoders import EncoderConfig, PhotoEncoder, default_config, encode, expected_tensors, \
    load_encoder, save_encoder

TINY_SIZES = {"w_dim": 32, "widths": (16, 16, 32, 32), "units": (1, 1, 1, 1)}


def _one_line(e: pytest.ExceptionInfo, *fragments: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, msg


# ------------------------------------------------------------------------------- the config's sizes
def test_a_config_without_the_size_fields_is_the_release_architecture(tmp_path):
    """Files written before the size fields existed name none of them: they read as IR-SE50 with
    512-wide heads, and the released layout (checked against the official modules in
    test_encoders) is what the defaults build."""
    old = {"kind": "e4e", "n_styles": 18, "input_nc": 3, "input_size": 256, "n_iters": 1,
           "start_from_latent_avg": True}
    config = EncoderConfig.from_dict(old)
    assert config == default_config("e4e") and config.is_release_architecture
    assert (config.w_dim, config.widths, config.units) == (512, (64, 128, 256, 512), (3, 4, 14, 3))
    shapes = expected_tensors(config)
    assert shapes["styles.0.linear.weight"][0] == (512, 512)
    assert shapes["body.23.res_layer.4.weight"][0] == (512,)
    assert len([k for k in shapes if k.startswith("body.") and k.endswith("res_layer.0.weight")]) == 24
    # an old file (its config JSON without the fields) still loads
    enc = PhotoEncoder(EncoderConfig("restyle-psp", 2, 6, 16, 2))
    path = save_encoder(tmp_path / "old.safetensors", enc, "fp")
    from safetensors import safe_open
    from hyperdomain.files.safetensors_files import write_own_file
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    cfg = json.loads(meta["config"])
    for k in ("w_dim", "widths", "units"):
        del cfg[k]
    meta = {k: v for k, v in meta.items() if k not in ("format", "format_version")}
    write_own_file(tmp_path / "legacy.safetensors", "hyperdomain.encoder", 1, tensors, {**meta, "config": json.dumps(cfg)})
    assert load_encoder(tmp_path / "legacy.safetensors").config == enc.config


def test_a_tiny_config_builds_a_small_encoder_that_round_trips(tmp_path):
    for kind in ("e4e", "restyle-psp", "restyle-e4e"):
        config = EncoderConfig(kind, n_styles=8, input_nc=3 if kind == "e4e" else 6, input_size=32,
                               n_iters=1 if kind == "e4e" else 2, **TINY_SIZES)
        enc = PhotoEncoder(config)
        n = sum(p.numel() for p in enc.parameters())
        assert 50_000 < n < 600_000, (kind, n)
        assert tuple(enc.latent_avg.shape) == (8, 32)
        ws = encode(enc, torch.rand(2, 3, 32, 32) * 2 - 1, render=lambda w: torch.zeros(w.shape[0], 3, 32, 32))
        assert tuple(ws.shape) == (2, 8, 32)
        # JSON turns the tuples into lists; the file's config reads back equal
        back = EncoderConfig.from_dict(json.loads(json.dumps(config.as_dict())))
        assert back == config and not back.is_release_architecture
        save_encoder(tmp_path / f"{kind}.safetensors", enc, "fp")
        loaded = load_encoder(tmp_path / f"{kind}.safetensors")
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), enc.state_dict().values()))


@pytest.mark.parametrize("field,value,fragment", [
    ("widths", (16, 16, 32), "4 positive integers"),
    ("widths", (16, 16, 32, 40), "multiples of 16"),
    ("units", (1, 0, 1, 1), "4 positive integers"),
    ("w_dim", 0, "w_dim=0"),
])
def test_bad_sizes_are_one_line(field, value, fragment):
    with pytest.raises(HyperdomainError) as e:
        EncoderConfig.from_dict({"kind": "e4e", **TINY_SIZES, field: value}, "x.safetensors: config")
    _one_line(e, "x.safetensors: config", fragment)
