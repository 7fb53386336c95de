"""What a user is told, and when: offline CLIP in seconds, recorded CLIP files found from anywhere,
progress that counts images and prompts, a warning before a huge prompt table (issue 15, cases 9-11)."""
import shutil
import time

import pytest
import torch

import hyperdomain as hd
from hyperdomain.guidance import clip as clip_module
from hyperdomain.errors import HyperdomainError
from hyperdomain.training import hyper as hyper_module

from conftest import assert_user_error, cli


# ------------------------------------------------------------------------------------ offline CLIP
def _no_cache(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name, **kw: None)


def test_offline_clip_is_one_line_in_seconds(monkeypatch):
    _no_cache(monkeypatch)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    tries = []

    def unreachable(address, timeout=None):
        tries.append((address, timeout))
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr("socket.create_connection", unreachable)
    start = time.monotonic()
    with pytest.raises(HyperdomainError) as e:
        hd.load_clip(["ViT-B-32"])
    assert time.monotonic() - start < 30  # huggingface_hub's retries alone took 51 s
    msg = str(e.value)
    assert tries == [(("huggingface.co", 443), clip_module.HUB_PROBE_TIMEOUT)]
    assert "huggingface.co cannot be reached (Name or service not known)" in msg and "\n" not in msg
    assert "--clip ViT-B-32=/path/open_clip_model.safetensors" in msg


def test_hf_hub_offline_is_not_probed(monkeypatch):
    _no_cache(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("socket.create_connection", lambda *a, **k: pytest.fail("probed the network"))
    with pytest.raises(HyperdomainError, match="not downloaded yet and HF_HUB_OFFLINE is set"):
        hd.load_clip(["ViT-B-16:openai"])


def test_cached_weights_are_used_without_the_network(monkeypatch, tmp_path):
    import huggingface_hub

    asked = []

    def cache(repo, name, **kw):
        asked.append((repo, name))
        return str(tmp_path / name) if name == "open_clip_model.safetensors" else None

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cache)
    monkeypatch.setattr("socket.create_connection", lambda *a, **k: pytest.fail("probed the network"))
    found = clip_module._cached_weights(clip_module.ClipSpec.parse("ViT-B-32"))
    assert found == str(tmp_path / "open_clip_model.safetensors")
    assert asked[0] == ("timm/vit_base_patch32_clip_224.openai", "open_clip_model.safetensors")


def test_cli_offline_clip_is_one_line(monkeypatch, tmp_path, tiny_ckpt):
    _no_cache(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli("adapt", "-t", "Sketch", "--generator", tiny_ckpt[0], "--out", tmp_path / "run", "--iters", 1)
    assert_user_error(result, "--clip ViT-B-32:openai", "ViT-B-32=/path")


# ------------------------------------------------------------------------------------ recorded CLIP files
def test_a_hypernetwork_finds_its_clip_config_from_another_folder(tmp_path, tiny_G, tiny_clip_config, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(tiny_clip_config, work / "tiny.json")
    monkeypatch.chdir(work)
    net = hd.train_hyper(tiny_G, clip=["tiny.json"], input_clip="tiny.json", domains=_list(work), iters=1,
                         batch=2, width=16, templates="single", test_domains=None, progress=False,
                         out_dir=work / "run")
    assert net.meta["input_clip"] == "tiny.json:random"
    assert net.meta["input_clip_spec"] == str(work / "tiny.json")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = hd.HyperDomainNet.load(work / "run" / "hypernet.safetensors")
    torch.testing.assert_close(loaded.domain("Anime painting").vector, net.domain("Anime painting").vector)
    r = cli("export", "--hyper", work / "run" / "hypernet.safetensors", "-p", "Zombie", "--out", "z.safetensors")
    assert r.exit_code == 0, r.output
    # the config moved away: one line that says which flag passes it
    (tmp_path / "moved").mkdir()
    (work / "tiny.json").rename(tmp_path / "moved" / "tiny.json")
    r = cli("export", "--hyper", work / "run" / "hypernet.safetensors", "-p", "Zombie", "--out", "z2.safetensors")
    assert_user_error(r, "CLIP model config tiny.json:random", "--hyper-clip /path/tiny.json")
    r = cli("export", "--hyper", work / "run" / "hypernet.safetensors", "-p", "Zombie", "--out", "z2.safetensors",
            "--hyper-clip", tmp_path / "moved" / "tiny.json")
    assert r.exit_code == 0, r.output


def _list(folder):
    path = folder / "domains.txt"
    path.write_text("Anime painting\nZombie\nPencil sketch\n")
    return str(path)


# ------------------------------------------------------------------------------------ progress
def test_sample_reports_every_batch(tiny_G):
    seen = []
    images = tiny_G.sample(5, batch_size=2, on_batch=seen.append)
    assert seen == [2, 2, 1] and len(images) == 5


class _RecordingBar:
    """Stands in for tqdm: keeps the total, the unit and every update."""

    made: list = []

    def __init__(self, iterable=None, total=None, unit="it", **kwargs):
        self.total, self.unit, self.updates = total, unit, []
        _RecordingBar.made.append(self)

    def update(self, n=1):
        self.updates.append(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def close(self):
        pass


def test_evaluate_progress_counts_images(monkeypatch, tiny_G, tiny_clip):
    from hyperdomain.guidance import evaluation

    _RecordingBar.made = []
    monkeypatch.setattr(evaluation, "tqdm", _RecordingBar)
    d = hd.Domain(torch.randn(tiny_G.num_domain_params) * 0.1, tiny_G.domain_dims, {"prompt": "Sketch"})
    hd.evaluate(tiny_G, [d, d], source=True, clip=tiny_clip, n=5, batch_size=2)
    bar, = _RecordingBar.made
    assert bar.unit == "image" and bar.total == 15 and bar.updates == [2, 2, 1] * 3


def test_cli_sample_progress_counts_images(monkeypatch, tmp_path, tiny_ckpt):
    import tqdm

    _RecordingBar.made = []
    monkeypatch.setattr(tqdm, "tqdm", _RecordingBar)
    r = cli("sample", "--generator", tiny_ckpt[0], "-n", 3, "--batch-size", 2, "--out", tmp_path / "g.png")
    assert r.exit_code == 0, r.output
    bar, = _RecordingBar.made
    assert bar.unit == "image" and bar.total == 3 and bar.updates == [2, 1]


def test_prompt_encoding_shows_progress_and_warns_on_huge_lists(monkeypatch, tiny_G, tiny_clip, tmp_path, caplog):
    _RecordingBar.made = []
    monkeypatch.setattr(hyper_module, "tqdm", _RecordingBar)
    monkeypatch.setattr(hyper_module, "LARGE_TABLE_BYTES", 1000)
    hd.train_hyper(tiny_G, clip=[tiny_clip], input_clip=tiny_clip, domains=_list(tmp_path), iters=1, batch=2,
                   width=16, templates="single", test_domains=None, progress=True)
    table = _RecordingBar.made[0]
    # 3 targets and the source "Photo": once for the loss encoder, once for the input encoder
    assert table.unit == "prompt" and table.total == 8 and sum(table.updates) == 8
    warning, = [r for r in caplog.records if "text embeddings" in r.getMessage()]
    assert "4 prompts" in warning.getMessage() and "GiB" in warning.getMessage()
