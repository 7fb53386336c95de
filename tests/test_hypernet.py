"""HyperDomainNet: architecture, files, and import of the authors' released hypernetworks."""
import collections
import os
import sys
import types
import typing

import pytest
import torch
import torch.nn.functional as F

from hyperdomain.model.domain import Domain
from hyperdomain.errors import HyperdomainError
from hyperdomain.model.paper_checkpoints import import_hypernet
from hyperdomain.model.hypernet import HyperConfig, HyperDomainNet
from hyperdomain.model.describe import describe
from hyperdomain.model.paper_checkpoints import import_checkpoint, paper_conv_dims
from hyperdomain.files.restricted_unpickler import load_torch_file, load_torch_file_omegaconf

TINY = HyperConfig(domain_dims=(6, 6, 5, 3), input_dim=12, width=10, block_width=8, backbone_blocks=2, head_blocks=1)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def _randomise(net: HyperDomainNet, seed: int = 0) -> HyperDomainNet:
    """Non-trivial weights and BatchNorm statistics, so every term of the forward matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(5)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("weight") and t.ndim == 1:  # BatchNorm scale
                t.copy_(1 + 0.2 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(torch.randn(t.shape, generator=g) / (t.shape[-1] ** 0.5 if t.ndim == 2 else 5))
    return net


def _emb(n: int, dim: int, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1).to(dtype)


# --------------------------------------------------------------------------- config and architecture
def test_config_round_trip_and_validation():
    assert HyperConfig.from_dict(TINY.to_dict()) == TINY
    assert TINY.to_dict()["domain_dims"] == [6, 6, 5, 3] and TINY.num_domain_params == 20
    with pytest.raises(HyperdomainError, match="unknown hypernetwork config keys"):
        HyperConfig.from_dict({**TINY.to_dict(), "depth": 3})
    with pytest.raises(HyperdomainError, match="hypernetwork config lacks 'domain_dims'"):
        HyperConfig.from_dict({k: v for k, v in TINY.to_dict().items() if k != "domain_dims"})
    with pytest.raises(HyperdomainError, match="activation 'gelu'"):
        HyperConfig(domain_dims=(4,), activation="gelu")
    with pytest.raises(HyperdomainError):
        HyperConfig(domain_dims=())


def test_parameter_names_are_the_papers():
    keys = set(HyperDomainNet(TINY).state_dict())
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    lin = ("weight", "bias")

    def block(p):
        return ({f"{p}.input_block.0.{s}" for s in lin} | {f"{p}.input_block.1.{s}" for s in bn}
                | {f"{p}.second_block.0.{s}" for s in lin} | {f"{p}.second_block.1.{s}" for s in bn})

    want = {f"backbone.backbone.0.lin.{s}" for s in lin} | {f"backbone.backbone.0.bn.{s}" for s in bn}
    for i in (1, 2):
        want |= block(f"backbone.backbone.{i}")
    for k in range(4):
        want |= block(f"heads.conv_{k}.in.0") | {f"heads.conv_{k}.in.1.{s}" for s in lin}
    assert keys == want


def _count(cfg: HyperConfig) -> int:
    def lin(a, b):
        return a * b + b

    w, i = cfg.width, cfg.block_width
    block = lin(w, i) + 2 * i + lin(i, w) + 2 * w
    return (lin(cfg.input_dim, w) + 2 * w + cfg.backbone_blocks * block
            + sum(cfg.head_blocks * block + lin(w, c) for c in cfg.domain_dims))


def test_shapes_and_parameter_count():
    net = HyperDomainNet(TINY).eval()
    assert sum(p.numel() for p in net.parameters()) == _count(TINY)
    assert net(_emb(3, 12)).shape == (3, 20)
    with pytest.raises(HyperdomainError, match=r"\[B, 12\], got \[3, 11\]") as e:
        net(_emb(3, 11))
    _one_line(e)
    # the design's default at 1024 px: 3 residual blocks in the backbone, 1 per head, 6048 outputs
    big = HyperConfig(domain_dims=paper_conv_dims(1024))
    assert (big.backbone_blocks, big.head_blocks, big.num_domain_params) == (3, 1, 6048)
    assert _count(big) == 13_913_504


def test_fresh_net_gives_near_zero_domains_and_batchnorm_modes():
    torch.manual_seed(0)
    net = HyperDomainNet(TINY)
    for m in net.modules():
        if isinstance(m, torch.nn.Linear):  # Xavier-uniform times 0.01, zero bias
            bound = 0.01 * (6 / sum(m.weight.shape)) ** 0.5
            assert m.weight.abs().max() <= bound and m.weight.abs().max() > bound / 2
            assert not m.bias.any()
    e = _emb(8, 12)
    net.eval()
    assert net(e).abs().max() < 1e-3  # running stats (0, 1): near-identity BatchNorm
    rm = net.backbone.backbone[0].bn.running_mean
    assert not rm.any()
    net.train()
    d = net(e)  # batch statistics: activations are renormalised, the domain stays small
    assert d.abs().max() < 0.1 and d.abs().max() > 1e-4
    assert net.backbone.backbone[0].bn.num_batches_tracked == 1 and rm.any()
    # in training mode a sample's output depends on its batch; in eval mode it does not
    assert not torch.allclose(net(e[:4])[0], net(e)[0])
    net.eval()
    assert torch.allclose(net(e[:1])[0], net(e)[0], atol=1e-7)
    net.train()
    with pytest.raises(HyperdomainError, match="at least 2") as err:
        net(e[:1])
    _one_line(err)


def test_domain_from_embedding():
    net = _randomise(HyperDomainNet(TINY, meta={"generator": "tiny", "generator_fingerprint": "abc"})).train()
    e = _emb(1, 12)[0]
    d = net.domain_from_embedding(e, prompt="Anime painting")
    assert isinstance(d, Domain) and d.dims == TINY.domain_dims and net.training
    assert d.meta["generator_fingerprint"] == "abc" and d.meta["prompt"] == "Anime painting"
    assert torch.allclose(d.vector, net.eval()(e[None])[0].detach())


# --------------------------------------------------------------------------- files
def test_save_load_round_trip_is_bit_identical(tmp_path):
    net = _randomise(HyperDomainNet(TINY, meta={"generator": "tiny"}))
    path = net.save(tmp_path / "hdn.safetensors", meta={"generator_fingerprint": "f00", "clip_model": "ViT-B/32"})
    assert net.meta == {"generator": "tiny", "generator_fingerprint": "f00", "clip_model": "ViT-B/32"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    back = HyperDomainNet.load(path)
    assert not back.training and back.config == TINY
    assert back.meta["generator_fingerprint"] == "f00" and back.meta["file"] == str(path)
    e = _emb(5, 12)
    assert torch.equal(back(e), net.eval()(e))
    for k, t in net.state_dict().items():
        assert torch.equal(back.state_dict()[k], t), k
    # float64 networks keep their precision
    net64 = _randomise(HyperDomainNet(TINY)).double()
    back64 = HyperDomainNet.load(net64.save(tmp_path / "hdn64.safetensors"))
    e64 = _emb(3, 12, dtype=torch.float64)
    assert torch.equal(back64(e64), net64.eval()(e64))


def test_a_network_is_checked_against_the_generator_it_is_loaded_for(tmp_path, tiny_G):
    from conftest import make_tiny_generator

    net = HyperDomainNet(HyperConfig(domain_dims=tiny_G.domain_dims, input_dim=12, width=10, block_width=8),
                         {"generator": "tiny", "generator_fingerprint": tiny_G.fingerprint})
    path = net.save(tmp_path / "net.safetensors")
    assert HyperDomainNet.load(path, generator=tiny_G).domain_dims == tiny_G.domain_dims
    other = make_tiny_generator(seed=5)  # the same layout, other weights
    with pytest.raises(HyperdomainError, match=r"net\.safetensors was trained for generator 'tiny' \(fingerprint "
                                               rf"{tiny_G.fingerprint}\), not for 'tiny' \(fingerprint {other.fingerprint}\)"
                                               r".*--no-check"):
        HyperDomainNet.load(path, generator=other)
    assert HyperDomainNet.load(path, generator=other, check=False).meta["generator_fingerprint"] == tiny_G.fingerprint
    small = HyperDomainNet(TINY, {"generator": "toy"}).save(tmp_path / "small.safetensors")
    with pytest.raises(HyperdomainError, match=r"small\.safetensors makes domains of 20 numbers in 4 convs, but "
                                               r"generator 'tiny' needs 224 in 7 convs"):
        HyperDomainNet.load(small, generator=tiny_G, check=False)  # the layout is checked whatever check says


def test_bad_files_give_one_line_errors(tmp_path):
    with pytest.raises(HyperdomainError, match="no such hypernetwork file") as e:
        HyperDomainNet.load(tmp_path / "absent.safetensors")
    _one_line(e)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(64))
    with pytest.raises(HyperdomainError, match="not a readable safetensors") as e:
        HyperDomainNet.load(junk)
    _one_line(e)
    good = HyperDomainNet(TINY).save(tmp_path / "good.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(HyperdomainError, match="not a readable safetensors") as e:
        HyperDomainNet.load(cut)
    _one_line(e)
    dom = Domain(torch.zeros(4), (4,)).save(tmp_path / "domain.safetensors")
    with pytest.raises(HyperdomainError, match=r"domain\.safetensors: not a hypernetwork file \(it holds .hyperdomain\.domain.") as e:
        HyperDomainNet.load(dom)
    _one_line(e)
    with pytest.raises(HyperdomainError, match="metadata is not plain JSON"):
        HyperDomainNet(TINY).save(tmp_path / "x.safetensors", meta={"bad": object()})
    assert not (tmp_path / "x.safetensors").exists()


# --------------------------------------------------------------------------- the paper's files
def _paper_state_dict(dims, backbone_depth, head_depth, width=16, inner=512, seed=0):
    """What ``mapper_registry['residual_channelin'](cfg, dims).state_dict()`` holds, filled at random.

    Written from the paper's module layout (core/mappers.py), not from ours: ``BNLinRelu`` registers
    ``bn`` before ``lin``; ``DummyResBlock`` is ``input_block=[Linear, BN, act]``,
    ``second_block=[Linear, BN]``; heads are ``heads.conv_{k}.in`` = ``head_depth - 1`` residual
    blocks then a Linear (the ViewBlock has no parameters).
    """
    g = torch.Generator().manual_seed(seed)
    sd = collections.OrderedDict()

    def lin(p, cin, cout):
        sd[f"{p}.weight"] = torch.randn(cout, cin, generator=g) / cin ** 0.5
        sd[f"{p}.bias"] = 0.1 * torch.randn(cout, generator=g)

    def bn(p, c):
        sd[f"{p}.weight"] = 1 + 0.2 * torch.randn(c, generator=g)
        sd[f"{p}.bias"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{p}.running_mean"] = 0.3 * torch.randn(c, generator=g)
        sd[f"{p}.running_var"] = torch.rand(c, generator=g) + 0.5
        sd[f"{p}.num_batches_tracked"] = torch.tensor(10000)

    def res(p):
        lin(f"{p}.input_block.0", width, inner)
        bn(f"{p}.input_block.1", inner)
        lin(f"{p}.second_block.0", inner, width)
        bn(f"{p}.second_block.1", width)

    bn("backbone.backbone.0.bn", width)  # the paper sizes it by input_dimension, equal to width
    lin("backbone.backbone.0.lin", width, width)
    for i in range(1, backbone_depth):
        res(f"backbone.backbone.{i}")
    for k, c in enumerate(dims):
        for j in range(head_depth - 1):
            res(f"heads.conv_{k}.in.{j}")
        lin(f"heads.conv_{k}.in.{head_depth - 1}", width, c)
    return sd


def _paper_forward(sd, e, backbone_depth, head_depth, n_convs):
    """The paper's mapper in eval mode, straight from the raw state dict, in float64.

    Returns the per-conv ``offsets['in']`` flattened: the ``cin_mult`` patch multiplies the
    demodulated weight by ``1 + offsets['in']``, so these are the domain vector's blocks as they are.
    """
    sd = {k: v.double() for k, v in sd.items()}

    def lin(x, p):
        return F.linear(x, sd[f"{p}.weight"], sd[f"{p}.bias"])

    def bn(x, p):
        return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                            sd[f"{p}.bias"], training=False, eps=1e-5)

    def res(x, p):
        y = F.relu(bn(lin(x, f"{p}.input_block.0"), f"{p}.input_block.1"))
        y = bn(lin(y, f"{p}.second_block.0"), f"{p}.second_block.1")
        return F.relu(y + x)

    h = bn(F.relu(lin(e, "backbone.backbone.0.lin")), "backbone.backbone.0.bn")
    for i in range(1, backbone_depth):
        h = res(h, f"backbone.backbone.{i}")
    out = []
    for k in range(n_convs):
        x = h
        for j in range(head_depth - 1):
            x = res(x, f"heads.conv_{k}.in.{j}")
        out.append(lin(x, f"heads.conv_{k}.in.{head_depth - 1}").view(e.shape[0], 1, -1, 1, 1).flatten(1))
    return torch.cat(out, dim=1)


@pytest.fixture
def fake_omegaconf(monkeypatch):
    """Classes that pickle exactly as OmegaConf 2.x's do: GLOBAL omegaconf.<mod> <Class>, NEWOBJ,
    then BUILD with the object's ``__dict__`` (``_metadata``, ``_parent``, ``_content`` / ``_val``)."""
    classes, modules = {}, {"omegaconf": types.ModuleType("omegaconf")}
    for mod, name in (("omegaconf.dictconfig", "DictConfig"), ("omegaconf.listconfig", "ListConfig"),
                      ("omegaconf.nodes", "AnyNode"), ("omegaconf.base", "Metadata"),
                      ("omegaconf.base", "ContainerMetadata")):
        classes[name] = type(name, (), {"__module__": mod})
        setattr(modules.setdefault(mod, types.ModuleType(mod)), name, classes[name])
    for mod, module in modules.items():
        monkeypatch.setitem(sys.modules, mod, module)

    def new(name, **state):
        obj = classes[name].__new__(classes[name])
        obj.__dict__.update(state)
        return obj

    def meta(key, container=None):
        common = dict(ref_type=typing.Any, optional=True, key=key, flags={}, flags_root=False,
                      resolver_cache=collections.defaultdict(dict))
        if container is None:
            return new("Metadata", object_type=None, **common)
        return new("ContainerMetadata", object_type=container, key_type=typing.Any, element_type=typing.Any, **common)

    def build(value, parent=None, key=None):
        if isinstance(value, dict):
            node = new("DictConfig", _metadata=meta(key, dict), _parent=parent)
            node._content = {k: build(v, node, k) for k, v in value.items()}
        elif isinstance(value, list):
            node = new("ListConfig", _metadata=meta(key, list), _parent=parent)
            node._content = [build(v, node, i) for i, v in enumerate(value)]
        else:
            node = new("AnyNode", _metadata=meta(key), _parent=parent, _val=value)
        return node

    return build


