"""Importing the HyperDomainNet authors' released single-domain checkpoints."""
import os
from collections import OrderedDict

import pytest
import torch

from hyperdomain.model.domain import Domain
from hyperdomain.errors import HyperdomainError
from hyperdomain.model.paper_checkpoints import import_checkpoint, paper_conv_dims


def _paper_state(dims, seed=0):
    """What ``BaseParametrization('cin_mult', dims).state_dict()`` holds: heads.conv_{k}.params_in."""
    g = torch.Generator().manual_seed(seed)
    return OrderedDict((f"heads.conv_{k}.params_in", 0.1 * torch.randn(1, 1, c, 1, 1, generator=g))
                       for k, c in enumerate(dims))


def _write(path, sd, **extra):
    ckpt = {"model_type": "parameterization", "patch_key": "cin_mult", "state_dict": sd,
            "sg2_params": {"img_size": 1024, "latent_size": 512, "map_layers": 8, "channel_multiplier": 2,
                           "device": "cuda:0", "checkpoint_path": "pretrained/StyleGAN2/stylegan2-ffhq-config-f.pt"},
            "da_type": "td"}
    ckpt.update(extra)
    torch.save(ckpt, path)
    return path


def test_ffhq_dims_are_the_papers():
    dims = paper_conv_dims(1024)
    assert len(dims) == 17 and sum(dims) == 6048
    assert dims[:3] == (512, 512, 512) and dims[-2:] == (64, 32)
    assert paper_conv_dims(256) == (512,) * 10 + (256, 256, 128)
    from hyperdomain.model.config import GeneratorConfig, port_channels  # the generator's own layout agrees
    for size in (256, 512, 1024):
        assert GeneratorConfig(size, 512, 8, port_channels(size)).domain_dims == paper_conv_dims(size)


def test_import_values_and_order(tmp_path):
    dims = paper_conv_dims(1024)
    sd = _paper_state(dims)
    path = _write(tmp_path / "td_pixar.pt", sd)
    d = import_checkpoint(path, prompt="3D render in the style of Pixar")
    assert isinstance(d, Domain) and d.dims == dims and d.vector.shape == (6048,) and d.vector.dtype == torch.float32
    blocks = d.blocks()
    for k in range(17):  # conv_0 is conv1, conv_{i+1} is convs[i]; conv_10 comes after conv_9
        assert torch.equal(blocks[k], sd[f"heads.conv_{k}.params_in"].reshape(-1)), k
    assert d.meta["source"] == "paper-checkpoint" and d.meta["prompt"] == "3D render in the style of Pixar"
    assert d.meta["generator"] == "ffhq" and d.meta["source_prompt"] == "Photo" and d.meta["resolution"] == 1024
    assert d.meta["paper_da_type"] == "td" and d.meta["imported_from"] == "td_pixar.pt"
    # the imported domain round-trips through our own file format (metadata is plain JSON)
    back = Domain.load(d.save(tmp_path / "pixar.safetensors"))
    assert torch.equal(back.vector, d.vector) and back.dims == dims


def test_key_order_in_file_does_not_matter(tmp_path):
    dims = (8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 4, 4)
    sd = _paper_state(dims, seed=3)
    shuffled = OrderedDict(sorted(sd.items()))  # lexicographic: conv_0, conv_1, conv_10, conv_11, conv_2, ...
    assert list(shuffled)[2] == "heads.conv_10.params_in"
    d = import_checkpoint(_write(tmp_path / "x.pt", shuffled, sg2_params={}))  # no size to check against
    assert d.dims == dims
    assert torch.equal(d.blocks()[10], sd["heads.conv_10.params_in"].reshape(-1))
    assert torch.equal(d.vector, torch.cat([sd[f"heads.conv_{k}.params_in"].reshape(-1) for k in range(12)]))


