"""Crafted, malformed and non-finite files and numbers: each refused with one line (issue 15, cases 5, 6, 8)."""
import json
import shutil
import zipfile

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import hyperdomain as hd
from hyperdomain.errors import HyperdomainError
from hyperdomain.files.run_checkpoints import CHECKPOINT
from hyperdomain.model.hypernet import HyperConfig, HyperDomainNet

from conftest import assert_user_error, cli, make_tiny_generator


def _rewrite(src, dst, tensors=None, **meta):
    """``src`` (a safetensors file) written to ``dst`` with some tensors and metadata fields replaced
    (a value of None drops the field)."""
    with safe_open(str(src), framework="pt") as f:
        header = dict(f.metadata())
        old = {k: f.get_tensor(k) for k in f.keys()}
    for k, v in meta.items():
        if v is None:
            header.pop(k, None)
        else:
            header[k] = v
    save_file(tensors if tensors is not None else old, str(dst), metadata=header)
    return dst


@pytest.fixture
def domain_file(tmp_path, tiny_G):
    d = hd.Domain(torch.randn(tiny_G.num_domain_params) * 0.1, tiny_G.domain_dims, {"prompt": "Sketch"})
    return d.save(tmp_path / "d.safetensors")


@pytest.mark.parametrize("field, value, fragment", [
    ("meta", "[1, 2]", "'meta' is a list, expected a dict"),
    ("meta", "null", "'meta' is a NoneType, expected a dict"),
    ("meta", "{not json", "'meta' is not JSON"),
    ("meta", "[" * 100_000 + "]" * 100_000, "'meta' is not JSON"),  # json's recursion limit
    ("dims", '"32,32"', "'dims' is a str, expected a list"),
    ("dims", '{"a": 1}', "'dims' is a dict, expected a list"),
    ("dims", '["32", "32"]', "'dims' must be a list of positive integers"),
    ("dims", "[]", "'dims' must be a list of positive integers"),
    ("dims", None, "lacks 'dims'"),
    ("format_version", "two", "format version 'two'"),
    ("format_version", "1e9", "format version '1e9'"),
])
def test_malformed_domain_metadata_is_one_line(tmp_path, domain_file, field, value, fragment):
    bad = _rewrite(domain_file, tmp_path / "bad.safetensors", **{field: value})
    with pytest.raises(HyperdomainError, match="bad.safetensors") as e:
        hd.Domain.load(bad)
    assert fragment in str(e.value) and "\n" not in str(e.value)
    assert_user_error(cli("info", bad), "bad.safetensors", fragment)


@pytest.mark.parametrize("value, count", [(float("nan"), 3), (float("inf"), 3), (-float("inf"), 1)])
def test_non_finite_domains_are_refused_with_their_count(tmp_path, tiny_G, domain_file, tiny_ckpt, value, count):
    v = hd.Domain.load(domain_file).vector.clone()
    v[:count] = value
    bad = _rewrite(domain_file, tmp_path / "bad.safetensors", tensors={"domain": v})
    with pytest.raises(HyperdomainError, match=rf"bad.safetensors: domain file tensor 'domain' holds {count} non-finite"):
        hd.Domain.load(bad)
    result = cli("sample", "--generator", tiny_ckpt[0], "--domain", bad, "-n", 1, "--out", tmp_path / "g.png")
    assert_user_error(result, f"holds {count} non-finite")
    assert not (tmp_path / "g.png").exists()


def test_domain_dtypes_are_converted_or_refused(tmp_path, domain_file):
    v = hd.Domain.load(domain_file).vector
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        f = _rewrite(domain_file, tmp_path / "half.safetensors", tensors={"domain": v.to(dtype)})
        loaded = hd.Domain.load(f).vector
        assert loaded.dtype == torch.float32
        torch.testing.assert_close(loaded, v.to(dtype).float(), rtol=0, atol=0)
    for dtype in (torch.int64, torch.bool):
        f = _rewrite(domain_file, tmp_path / "int.safetensors", tensors={"domain": v.to(dtype)})
        with pytest.raises(HyperdomainError, match=f"is {str(dtype)[6:]}, expected floating point"):
            hd.Domain.load(f)