def _mapper_config(backbone_depth, head_depth, width=16, mapper_type="residual_channelin"):
    return {"backbone_type": "shared", "mapper_type": mapper_type, "activation": "relu", "input_dimension": width,
            "width": width, "head_depth": head_depth, "backbone_depth": backbone_depth,
            "no_coarse": False, "no_fine": False, "no_medium": False}


def _write_paper_mapper(path, sd, mapper_config, **extra):
    ckpt = {"model_type": "mapper", "mapper_config": mapper_config, "patch_key": "cin_mult", "state_dict": sd,
            "sg2_params": {"img_size": 16, "latent_size": 512, "map_layers": 8, "channel_multiplier": 2,
                           "ckpt_path": "pretrained/StyleGAN2/stylegan2-ffhq-config-f.pt"},
            "da_type": "td"}
    ckpt.update(extra)
    torch.save(ckpt, path)
    return path


def test_import_matches_the_papers_forward(tmp_path, fake_omegaconf):
    # td_multiple.yaml's depths (backbone_depth 10, head_depth 5: 9 and 4 residual blocks), a 16 px
    # generator (5 convs of 512 inputs) and a narrow width to stay small; inner width 512 as in the paper
    dims = paper_conv_dims(16)
    sd = _paper_state_dict(dims, 10, 5)
    config = fake_omegaconf({"exp": {"seed": 12}, "training": {"patch_key": "cin_mult",
                                                               "mapper_config": _mapper_config(10, 5)},
                             "optimization_setup": {"optimizer": {"lr": 5e-5, "betas": [0.0, 0.999]}}})
    mapper_config = config._content["training"]._content["mapper_config"]  # pickled with its parents
    path = _write_paper_mapper(tmp_path / "mapper_large_resample_td.pt", sd, mapper_config)
    found = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    assert {"omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig", "omegaconf.nodes.AnyNode",
            "omegaconf.base.ContainerMetadata", "typing.Any", "collections.defaultdict"} <= found
    with pytest.raises(HyperdomainError, match="refused to load 'omegaconf"):
        load_torch_file(path)  # the plain reader does not know OmegaConf
    assert load_torch_file_omegaconf(path)["mapper_config"] == _mapper_config(10, 5)
    # the other readers of the paper's files see the mapper too, instead of refusing its config
    assert describe(path)["model_type"] == "mapper"
    with pytest.raises(HyperdomainError, match="import_hypernet"):
        import_checkpoint(path)

    net = import_hypernet(path)
    assert not net.training
    cfg = net.config
    assert (cfg.backbone_blocks, cfg.head_blocks, cfg.width, cfg.block_width) == (9, 4, 16, 512)
    assert cfg.domain_dims == dims and cfg.input_dim == 16 and cfg.activation == "relu"
    assert net.meta["generator"] == "ffhq" and net.meta["resolution"] == 16 and net.meta["input"] == "text"
    assert net.meta["paper_mapper_config"]["backbone_depth"] == 10
    e = _emb(3, 16, dtype=torch.float64)
    want = _paper_forward(sd, e, 10, 5, len(dims))
    got = net.double()(e)
    assert got.shape == (3, sum(dims))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert want.abs().max() > 0.1  # a non-trivial domain, so the comparison means something