def test_other_generators_and_key_spellings(tmp_path):
    dims = paper_conv_dims(512)
    path = tmp_path / "car.pt"
    torch.save({"model_type": "parametrization", "patch_key": "cin_mult", "state_dict": _paper_state(dims),
                "sg_2_params": {"img_size": 512, "ckpt_path": "pretrained/StyleGAN2/stylegan2-car-config-f.pt"},
                "da_type": "im2im", "style_latents": torch.arange(16 * 512.0).reshape(1, 16, 512)}, path)
    d = import_checkpoint(path)
    assert d.meta["generator"] == "car" and d.meta["source_prompt"] == "Photo of a car"
    assert d.meta["prompt"] is None and d.meta["mix_from"] == 7  # im2im: the reference's latent comes along
    assert torch.equal(d.style_latent, torch.arange(16 * 512.0).reshape(16, 512))
    d.save(tmp_path / "car.safetensors")
    assert torch.equal(Domain.load(tmp_path / "car.safetensors").style_latent, d.style_latent)
    # only layers 7 and up stored (what the paper's grids mix in): the rest is filler, never mixed in
    torch.save({"model_type": "parametrization", "patch_key": "cin_mult", "state_dict": _paper_state(dims),
                "da_type": "im2im", "style_latents": torch.ones(1, 9, 512)}, path)
    d = import_checkpoint(path)
    assert d.style_latent.shape == (16, 512) and d.meta["style_latent_from"] == 7 and d.meta["mix_from"] == 7
    torch.save({"model_type": "parametrization", "patch_key": "cin_mult", "state_dict": _paper_state(dims),
                "da_type": "im2im", "style_latents": torch.ones(2, 16, 512)}, path)
    with pytest.raises(HyperdomainError, match=r"style_latents has shape \[2, 16, 512\], expected \[1, layers, w_dim\]"):
        import_checkpoint(path)
    path = tmp_path / "nogen.pt"
    torch.save({"model_type": "parameterization", "patch_key": "cin_mult", "state_dict": _paper_state(dims)}, path)
    d = import_checkpoint(path, source_prompt="Photo of a car")
    assert d.meta["generator"] is None and d.meta["source_prompt"] == "Photo of a car"


@pytest.mark.parametrize("change,message", [
    ({"model_type": "mapper", "mapper_config": {"mapper_type": "residual_channelin"}},
     r"a HyperDomainNet hypernetwork \(model_type 'mapper'\).*hypernetwork import is a separate function"),
    ({"model_type": "original"}, r"model_type 'original' is not supported"),
    ({"patch_key": "csep_mult"}, r"patch_key 'csep_mult' is not supported; only 'cin_mult'"),
    ({"patch_key": "cink_mult"}, r"patch_key 'cink_mult'"),
])
def test_refusals(tmp_path, change, message):
    path = _write(tmp_path / "bad.pt", _paper_state(paper_conv_dims(1024)), **change)
    with pytest.raises(HyperdomainError, match=r"bad\.pt: " + message):
        import_checkpoint(path)


def test_state_dict_problems(tmp_path):
    dims = paper_conv_dims(1024)
    sd = _paper_state(dims)
    del sd["heads.conv_5.params_in"]
    with pytest.raises(HyperdomainError, match=r"lacks heads\.conv_5\.params_in"):
        import_checkpoint(_write(tmp_path / "a.pt", sd))
    sd = _paper_state(dims)
    sd["heads.conv_0.params_kernel"] = torch.zeros(1, 1, 1, 3, 3)
    with pytest.raises(HyperdomainError, match=r"unexpected state_dict key 'heads\.conv_0\.params_kernel'"):
        import_checkpoint(_write(tmp_path / "b.pt", sd))
    sd = _paper_state(dims)
    sd["heads.conv_3.params_in"] = torch.zeros(1, 512, 1, 1, 1)
    with pytest.raises(HyperdomainError, match=r"heads\.conv_3\.params_in has shape \[1, 512, 1, 1, 1\]"):
        import_checkpoint(_write(tmp_path / "c.pt", sd))
    with pytest.raises(HyperdomainError, match=r"do not match the 512 px generator"):
        import_checkpoint(_write(tmp_path / "d.pt", _paper_state(dims), sg2_params={"img_size": 512}))
    torch.save({"state_dict": _paper_state(dims)}, tmp_path / "e.pt")
    with pytest.raises(HyperdomainError, match=r"e\.pt: not a HyperDomainNet checkpoint \(no 'model_type'"):
        import_checkpoint(tmp_path / "e.pt")


def test_no_pickled_code_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = _write(tmp_path / "evil.pt", _paper_state(paper_conv_dims(1024)), da_type=Evil())
    with pytest.raises(HyperdomainError, match=r"evil\.pt: refused to load '\w+\.system'"):
        import_checkpoint(path)
    assert not marker.exists()
