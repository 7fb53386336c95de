import json

import pytest
import torch

from hyperdomain.model.config import GeneratorConfig
from hyperdomain.model.domain import Domain, mix
from hyperdomain.errors import HyperdomainError
from hyperdomain.files.atomic import _umask

from conftest import make_tiny_generator


def _random_domain(G, seed=0, **meta):
    g = torch.Generator().manual_seed(seed)
    return Domain(0.3 * torch.randn(G.num_domain_params, generator=g), G.domain_dims,
                  {"generator": G.name, "generator_fingerprint": G.fingerprint, **meta})


def test_save_load_roundtrip_is_bit_identical(tmp_path, tiny_G):
    d = _random_domain(tiny_G, prompt="3D render in the style of Pixar", iterations=300, seed=0)
    path = d.save(tmp_path / "pixar.safetensors")
    back = Domain.load(path, generator=tiny_G)
    assert torch.equal(back.vector, d.vector) and back.vector.dtype == torch.float32
    assert back.dims == tiny_G.domain_dims
    assert back.meta["prompt"] == "3D render in the style of Pixar" and back.meta["iterations"] == 300
    z = torch.randn(2, 32)
    assert torch.equal(tiny_G(z, domain=back), tiny_G(z, domain=d))
    assert (tiny_G(z, domain=back) - tiny_G(z)).abs().max() > 1e-2


def test_file_layout_is_plain_safetensors(tmp_path, tiny_G):
    from safetensors import safe_open

    d = _random_domain(tiny_G, prompt="Anime painting")
    d.save(tmp_path / "a.safetensors")
    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as f:
        assert list(f.keys()) == ["domain"]
        md = f.metadata()
        assert f.get_tensor("domain").shape == (tiny_G.num_domain_params,)
    assert md["format"] == "hyperdomain.domain" and json.loads(md["dims"]) == list(tiny_G.domain_dims)
    assert json.loads(md["meta"])["generator_fingerprint"] == tiny_G.fingerprint


def test_zeros_is_the_source(tiny_G):
    d = Domain.zeros(tiny_G, prompt="Photo")
    assert len(d) == tiny_G.num_domain_params and d.vector.abs().sum() == 0
    assert d.meta["generator_fingerprint"] == tiny_G.fingerprint


def test_arithmetic(tiny_G):
    a, b, c = (_random_domain(tiny_G, seed=s) for s in range(3))
    torch.testing.assert_close(a.scaled(0.5).vector, 0.5 * a.vector)
    torch.testing.assert_close(a.lerp(b, 0.25).vector, 0.75 * a.vector + 0.25 * b.vector)
    torch.testing.assert_close(mix([a, b, c], [0.2, 0.3, 0.5]).vector,
                               0.2 * a.vector + 0.3 * b.vector + 0.5 * c.vector)
    torch.testing.assert_close(mix([a, b]).vector, (a.vector + b.vector) / 2)
    assert [t.numel() for t in a.blocks()] == list(tiny_G.domain_dims)
    z = torch.randn(1, 32)
    assert torch.equal(tiny_G(z, domain=a.scaled(0.0)), tiny_G(z))
    with pytest.raises(HyperdomainError, match="2 domains but 3 weights"):
        mix([a, b], [1, 2, 3])


def test_mismatched_generator_names_both(tmp_path, tiny_G, caplog):
    other = make_tiny_generator(config=GeneratorConfig(resolution=64, style_dim=32, n_mlp=2, channels=(32,) * 5))
    other.name = "tiny64"
    d = _random_domain(tiny_G)
    path = d.save(tmp_path / "d.safetensors")
    with pytest.raises(HyperdomainError) as e:
        Domain.load(path, generator=other)
    msg = str(e.value)
    assert "224" in msg and "288" in msg and "'tiny64'" in msg and "'tiny'" in msg and str(path) in msg
    # same layout, other weights: the fingerprint check refuses unless told not to
    same_shape = make_tiny_generator(seed=5)
    with pytest.raises(HyperdomainError, match="fingerprint"):
        Domain.load(path, generator=same_shape)
    assert len(Domain.load(path, generator=same_shape, check=False)) == 224
    with caplog.at_level("WARNING"):
        same_shape(torch.randn(1, 32), domain=d)  # called directly: a warning, not an error
    assert "fingerprint" in caplog.text


def test_bad_files(tmp_path):
    with pytest.raises(HyperdomainError, match="no such domain file"):
        Domain.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(HyperdomainError, match="junk.safetensors: not a readable"):
        Domain.load(junk)
    from safetensors.torch import save_file

    save_file({"weights": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(HyperdomainError, match="expected one tensor 'domain'"):
        Domain.load(tmp_path / "other.safetensors")
    with pytest.raises(HyperdomainError, match="dims sum to 5"):
        Domain(torch.zeros(4), (2, 3))


def test_save_is_atomic_and_reports_unwritable(tmp_path, tiny_G):
    d = _random_domain(tiny_G)
    target = tmp_path / "d.safetensors"
    d.save(target)
    before = target.read_bytes()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(HyperdomainError, match="cannot write here"):
        d.save(blocker / "d.safetensors")  # parent is a file
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()

