"""The translator network (a U-Net of segmentation-models-pytorch) and its file."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from hyperdomain.errors import HyperdomainError
from hyperdomain.image.translators import TranslatorConfig, build_translator, load_translator, save_translator

TINY = TranslatorConfig(size=32, encoder="tu-resnet10t", encoder_depth=3, decoder_channels=(16, 16, 8))


def _images(n=3, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 1.8 - 0.9


def _trained(config=TINY, seed=1):
    """A network whose output is no longer the input (a few random steps)."""
    torch.manual_seed(seed)
    net = build_translator(config)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = _images(4, config.size)
    noise = torch.randn(4, config.noise_channels, config.size, config.size)
    for _ in range(2):
        loss = (net(torch.cat([x, noise], 1)) - x.flip(-1)).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def test_config_round_trip_and_bad_values():
    d = TINY.as_dict()
    assert json.loads(json.dumps(d)) == d
    assert TranslatorConfig.from_dict(d) == TINY
    for bad, says in [({"size": 36}, "multiple of 8"), ({"decoder_channels": [8, 8]}, "3 integers"),
                      ({"encoder_depth": 7}, "encoder_depth"), ({"noise_channels": -1}, "noise_channels"),
                      ({"arch": "gan"}, "arch"), ({"width": 3}, r"unknown keys \[.width.\]"),
                      ({"size": "32"}, "size must be an integer")]:
        with pytest.raises(HyperdomainError, match=says) as e:
            TranslatorConfig.from_dict({**d, **bad})
        assert "\n" not in str(e.value)


def test_unknown_encoder_is_one_line():
    with pytest.raises(HyperdomainError, match="encoder 'no-such-net'"):
        build_translator(TranslatorConfig(size=32, encoder="no-such-net", encoder_depth=3, decoder_channels=(8, 8, 8)))


def test_new_network_is_the_identity_and_maps_shapes():
    torch.manual_seed(0)
    net = build_translator(TINY).eval()
    x = _images()
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape
    assert torch.allclose(y, x, atol=1e-5)  # tanh(atanh(x) + 0)
    noisy = build_translator(TranslatorConfig(**{**TINY.as_dict(), "noise_channels": 2}))
    assert noisy(torch.cat([x, torch.randn(3, 2, 32, 32)], 1)).shape == (3, 3, 32, 32)
    with pytest.raises(HyperdomainError, match=r"\[N, 5, S, S\]"):
        noisy(x)


def test_output_stays_in_range_with_a_gradient_everywhere():
    net = build_translator(TINY)
    with torch.no_grad():
        head = net.unet.segmentation_head[0]
        head.bias.fill_(50.0)  # pushes every pixel far past 1
    x = _images().requires_grad_(False)
    y = net(x)
    assert y.max() <= 1 and y.min() >= -1
    y.sum().backward()
    assert head.bias.grad is not None and torch.isfinite(head.bias.grad).all()


def test_file_round_trip_gives_the_same_outputs(tmp_path, tiny_G):
    net = _trained()
    path = save_translator(tmp_path / "t.safetensors", net, TINY, "paired",
                           {"fingerprint": tiny_G.fingerprint, "name": tiny_G.name},
                           {"digest": "abcd", "name": "pixar"}, {"iterations": 2})
    T = load_translator(path, generator=tiny_G)
    assert T.config == TINY and T.method == "paired" and T.meta["iterations"] == 2
    assert T.domain == {"digest": "abcd", "name": "pixar"} and T.generator["fingerprint"] == tiny_G.fingerprint
    x = _images()
    with torch.no_grad():
        want = net(x)
    assert torch.equal(T(x), want)
    assert T(torch.nn.functional.interpolate(x, size=64)).shape == (3, 3, 32, 32)  # resized to its size


def test_noise_is_drawn_from_the_seed(tmp_path):
    config = TranslatorConfig(**{**TINY.as_dict(), "noise_channels": 1})
    path = save_translator(tmp_path / "t.safetensors", _trained(config), config, "not", "fp", "dd")
    T = load_translator(path)
    x = _images()
    assert torch.equal(T(x, seed=3), T(x, seed=3))
    assert not torch.equal(T(x, seed=3), T(x, seed=4))


def test_translator_for_another_generator_is_refused(tmp_path, tiny_G):
    path = save_translator(tmp_path / "t.safetensors", _trained(), TINY, "paired",
                           {"fingerprint": "0123456789abcdef", "name": "ffhq"}, "dd")
    with pytest.raises(HyperdomainError, match=r"trained on generator 'ffhq' \(fingerprint 0123456789abcdef\), not on "
                                               r"'tiny'") as e:
        load_translator(path, generator=tiny_G)
    assert "\n" not in str(e.value)
    assert load_translator(path, generator=tiny_G, check=False).method == "paired"


def test_bad_files_are_one_line(tmp_path):
    path = save_translator(tmp_path / "t.safetensors", _trained(), TINY, "paired", "fp", "dd")
    tensors = load_file(path)
    meta = json.loads(json.dumps(__import__("safetensors").safe_open(str(path), "pt").metadata()))
    name = sorted(tensors)[0]

    def crafted(change_tensors=None, change_meta=None):
        t, m = dict(tensors), dict(meta)
        (change_tensors or (lambda _: None))(t)
        m.update(change_meta or {})
        out = tmp_path / f"crafted{len(list(tmp_path.iterdir()))}.safetensors"
        save_file(t, str(out), m)
        return out

    def nan(t):
        t[name] = t[name].clone()
        t[name].view(-1)[0] = float("nan")

    def reshape(t):
        t[name] = torch.zeros(3, 3)

    def drop(t):
        del t[name]

    cases = [(crafted(nan), "holds 1 non-finite"), (crafted(reshape), r"has shape \[3, 3\]"),
             (crafted(drop), "lacks"), (crafted(change_meta={"format": "hyperdomain.domain"}), "not a translator file"),
             (crafted(change_meta={"format_version": "9"}), "format version '9'"),
             (crafted(change_meta={"method": "magic"}), "method must be one of"),
             (crafted(change_meta={"config": json.dumps({**TINY.as_dict(), "size": 33})}), "size must be a multiple"),
             (crafted(change_meta={"config": "{"}), "'config' is not JSON")]
    for bad, says in cases:
        with pytest.raises(HyperdomainError, match=says) as e:
            load_translator(bad)
        assert str(e.value).startswith(str(bad)) and "\n" not in str(e.value)
    with pytest.raises(HyperdomainError, match="no such translator file"):
        load_translator(tmp_path / "none.safetensors")


def test_import_hyperdomain_does_not_import_the_unet_library():
    code = "import sys, hyperdomain; print('segmentation_models_pytorch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
