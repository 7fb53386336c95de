"""Importing a released e4e / ReStyle checkpoint: checked against the generator it will be used with
(or its decoder offered as that generator), written as our encoder file; bad releases one line each,
nothing written. Release-shaped files at reduced size (an 8 px decoder, 4 style layers) come from
test_encoders' builder."""
from __future__ import annotations

import torch
import pytest

import hyperdomain as hd
from conftest import assert_user_error, cli, make_tiny_generator
from hyperdomain.errors import HyperdomainError
from hyperdomain.image.encoders import KINDS, load_encoder
from test_encoders import DECODER, MARKER, _Evil, _release, _save


def _G(seed: int = 0):
    return make_tiny_generator(config=DECODER, seed=seed)


@pytest.mark.parametrize("kind", KINDS)
def test_a_release_is_checked_against_its_generator(tmp_path, kind):
    G = _G()
    path = _save(tmp_path, _release(kind))
    enc, got = hd.import_encoder(path, G)
    assert got is G and enc.config.kind == kind and enc.meta["generator_fingerprint"] == G.fingerprint
    enc, decoder = hd.import_encoder(path)  # no generator: the decoder is it, weight for weight
    assert decoder.fingerprint == G.fingerprint and decoder is not G
    assert all(torch.equal(a, b) for a, b in zip(decoder.state_dict().values(), G.state_dict().values()))


def test_import_writes_the_encoder_and_the_decoder_as_a_generator(tmp_path):
    G = _G()
    ckpt = _release("restyle-psp", latent_avg=torch.randn(512).expand(4, 512))  # the generator's, per layer
    enc_out, gen_out = tmp_path / "enc.safetensors", tmp_path / "g.safetensors"
    hd.import_encoder(_save(tmp_path, ckpt), out=enc_out, generator_out=gen_out)
    back = load_encoder(enc_out)
    assert back.meta["generator_fingerprint"] == G.fingerprint and back.meta["source"] == "release.pt"
    assert back.config.kind == "restyle-psp" and back.config.n_iters == 5
    G2 = hd.load_generator(gen_out)
    assert G2.fingerprint == G.fingerprint
    assert torch.equal(G2.mean_latent(), ckpt["latent_avg"][0])  # the release's average latent, not a new mean


def _refused(tmp_path, ckpt, *fragments, generator=None):
    out, gout = tmp_path / "enc.safetensors", tmp_path / "g.safetensors"
    with pytest.raises(HyperdomainError) as e:
        hd.import_encoder(_save(tmp_path, ckpt), generator, out=out, generator_out=gout)
    msg = str(e.value)
    assert "\n" not in msg and all(f in msg for f in fragments), msg
    assert not out.exists() and not gout.exists()


def test_bad_releases_are_refused_in_one_line_and_nothing_is_written(tmp_path):
    ckpt = _release("e4e")
    del ckpt["state_dict"]["encoder.styles.2.linear.weight"]
    _refused(tmp_path, ckpt, "no tensor 'encoder.styles.2.linear.weight'")
    ckpt = _release("restyle-e4e")
    ckpt["state_dict"]["encoder.styles.0.linear.weight"] = torch.zeros(512, 256)
    _refused(tmp_path, ckpt, "'encoder.styles.0.linear.weight' has shape [512, 256], expected [512, 512]")
    ckpt = _release("e4e")
    ckpt["state_dict"]["decoder.conv1.conv.weight"] = torch.full_like(ckpt["state_dict"]["decoder.conv1.conv.weight"],
                                                                     float("nan"))
    _refused(tmp_path, ckpt, "'decoder.conv1.conv.weight' holds", "non-finite")
    # a decoder of another generator: both fingerprints named
    other = _G(seed=1)
    _refused(tmp_path, _release("restyle-psp"), f"decoder is generator fingerprint {_G().fingerprint}",
             f"({other.fingerprint})", generator=other)
    # no decoder and no generator: nothing to tie the encoder to
    ckpt = _release("e4e")
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")}
    _refused(tmp_path, ckpt, "carries no decoder", "give the generator")
    # a generator of another W+ shape
    _refused(tmp_path, _release("e4e"), "W+ [4, 512]", "takes [8, 32]", generator=make_tiny_generator())


def test_pickled_code_never_runs_and_nothing_is_written(tmp_path):
    marker = tmp_path / MARKER
    ckpt = _release("e4e")
    ckpt["opts"]["hook"] = _Evil(marker)
    _refused(tmp_path, ckpt, "refused to load")
    r = cli("import", _save(tmp_path, ckpt, "evil.pt"), "--out", tmp_path / "e.safetensors")
    assert_user_error(r, "refused to load")
    assert not marker.exists(), "a pickle ran code"
    assert not (tmp_path / "e.safetensors").exists()


def test_import_command_detects_an_encoder_release(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERDOMAIN_HOME", str(tmp_path / "home"))
    G = _G()
    torch.save({"g_ema": G.state_dict()}, tmp_path / "gen.pt")
    torch.save({"g_ema": _G(seed=1).state_dict()}, tmp_path / "other.pt")
    release = _save(tmp_path, _release("restyle-e4e"))
    out = tmp_path / "enc.safetensors"
    r = cli("import", release, "-g", tmp_path / "gen.pt", "--out", out)
    assert r.exit_code == 0, r.output
    assert "restyle-e4e" in r.stdout and G.fingerprint in r.stdout
    assert load_encoder(out).meta["generator_fingerprint"] == G.fingerprint
    r = cli("info", out)
    assert r.exit_code == 0 and "restyle-e4e encoder" in r.stdout and G.fingerprint in r.stdout, r.output
    r = cli("info", release)
    assert r.exit_code == 0 and "encoder release" in r.stdout and "ProgressiveBackboneEncoder" in r.stdout, r.output
    assert_user_error(cli("import", release, "-g", tmp_path / "other.pt", "--out", tmp_path / "x.safetensors"),
                      "release.pt: its decoder is generator fingerprint")
    assert not (tmp_path / "x.safetensors").exists()
    assert_user_error(cli("import", release, "--out", tmp_path / "gen.pt"), "--out", "PyTorch checkpoint")
    r = cli("import", release, "--out", tmp_path / "y.safetensors", "--generator-out", tmp_path / "g.safetensors")
    assert r.exit_code == 0, r.output
    assert hd.load_generator(tmp_path / "g.safetensors").fingerprint == G.fingerprint
    torch.save({"model_type": "parameterization"}, tmp_path / "td.pt")
    assert_user_error(cli("import", tmp_path / "td.pt", "-g", "ffhq", "--out", tmp_path / "d.safetensors"),
                      "--generator is for encoder releases")