def test_import_base_depths_plain_dict_config(tmp_path):
    # td_multiple_base.yaml's depths (4 and 2: 3 residual blocks, 1 per head); no generator recorded
    dims = (5, 5, 3)
    sd = _paper_state_dict(dims, 4, 2, width=8, inner=12, seed=3)
    path = _write_paper_mapper(tmp_path / "m.pt", sd, _mapper_config(4, 2, width=8), sg2_params={})
    net = import_hypernet(path)
    assert (net.config.backbone_blocks, net.config.head_blocks, net.config.domain_dims) == (3, 1, dims)
    e = _emb(2, 8, dtype=torch.float64)
    torch.testing.assert_close(net.double()(e), _paper_forward(sd, e, 4, 2, 3), rtol=1e-6, atol=1e-6)
    # the import round-trips through our own format
    back = HyperDomainNet.load(net.save(tmp_path / "m.safetensors"))
    assert torch.equal(back(e), net(e)) and back.meta["paper_mapper_type"] == "residual_channelin"


def test_import_refusals(tmp_path):
    dims = (4, 4)
    sd = _paper_state_dict(dims, 2, 2, width=8, inner=8)
    path = _write_paper_mapper(tmp_path / "a.pt", sd, _mapper_config(2, 2, 8, mapper_type="residual_channelwise_sep"))
    with pytest.raises(HyperdomainError, match="'residual_channelwise_sep' is not supported") as e:
        import_hypernet(path)
    _one_line(e)
    path = _write_paper_mapper(tmp_path / "b.pt", sd, _mapper_config(4, 2, 8), sg2_params={})
    with pytest.raises(HyperdomainError, match="backbone_depth=4 but the weights have 2") as e:
        import_hypernet(path)
    _one_line(e)
    path = _write_paper_mapper(tmp_path / "c.pt", sd, _mapper_config(2, 2, 8))  # 16 px needs 5 heads of 512
    with pytest.raises(HyperdomainError, match="do not match the 16 px generator") as e:
        import_hypernet(path)
    _one_line(e)
    torch.save({"model_type": "parameterization", "state_dict": {}}, tmp_path / "d.pt")
    with pytest.raises(HyperdomainError, match="use import_checkpoint"):
        import_hypernet(tmp_path / "d.pt")
    (tmp_path / "e.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(HyperdomainError) as e:
        import_hypernet(tmp_path / "e.pt")
    _one_line(e)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_import_refuses_a_non_allowed_global(tmp_path):
    marker = tmp_path / "ran"
    sd = _paper_state_dict((4,), 1, 1, width=8, inner=8)
    path = _write_paper_mapper(tmp_path / "evil.pt", sd, {"mapper_type": "residual_channelin", "x": _Payload(marker)})
    with pytest.raises(HyperdomainError, match=r"refused to load '(posix|nt)\.system'") as e:
        import_hypernet(path)
    _one_line(e)
    assert not marker.exists()


def test_cli_import_of_a_paper_mapper(tmp_path):
    from click.testing import CliRunner

    from cli.main import main

    dims = (5, 5, 3)
    sd = _paper_state_dict(dims, 4, 2, width=8, inner=12, seed=3)
    path = _write_paper_mapper(tmp_path / "mapper_20_td.pt", sd, _mapper_config(4, 2, width=8), sg2_params={})
    out = tmp_path / "hdn.safetensors"
    r = CliRunner().invoke(main, ["import", str(path), "--out", str(out)])
    assert r.exit_code == 0 and "a hypernetwork" in r.stdout, r.output
    net = HyperDomainNet.load(out)
    assert net.meta["input_clip"] == "ViT-B-32:openai" and net.config.domain_dims == dims
    e = _emb(2, 8, dtype=torch.float64)
    torch.testing.assert_close(net.double()(e), _paper_forward(sd, e, 4, 2, 3), rtol=1e-6, atol=1e-6)