def test_non_finite_generators_are_refused(tmp_path, tiny_G, tiny_ckpt):
    sd = tiny_G.state_dict()
    name = next(k for k in sd if k.endswith("weight") and sd[k].numel() > 4)
    sd[name] = sd[name].clone()
    sd[name].view(-1)[:4] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save({"g_ema": sd}, path)
    with pytest.raises(HyperdomainError, match=rf"nan.pt: the generator holds 4 non-finite numbers .*4 in {name}"):
        hd.load_generator(path)
    assert_user_error(cli("sample", "--generator", path, "-n", 1, "--out", tmp_path / "g.png"), "non-finite")
    torch.save({"g_ema": tiny_G.state_dict(), "latent_avg": torch.full((tiny_G.w_dim,), float("inf"))}, path)
    with pytest.raises(HyperdomainError, match="holds 32 non-finite numbers .*latent_avg"):
        hd.load_generator(path)


def _deep_pickle(depth: int) -> bytes:
    """A protocol-2 pickle of ``depth`` nested lists (the unpickler builds it without recursing)."""
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def test_deeply_nested_pickles_are_one_line(tmp_path):
    raw = tmp_path / "deep.pkl"
    raw.write_bytes(_deep_pickle(50_000))
    zipped = tmp_path / "deep.pt"
    with zipfile.ZipFile(zipped, "w") as z:  # torch.save's zip layout around the same stream
        z.writestr("deep/data.pkl", _deep_pickle(50_000))
        z.writestr("deep/byteorder", "little")
        z.writestr("deep/version", "3\n")
    shallow = tmp_path / "shallow.pt"
    torch.save([[[[1]]]], shallow)
    assert torch.load(zipped, weights_only=True) is not None  # a valid stream, only deep
    for path in (raw, zipped):
        for args in (("info", path), ("sample", "--generator", path, "-n", 1, "--out", tmp_path / "g.png")):
            assert_user_error(cli(*args), path.name, "nested more than 100 deep")
    assert_user_error(cli("import", zipped, "--out", tmp_path / "d.safetensors"), "nested more than 100 deep")
    # a shallow file of the wrong kind is refused for what it is, not for its depth
    assert_user_error(cli("info", shallow), "not a StyleGAN2 generator checkpoint")


def test_pickle_nesting_just_under_the_bound_still_loads(tmp_path):
    from hyperdomain.files.restricted_unpickler import MAX_NESTING, load_torch_file

    obj = 1
    for _ in range(MAX_NESTING):
        obj = [obj]
    torch.save(obj, tmp_path / "ok.pt")
    assert load_torch_file(tmp_path / "ok.pt") == obj
    torch.save([obj], tmp_path / "deep.pt")
    with pytest.raises(HyperdomainError, match="nested more than"):
        load_torch_file(tmp_path / "deep.pt")


@pytest.fixture(scope="module")
def pristine_run(tmp_path_factory, tiny_clip):
    """A run folder of 2 adaptation steps of the tiny generator, made once for the module."""
    out = tmp_path_factory.mktemp("crafted") / "run"
    hd.adapt(make_tiny_generator(), "Sketch", clip=[tiny_clip], iters=2, batch=2, out_dir=out, progress=False)
    return out


@pytest.fixture
def run_checkpoint(tmp_path, pristine_run):
    """The checkpoint of a copy of ``pristine_run`` of this test's own, to damage."""
    out = shutil.copytree(pristine_run, tmp_path / "run")
    return out / CHECKPOINT


def _meta(path):
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["meta"])


@pytest.mark.parametrize("change, fragment", [
    (lambda m: m.pop("config"), "lacks the run's 'config'"),
    (lambda m: m.update(step="2"), "'step' must be an integer >= 0"),
    (lambda m: m.update(step=1.5), "'step' must be an integer >= 0"),
    (lambda m: m.update(step=-1), "'step' must be an integer >= 0"),
    (lambda m: m.pop("optimizer_groups"), "holds no optimizer state"),
    (lambda m: m.pop("generator_fingerprint"), "lacks the generator's fingerprint"),
])
def test_malformed_run_checkpoints_are_refused(tmp_path, tiny_G, tiny_clip, run_checkpoint, change, fragment):
    meta = _meta(run_checkpoint)
    change(meta)
    _rewrite(run_checkpoint, run_checkpoint, meta=json.dumps(meta))
    with pytest.raises(HyperdomainError, match="checkpoint") as e:
        hd.adapt(tiny_G, clip=[tiny_clip], resume=run_checkpoint.parent, progress=False)
    assert fragment in str(e.value)


