"""CLIP encoders: specs, differentiable preprocessing, template text embeddings, weights files."""
import json

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from hyperdomain.guidance.clip import ClipSpec, load_clip, templates
from hyperdomain.errors import HyperdomainError

from conftest import TINY_CLIP_CONFIG, make_tiny_clip


def test_spec_parsing():
    assert ClipSpec.parse("ViT-B-32") == ClipSpec("ViT-B-32", "openai", None)
    assert ClipSpec.parse("ViT-B/16") == ClipSpec("ViT-B-16", "openai", None)
    assert ClipSpec.parse("ViT-L/14:laion2b_s32b_b82k") == ClipSpec("ViT-L-14", "laion2b_s32b_b82k", None)
    assert ClipSpec.parse("ViT-B/32=/w/b32.safetensors") == ClipSpec("ViT-B-32", "openai", "/w/b32.safetensors")
    assert ClipSpec.parse("cfg/tiny.json") == ClipSpec("cfg/tiny.json", None, None)
    assert ClipSpec.parse("ViT-B-32").label == "ViT-B-32:openai"
    assert ClipSpec.parse("x/tiny.json").label == "tiny.json:random"
    for bad in ("", "  ", "ViT-B-32=", "ViT-B-32:"):
        with pytest.raises(HyperdomainError, match="--clip"):
            ClipSpec.parse(bad)


def test_template_sets():
    t = templates("imagenet")
    assert len(t) == 79 and "a photo of many {}." not in t and t[0] == "a bad photo of a {}."
    assert len(templates("openai")) == 80 and set(t) < set(templates("openai"))
    assert templates("single") == ("A {}",) and templates("none") == ("{}",)
    with pytest.raises(HyperdomainError, match="imagenet"):
        templates("fancy")


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
@pytest.mark.parametrize("antialias", [False, True])
def test_preprocess_matches_torchvision(tiny_clip, size, antialias):
    """Our differentiable path equals torchvision's Resize(bicubic) + CenterCrop + Normalize on [0,1]."""
    tiny_clip.antialias = antialias
    try:
        x = torch.rand(2, 3, *size) * 2 - 1
        ours = tiny_clip.preprocess(x)
        ref = TF.resize((x + 1) / 2, [32], interpolation=TF.InterpolationMode.BICUBIC, antialias=antialias)
        ref = TF.center_crop(ref, [32, 32])
        ref = TF.normalize(ref, mean=[0.48145466, 0.4578275, 0.40821073], std=[0.26862954, 0.26130258, 0.27577711])
        assert ours.shape == (2, 3, 32, 32)
        assert torch.allclose(ours, ref, atol=1e-5)
    finally:
        tiny_clip.antialias = False


def test_encode_images_normalised_and_differentiable(tiny_clip):
    x = (torch.rand(3, 3, 32, 32) * 2 - 1).requires_grad_(True)
    e = tiny_clip.encode_images(x)
    assert e.shape == (3, 32) and torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-6)
    e[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in tiny_clip.parameters())


def test_text_is_the_mean_of_normalised_template_embeddings(tiny_clip):
    tpl = templates("imagenet")[:5]
    got = tiny_clip.text("Anime painting", tpl)
    with torch.no_grad():  # written out independently: tokenize each filled template, encode, normalise, mean
        rows = []
        for t in tpl:
            tok = tiny_clip.tokenizer([t.replace("{}", "Anime painting")])
            e = tiny_clip.model.encode_text(tok)[0]
            rows.append(e / e.norm())
        expected = torch.stack(rows).mean(0)
    assert torch.allclose(got, expected, atol=1e-6)
    assert got.norm() < 1  # a mean of distinct unit vectors, not re-normalised (the paper's code)
    assert tiny_clip.template_embeddings("Anime painting", tpl) is tiny_clip.template_embeddings("Anime painting", tpl)