def test_checkpoints_without_optimizer_tensors_or_with_nan_are_refused(tmp_path, tiny_G, tiny_clip, run_checkpoint):
    with safe_open(str(run_checkpoint), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    no_optim = {k: v for k, v in tensors.items() if not k.startswith("optim.")}
    assert len(no_optim) < len(tensors)
    _rewrite(run_checkpoint, run_checkpoint, tensors=no_optim)
    with pytest.raises(HyperdomainError, match="holds no optimizer state"):
        hd.adapt(tiny_G, clip=[tiny_clip], resume=run_checkpoint.parent, progress=False)
    tensors["domain"] = tensors["domain"].clone()
    tensors["domain"][0] = float("nan")
    _rewrite(run_checkpoint, run_checkpoint, tensors=tensors)
    with pytest.raises(HyperdomainError, match="checkpoint tensor 'domain' holds non-finite numbers"):
        hd.adapt(tiny_G, clip=[tiny_clip], resume=run_checkpoint.parent, progress=False)


@pytest.mark.parametrize("args, fragment", [
    (("sample", "--truncation", "nan"), "'nan' is not a finite number"),
    (("sample", "--truncation", "inf"), "'inf' is not a finite number"),
    (("sample", "--seed", str(2**64 + 1)), "--seed"),
    (("sample", "--seed", "-1"), "--seed"),
    (("sample", "--device", "cpu:3"), "--device: expected auto, cpu or cuda:N, got 'cpu:3'"),
    (("sample", "--device", "meta"), "got 'meta'"),
    (("adapt", "-t", "x", "--lr", "nan"), "'nan' is not a finite number"),
    (("adapt", "-t", "x", "--mixing", "nan"), "'nan' is not a finite number"),
    (("train-hyper", "--lr", "inf"), "'inf' is not a finite number"),
    (("train-hyper", "--crop", "nan"), "'nan' is not a finite number"),
    (("train-hyper", "--width", "1000000"), "--width"),
    (("evaluate", "--truncation", "nan"), "'nan' is not a finite number"),
])
def test_non_finite_and_out_of_range_options_are_refused(tmp_path, tiny_ckpt, args, fragment):
    command, rest = args[0], args[1:]
    result = cli(command, "--generator", tiny_ckpt[0], *rest)
    assert_user_error(result, fragment)


def test_seed_at_the_bound_works(tiny_G):
    a = tiny_G.sample(1, seed=2**63 - 1)
    assert torch.isfinite(a).all()


def test_hypernetwork_size_is_known_before_allocating(tiny_G):
    for width, blocks in ((16, (1, 1)), (64, (2, 0)), (8, (0, 3))):
        cfg = HyperConfig(domain_dims=tiny_G.domain_dims, input_dim=32, width=width, backbone_blocks=blocks[0],
                          head_blocks=blocks[1])
        net = HyperDomainNet(cfg)
        counted = sum(p.numel() for p in net.parameters())
        assert cfg.num_parameters == counted, (width, blocks)


def test_huge_hypernetworks_are_refused_before_allocating(tiny_G, tiny_clip, monkeypatch):
    from hyperdomain.training import hyper

    def no_allocation(*args, **kwargs):
        raise AssertionError("the network was allocated")

    monkeypatch.setattr(hyper, "HyperDomainNet", no_allocation)
    with pytest.raises(HyperdomainError, match=r"--width 200000: the hypernetwork would have .*G parameters"):
        hd.train_hyper(tiny_G, clip=[tiny_clip], input_clip=tiny_clip, progress=False, iters=1, batch=2,
                       width=200_000, test_domains=None)


def test_non_finite_hypernetworks_and_latents_are_refused(tmp_path, tiny_G):
    cfg = HyperConfig(domain_dims=tiny_G.domain_dims, input_dim=32, width=16)
    path = HyperDomainNet(cfg).save(tmp_path / "h.safetensors")
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    name = next(k for k, t in tensors.items() if t.is_floating_point())
    tensors[name] = tensors[name].clone().fill_(float("nan"))
    bad = _rewrite(path, tmp_path / "bad.safetensors", tensors=tensors)
    assert_user_error(cli("info", bad), "bad.safetensors", f"tensor '{name}' holds", "non-finite")
    bad = _rewrite(path, tmp_path / "bad2.safetensors", config="[]")
    assert_user_error(cli("info", bad), "'config' is a list, expected a dict")