def test_prompt_checks(tiny_clip):
    tpl = templates("imagenet")
    with pytest.raises(HyperdomainError, match="empty"):
        tiny_clip.check_prompt("   ", tpl)
    long = " ".join(["word"] * 70)
    tiny_clip.check_prompt(long, ("{}",))  # 72 tokens fit the bare prompt
    with pytest.raises(HyperdomainError, match=r"too long for CLIP .*context is 77") as e:
        tiny_clip.check_prompt(long, tpl)  # not with "a photo of the hard to see {}."
    assert "\n" not in str(e.value)
    with pytest.raises(HyperdomainError, match="too long"):
        tiny_clip.text(" ".join(["word"] * 80), ("{}",))


def test_weights_files_round_trip(tmp_path, tiny_clip_config, tiny_clip):
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in tiny_clip.model.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "w.pt")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    ref = tiny_clip.encode_images(x)
    for f in ("w.safetensors", "w.pt"):
        torch.manual_seed(123)  # a different random init, overwritten by the file
        enc = load_clip([f"{tiny_clip_config}={tmp_path / f}"])[0]
        assert enc.label == "tiny_clip.json"
        assert torch.equal(enc.encode_images(x), ref)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_weights_file_errors(tmp_path, tiny_clip_config):
    with pytest.raises(HyperdomainError, match="no such CLIP weights file"):
        load_clip([f"{tiny_clip_config}={tmp_path / 'none.safetensors'}"])
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(HyperdomainError, match="junk.safetensors"):
        load_clip([f"{tiny_clip_config}={tmp_path / 'junk.safetensors'}"])
    torch.save({"visual.nope": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(HyperdomainError, match="do not fit"):
        load_clip([f"{tiny_clip_config}={tmp_path / 'other.pt'}"])
    # OpenAI's TorchScript archives are refused (loading them runs their code)
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    scripted.save(str(tmp_path / "ViT-B-32.pt"))
    with pytest.raises(HyperdomainError, match="TorchScript"):
        load_clip([f"{tiny_clip_config}={tmp_path / 'ViT-B-32.pt'}"])
    (tmp_path / "bad.json").write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(HyperdomainError, match="bad.json"):
        load_clip([str(tmp_path / "bad.json")])


def test_unknown_and_offline_models(monkeypatch):
    with pytest.raises(HyperdomainError, match="unknown model"):
        load_clip(["ViT-Q-99"])
    import open_clip.factory

    def no_network(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", no_network)
    with pytest.raises(HyperdomainError, match=r"offline, pass a local file: --clip ViT-B-32="):
        load_clip(["ViT-B-32"])


def test_duplicate_models_refused(tiny_clip_config):
    with pytest.raises(HyperdomainError, match="twice"):
        load_clip([str(tiny_clip_config), str(tiny_clip_config)])


def test_config_wrapped_in_model_cfg(tmp_path):
    path = tmp_path / "open_clip_config.json"
    path.write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": {}}))
    enc = make_tiny_clip(path)
    assert enc.image_size == (32, 32) and enc.context_length == 77


def test_openai_models_are_built_with_quickgelu(monkeypatch, tmp_path):
    """OpenAI's weights were trained with QuickGELU; open_clip's ViT-B-32 config alone builds GELU."""
    import hyperdomain.guidance.clip as clip_module

    loaded = []
    monkeypatch.setattr(clip_module, "_load_weights", lambda model, path: loaded.append(path))
    enc = load_clip([f"ViT-B/32={tmp_path / 'b32.safetensors'}"])[0]
    acts = {type(m).__name__ for m in enc.model.modules() if type(m).__name__ in ("GELU", "QuickGELU")}
    assert acts == {"QuickGELU"} and loaded == [str(tmp_path / "b32.safetensors")]
    assert enc.label == "ViT-B-32:openai" and enc.image_size == (224, 224)
    assert torch.allclose(enc.mean.flatten(), torch.tensor([0.48145466, 0.4578275, 0.40821073]))

