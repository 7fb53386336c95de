"""Datasets: per-index determinism, both layouts, resume, verification, bad input, the CLI."""
import errno
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hyperdomain as hd
from hyperdomain.datasets import dataset_settings, index_latent, read_settings, render_latents, render_samples, view_latent
from hyperdomain.datasets.settings import named_domains, unique_names
from hyperdomain.errors import HyperdomainError
from hyperdomain.media.grids import to_uint8

from conftest import assert_storage_error, assert_user_error, cli, make_tiny_generator

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(shard_size=3, batch=4, progress=False)


@pytest.fixture
def doms(tiny_G):
    g = torch.Generator().manual_seed(5)
    return [hd.Domain(torch.randn(tiny_G.num_domain_params, generator=g) * 0.5, tiny_G.domain_dims,
                      {"prompt": p, "generator_fingerprint": tiny_G.fingerprint}) for p in ("Pixar render", "Anime")]


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (relative name -> bytes)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def tar_images(path: Path) -> dict[str, np.ndarray]:
    """The images of a tar shard read with plain tarfile, by member name."""
    out = {}
    with tarfile.open(path) as tar:
        for m in tar:
            data = tar.extractfile(m).read()
            if not m.name.endswith(".json"):
                out[m.name] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return out


# ------------------------------------------------------------------------------------ latents
def test_latents_are_pure_functions_of_seed_and_index():
    z = index_latent(3, 17, 32)
    assert torch.equal(z, index_latent(3, 17, 32)) and z.shape == (32,)
    others = [index_latent(3, 16, 32), index_latent(3, 18, 32), index_latent(4, 17, 32)]
    assert all((z - o).abs().max() > 0.5 for o in others)
    state = torch.random.get_rng_state()
    v = view_latent(3, 17, 1, 32, 0.2)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    noise = (v - z) / 0.2
    assert 0.5 < noise.std() < 1.5 and not torch.allclose(v, view_latent(3, 17, 0, 32, 0.2))
    assert torch.equal(view_latent(3, 17, 1, 32, 0.0), z)


def test_names_are_key_safe_and_unique():
    assert unique_names(["3D render. Pixar", "source", "Anime", "anime", "view2", "..."]) == \
        ["3d_render_pixar", "source_2", "anime", "anime_2", "view2_2", "domain"]


# ------------------------------------------------------------------------------------ determinism
def test_an_index_renders_the_same_in_any_pass_order_and_company(tiny_G, doms):
    named = named_domains(tiny_G, doms)
    s = dataset_settings(tiny_G, 10, named, views=2)
    alone = render_samples(tiny_G, s, doms, [7])[7]
    crowd = render_samples(tiny_G, s, doms, [9, 3, 7, 0, 1])[7]
    assert list(alone) == s.keys == ["source", "pixar_render", "anime", "view0", "view1"]
    assert all(torch.equal(alone[k], crowd[k]) for k in s.keys)
    # the images are what the generator makes for the index's latent (one pass, plain API)
    z = torch.stack([index_latent(0, 7, tiny_G.z_dim), view_latent(0, 7, 1, tiny_G.z_dim, 0.2)])
    x = tiny_G.synthesis(tiny_G.mapping(z, 0.7), torch.stack([doms[1].vector, torch.zeros_like(doms[1].vector)]))
    plain = to_uint8(x)
    for got, want in ((alone["anime"], plain[0]), (alone["view1"], plain[1])):
        assert (got.int() - want.int()).abs().max() <= 1 and (got != want).float().mean() < 0.01
    assert (alone["anime"].int() - alone["source"].int()).abs().float().mean() > 5  # the domain changes the image
    # the records' latents make the images again, in the dataset's pass shape: exactly
    again = render_latents(tiny_G, z, torch.stack([doms[1].vector, torch.zeros_like(doms[1].vector)]),
                           truncation=0.7)
    assert torch.equal(again[0], alone["anime"]) and torch.equal(again[1], alone["view1"])
    # another pass shape changes float32 rounding only: at most one level, on a few values
    other = render_latents(tiny_G, z, torch.stack([doms[1].vector, torch.zeros_like(doms[1].vector)]),
                           truncation=0.7, pass_rows=3)
    diff = (other.int() - again.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3


def test_batch_changes_no_byte_and_a_resume_may_change_it(tmp_path, tiny_G, doms):
    # 7 samples of 4 images in shards of 3: 12 rows a shard, 4 in the last; no batch divides them all
    for b in (1, 3, 5):
        hd.make_dataset(tiny_G, tmp_path / f"b{b}", 7, doms, views=1, shard_size=3, batch=b, progress=False)
    trees = [tree(tmp_path / f"b{b}") for b in (1, 3, 5)]
    shards = [name for name in trees[0] if name.startswith("shard-")]
    assert len(shards) == 3
    for other in trees[1:]:
        assert [n for n in shards if other[n] != trees[0][n]] == []  # the shards first: images and records
        assert other == trees[0]  # and everything else: settings and index hold no batch
    renders = render_samples(tiny_G, read_settings(tmp_path / "b1"), doms, range(7))
    images = {k: v for name in shards for k, v in tar_images(tmp_path / "b1" / name).items()}
    assert len(images) == 7 * 4
    for i in range(7):
        for key in ("source", "pixar_render", "anime", "view0"):
            assert np.array_equal(images[f"{i:08d}.{key}.png"], renders[i][key].numpy()), (i, key)
    # a dataset made with --batch 1, cut after its first shard, is finished with --batch 5
    cut = tmp_path / "cut"
    hd.make_dataset(tiny_G, cut, 7, doms, views=1, shard_size=3, batch=1, progress=False)
    for name in ("index.json", "shard-000001.tar", "shard-000002.tar"):
        (cut / name).unlink()
    hd.make_dataset(tiny_G, cut, 7, doms, views=1, shard_size=3, batch=5, progress=False)
    assert tree(cut) == trees[0]


def test_shard_size_does_not_change_the_images(tmp_path, tiny_G, doms):
    a = hd.make_dataset(tiny_G, tmp_path / "a", 7, doms, views=1, shard_size=2, batch=4, progress=False)
    hd.make_dataset(tiny_G, tmp_path / "b", 7, doms, views=1, shard_size=3, batch=4, progress=False)
    ia = {k: v for s in range(4) for k, v in tar_images(tmp_path / "a" / f"shard-{s:06d}.tar").items()}
    ib = {k: v for s in range(3) for k, v in tar_images(tmp_path / "b" / f"shard-{s:06d}.tar").items()}
    assert len(ia) == 7 * 4 and ia.keys() == ib.keys()
    assert all(np.array_equal(ia[k], ib[k]) for k in ia)
    assert [s["samples"] for s in a["shards"]] == [2, 2, 2, 1] and a["images"] == 28


# ------------------------------------------------------------------------------------ layouts
def test_webdataset_reads_the_shards_and_images_equal_the_renders(tmp_path, tiny_G, doms):
    wds = pytest.importorskip("webdataset")
    out = tmp_path / "wds"
    index = hd.make_dataset(tiny_G, out, 5, doms, views=2, seed=11, **FAST)
    assert [s["name"] for s in index["shards"]] == ["shard-000000.tar", "shard-000001.tar"]
    renders = render_samples(tiny_G, hd.datasets.read_settings(out), doms, range(5))
    urls = [str(out / s["name"]) for s in index["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8"))
    assert [s["__key__"] for s in samples] == [f"{i:08d}" for i in range(5)]
    for i, s in enumerate(samples):
        for key in index["keys"]:
            assert np.array_equal(s[f"{key}.png"], renders[i][key].numpy()), (i, key)
        rec = s["json"]
        assert rec["index"] == i and rec["seed"] == 11 and rec["truncation"] == 0.7
        assert torch.equal(torch.tensor(rec["z"]), index_latent(11, i, tiny_G.z_dim))
        assert rec["generator"]["fingerprint"] == tiny_G.fingerprint
        assert [d["digest"] for d in rec["domains"]] == [d["digest"] for d in index["settings"]["domains"]]
    # plain tarfile: members in sample order with fixed metadata
    with tarfile.open(out / "shard-000001.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members][:6] == ["00000003.source.png", "00000003.pixar_render.png", "00000003.anime.png",
                                             "00000003.view0.png", "00000003.view1.png", "00000003.json"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in members} == {(0, 0, 0, "", 0o644)}


def test_each_record_makes_its_images_again(tmp_path, tiny_G, doms):
    out = tmp_path / "r"
    hd.make_dataset(tiny_G, out, 4, doms, views=3, sigma=0.5, seed=2, size=16, truncation=0.6, shard_size=4,
                    batch=8, progress=False)
    with tarfile.open(out / "shard-000000.tar") as tar:
        records = [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
    images = tar_images(out / "shard-000000.tar")
    for rec in records:
        i = rec["index"]
        view_z = torch.tensor(rec["view_z"])
        assert view_z.shape == (3, tiny_G.z_dim)  # each view's latent, before truncation
        assert torch.equal(view_z[2], view_latent(2, i, 2, tiny_G.z_dim, 0.5))
        assert not torch.equal(view_z[0], view_z[1]) and not torch.equal(view_z[0], torch.tensor(rec["z"]))
        common = dict(truncation=rec["truncation"], size=rec["size"], noise_mode=rec["noise_mode"],
                      pass_rows=rec["pass_rows"])
        views = render_latents(tiny_G, view_z, **common)  # the source's views
        for k in range(3):
            assert np.array_equal(views[k].numpy(), images[f"{i:08d}.view{k}.png"]), (i, k)
        z = torch.tensor(rec["z"])[None]
        for d, name in zip(doms, ("pixar_render", "anime")):
            assert np.array_equal(render_latents(tiny_G, z, d, **common)[0].numpy(), images[f"{i:08d}.{name}.png"])
    assert (images["00000001.view0.png"].astype(int) - images["00000001.view1.png"]).std() > 1  # views differ
    with pytest.raises(HyperdomainError, match=r"z must be \[n, 32\], got \[32\]"):
        render_latents(tiny_G, torch.tensor(records[0]["z"]), truncation=0.7)
    with pytest.raises(HyperdomainError, match=r"domain must be \(\d+,\) or \[3, \d+\], got \[10\]"):
        render_latents(tiny_G, view_z, torch.zeros(10), truncation=0.7)


def test_views_in_every_domain(tmp_path, tiny_G, doms, tiny_ckpt, domain_files):
    wds = pytest.importorskip("webdataset")
    out = tmp_path / "all"
    index = hd.make_dataset(tiny_G, out, 3, doms, views=2, views_in="all", shard_size=2, batch=5, progress=False)
    assert index["keys"] == ["source", "pixar_render", "anime", "view0", "view1", "pixar_render.view0",
                             "pixar_render.view1", "anime.view0", "anime.view1"]
    assert index["images"] == 3 * 9 and hd.verify_dataset(out) == index
    samples = list(wds.WebDataset([str(out / s["name"]) for s in index["shards"]], shardshuffle=False).decode("rgb8"))
    assert [s["__key__"] for s in samples] == ["00000000", "00000001", "00000002"]
    for s in samples:
        rec = s["json"]
        assert rec["views_in"] == "all"
        view_z = torch.tensor(rec["view_z"])  # one latent a view, shared by the source and every domain
        for d, name in zip(doms, ("pixar_render", "anime")):
            again = render_latents(tiny_G, view_z, d, truncation=rec["truncation"], pass_rows=rec["pass_rows"])
            for k in range(2):
                got = s[f"{name}.view{k}.png"]
                assert np.array_equal(got, again[k].numpy()), (name, k)
                assert np.abs(got.astype(int) - s[f"view{k}.png"]).mean() > 5  # in the domain, not the source
                assert np.abs(got.astype(int) - s[f"{name}.png"]).mean() > 1  # a view, not the anchor
    # the folder layout: each domain's views inside its own folder, <domain>/view<k>/, the same images
    folder = tmp_path / "f"
    hd.make_dataset(tiny_G, folder, 3, doms, views=2, views_in="all", layout="folder", shard_size=2, progress=False)
    hd.verify_dataset(folder)
    assert sorted(p.name for p in (folder / "anime").iterdir()) == [f"{i:08d}.png" for i in range(3)] + ["view0",
                                                                                                        "view1"]
    assert sorted(p.name for p in (folder / "anime" / "view1").iterdir()) == [f"{i:08d}.png" for i in range(3)]
    assert np.array_equal(np.asarray(Image.open(folder / "anime" / "view1" / "00000002.png")),
                          samples[2]["anime.view1.png"])
    # the default renders the views in the source only; the CLI takes --views-in
    assert hd.make_dataset(tiny_G, tmp_path / "src", 1, doms, views=2, **FAST)["keys"][-1] == "view1"
    ckpt, _ = tiny_ckpt
    r = cli("dataset", "--generator", ckpt, "-d", domain_files[1], "-n", 1, "--views", 1, "--views-in", "all",
            "--out", tmp_path / "c", "--device", "cpu", "--no-progress")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "c" / "index.json").read_text())["keys"] == ["source", "anime", "view0",
                                                                               "anime.view0"]
    with pytest.raises(HyperdomainError, match="views_in must be one of source, all, got 'domains'"):
        hd.make_dataset(tiny_G, tmp_path / "x", 1, doms, views=1, views_in="domains", **FAST)


def test_folder_layout_holds_the_same_images(tmp_path, tiny_G, doms):
    hd.make_dataset(tiny_G, tmp_path / "t", 3, doms, views=1, **FAST)
    index = hd.make_dataset(tiny_G, tmp_path / "f", 3, doms, views=1, layout="folder", shard_size=2, batch=4,
                            progress=False)
    files = tree(tmp_path / "f")
    assert sorted(f for f in files if f.endswith(".png")) == sorted(
        [f"{d}/{i:08d}.png" for d in ("source", "pixar_render", "anime") for i in range(3)]
        + [f"source/view0/{i:08d}.png" for i in range(3)])
    assert {"settings.json", "index.json", "shard-000000.jsonl", "shard-000001.jsonl"} <= set(files)
    records = [json.loads(line) for s in ("shard-000000.jsonl", "shard-000001.jsonl")
               for line in files[s].decode().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2] and records[2]["files"][1] == "pixar_render/00000002.png"
    assert [len(r["view_z"]) for r in records] == [1, 1, 1]
    tars = tar_images(tmp_path / "t" / "shard-000000.tar")
    for i in range(3):
        for key, rel in (("source", f"source/{i:08d}.png"), ("anime", f"anime/{i:08d}.png"),
                         ("view0", f"source/view0/{i:08d}.png")):
            assert np.array_equal(tars[f"{i:08d}.{key}.png"], np.asarray(Image.open(tmp_path / "f" / rel)))
    assert hd.verify_dataset(tmp_path / "f") == index
    # a record whose view latent is not the view's is found
    lines = files["shard-000001.jsonl"].decode().splitlines()
    bad = json.loads(lines[0])
    bad["view_z"][0][3] += 0.5
    (tmp_path / "f" / "shard-000001.jsonl").write_text(json.dumps(bad, sort_keys=True) + "\n")
    with pytest.raises(HyperdomainError, match="record of sample 2: view_z is not the latents of index 2's 1 views"):
        hd.verify_dataset(tmp_path / "f")


def test_folder_layout_is_one_imagefolder_class_a_domain(tmp_path, tiny_G, doms):
    """torchvision's ImageFolder walks every image under root/<class>/: the classes are exactly the source
    and the domains, and each holds only its own domain's images, views included."""
    from torchvision.datasets import ImageFolder

    out = tmp_path / "f"
    hd.make_dataset(tiny_G, out, 3, doms, views=2, views_in="all", layout="folder", shard_size=2, progress=False)
    folder = ImageFolder(str(out))
    assert folder.classes == ["anime", "pixar_render", "source"]
    renders = render_samples(tiny_G, read_settings(out), doms, range(3))
    counts = dict.fromkeys(folder.classes, 0)
    for path, label in folder.samples:
        name = folder.classes[label]
        rel = Path(path).relative_to(out / name)
        view = rel.parent.name  # "" for the anchor, "view<k>" for a view
        key = name if not view else (view if name == "source" else f"{name}.{view}")
        assert np.array_equal(np.asarray(Image.open(path)), renders[int(rel.stem)][key].numpy()), path
        counts[name] += 1
    assert counts == {"anime": 9, "pixar_render": 9, "source": 9}
    # the anchors alone, as the README says: views are the images in a view<k>/ folder
    anchors = ImageFolder(str(out), is_valid_file=lambda p: not re.fullmatch(r"view\d+", Path(p).parent.name))
    assert len(anchors) == 9 and all(Path(p).parent.parent == out for p, _ in anchors.samples)
    # the views rendered in the source only: all under source/
    hd.make_dataset(tiny_G, tmp_path / "s", 2, doms, views=1, layout="folder", **FAST)
    folder = ImageFolder(str(tmp_path / "s"))
    assert folder.classes == ["anime", "pixar_render", "source"]
    assert [folder.classes[c] for _, c in folder.samples].count("source") == 4


def _as_format_2(out: Path) -> None:
    """Turn a dataset into what format 2 wrote: no format in settings.json, no digest records, and in the
    folder layout every view under views/."""
    import dataclasses

    from hyperdomain.datasets.shards import shard_digest

    new = read_settings(out)
    old = dataclasses.replace(new, format_version=2)
    for i in range(new.n):
        for a, b in zip(new.member_names(i), old.member_names(i)):
            if a != b:
                (out / b).parent.mkdir(parents=True, exist_ok=True)
                (out / a).rename(out / b)
    for d in sorted(out.rglob("view*"), reverse=True):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    for p in out.glob(".shard-*.digest"):
        p.unlink()
    (out / "settings.json").write_text(json.dumps(old.to_dict(), indent=2, sort_keys=True) + "\n")
    index = json.loads((out / "index.json").read_text())
    index.update(settings=old.to_dict(), format_version=2)
    for k, entry in enumerate(index["shards"]):
        entry["sha256"], entry["bytes"] = shard_digest(out, old, k)
    (out / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")


@pytest.mark.parametrize("layout", ["folder", "webdataset"])
def test_a_format_2_dataset_is_verified_and_never_resumed(tmp_path, tiny_G, doms, layout):
    out = tmp_path / "old"
    hd.make_dataset(tiny_G, out, 3, doms, views=1, layout=layout, shard_size=2, progress=False)
    _as_format_2(out)
    assert "dataset_format" not in json.loads((out / "settings.json").read_text())
    if layout == "folder":
        assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["anime", "pixar_render", "source", "views"]
    assert hd.verify_dataset(out)["samples"] == 3  # still readable
    before = tree(out)
    with pytest.raises(HyperdomainError, match=r"settings.json: a dataset of format 2, made by hyperdomain .*this "
                                               r"version resumes only format 3.*make it again in a new folder") as e:
        hd.make_dataset(tiny_G, out, 3, doms, views=1, layout=layout, shard_size=2, progress=False)
    assert "\n" not in str(e.value) and tree(out) == before


def test_size_and_formats(tmp_path, tiny_G, doms):
    index = hd.make_dataset(tiny_G, tmp_path / "j", 2, doms[:1], size=16, format="jpg", quality=80, **FAST)
    imgs = tar_images(tmp_path / "j" / "shard-000000.tar")
    assert list(imgs) == ["00000000.source.jpg", "00000000.pixar_render.jpg", "00000001.source.jpg",
                          "00000001.pixar_render.jpg"]
    assert all(a.shape == (16, 16, 3) for a in imgs.values()) and index["settings"]["size"] == 16
    hd.make_dataset(tiny_G, tmp_path / "w", 1, [], size=16, format="webp", **FAST)
    hd.verify_dataset(tmp_path / "w")
    hd.make_dataset(tiny_G, tmp_path / "p", 1, [], size=16, **FAST)
    small = tar_images(tmp_path / "p" / "shard-000000.tar")["00000000.source.png"].astype(np.float32)
    full = render_samples(tiny_G, dataset_settings(tiny_G, 1, []), [], [0])[0]["source"].float()
    box = full.reshape(16, 2, 16, 2, 3).mean((1, 3)).numpy()  # an antialiased downscale is near the 2x2 mean,
    naive = full[::2, ::2].numpy()  # nearer than every other pixel is
    assert np.abs(small - box).mean() < 0.5 * np.abs(naive - box).mean()


# ------------------------------------------------------------------------------------ index and verify
def test_verify_finds_damage(tmp_path, tiny_G, doms):
    out = tmp_path / "v"
    hd.make_dataset(tiny_G, out, 5, doms[:1], **FAST)
    hd.verify_dataset(out)
    shard = out / "shard-000001.tar"
    good = shard.read_bytes()
    data = bytearray(good)
    data[600] ^= 0xFF  # inside the first image
    shard.write_bytes(bytes(data))
    with pytest.raises(HyperdomainError, match="shard-000001.tar: .*the index says") as e:
        hd.verify_dataset(out)
    assert "\n" not in str(e.value)
    shard.unlink()
    with pytest.raises(HyperdomainError, match="shard-000001.tar: missing"):
        hd.verify_dataset(out)
    (out / "index.json").unlink()
    with pytest.raises(HyperdomainError, match="not finished"):
        hd.verify_dataset(out)


# ------------------------------------------------------------------------------------ resume
def test_resume_keeps_complete_shards_and_equals_an_uninterrupted_run(tmp_path, tiny_G, doms, monkeypatch):
    import hyperdomain.datasets.make as make

    whole = tmp_path / "whole"
    hd.make_dataset(tiny_G, whole, 6, doms, views=1, **FAST)
    out = tmp_path / "cut"
    real, calls = make.render_rows, []

    def interrupting(*a, **k):  # Ctrl-C in the middle of shard 1 (3 samples x 4 images: steps of 8 and 4)
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(make, "render_rows", interrupting)
    with pytest.raises(KeyboardInterrupt):
        hd.make_dataset(tiny_G, out, 6, doms, views=1, **FAST)
    # no temporary shard; the complete one with the digest it was written with
    assert sorted(p.name for p in out.iterdir()) == [".shard-000000.tar.digest", "settings.json", "shard-000000.tar"]
    first = (out / "shard-000000.tar").stat().st_mtime_ns
    monkeypatch.setattr(make, "render_rows", real)
    (out / ".shard-000001.tar.partial").write_bytes(b"left by a kill")
    hd.make_dataset(tiny_G, out, 6, doms, views=1, **FAST)
    assert tree(out) == tree(whole)
    assert (out / "shard-000000.tar").stat().st_mtime_ns == first  # kept, not written again


def test_running_the_export_again_writes_a_damaged_shard_again(tmp_path, tiny_ckpt, domain_files, caplog):
    """A resume checks each complete shard against the digest recorded when it was written: never re-hashes and
    trusts it. A damaged shard, or one whose digest record is gone, is written again, one warning a shard."""
    ckpt, _ = tiny_ckpt
    out = tmp_path / "ds"
    base = ["dataset", "--generator", ckpt, "-d", domain_files[0], "-n", 5, "--shard-size", 3, "--out", out,
            "--device", "cpu", "--no-progress"]
    assert cli(*base).exit_code == 0
    index = (out / "index.json").read_bytes()
    shard, first = out / "shard-000001.tar", out / "shard-000000.tar"
    good, kept = shard.read_bytes(), first.stat().st_mtime_ns
    damaged = bytearray(good)
    damaged[600] ^= 0xFF  # inside the first image
    shard.write_bytes(bytes(damaged))
    assert_user_error(cli("dataset", "--out", out, "--verify"), "shard-000001.tar", "the index says")
    with caplog.at_level(logging.WARNING):
        r = cli(*base)  # the same command again
    assert r.exit_code == 0, r.output
    warned = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert len(warned) == 1 and str(shard) in warned[0] and "writing it again" in warned[0], warned
    assert shard.read_bytes() == good and (out / "index.json").read_bytes() == index
    assert first.stat().st_mtime_ns == kept  # the sound shard is kept
    assert cli("dataset", "--out", out, "--verify").exit_code == 0
    # a shard whose digest record is missing (a kill between its rename and the record) is not trusted either
    (out / ".shard-000000.tar.digest").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert cli(*base).exit_code == 0
    warned = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert len(warned) == 1 and str(first) in warned[0] and "no record of the digest" in warned[0], warned
    assert first.stat().st_mtime_ns != kept and (out / ".shard-000000.tar.digest").is_file()
    assert (out / "index.json").read_bytes() == index


def test_the_folder_layout_writes_a_damaged_shard_again(tmp_path, tiny_G, doms, caplog):
    out = tmp_path / "f"
    index = hd.make_dataset(tiny_G, out, 4, doms, views=1, layout="folder", shard_size=2, batch=4, progress=False)
    image = out / "anime" / "00000003.png"
    good = image.read_bytes()
    image.write_bytes(good[:-20])  # truncated after the dataset was finished
    with pytest.raises(HyperdomainError, match="shard-000001.jsonl"):
        hd.verify_dataset(out)
    with caplog.at_level(logging.WARNING):
        assert hd.make_dataset(tiny_G, out, 4, doms, views=1, layout="folder", shard_size=2, progress=False) == index
    assert [r.getMessage() for r in caplog.records if "writing it again" in r.getMessage()] != []
    assert image.read_bytes() == good and hd.verify_dataset(out) == index


def test_a_folder_is_resumed_only_with_the_same_settings(tmp_path, tiny_G, doms):
    out = tmp_path / "d"
    hd.make_dataset(tiny_G, out, 3, doms, **FAST)
    with pytest.raises(HyperdomainError, match=r"other settings \(truncation: 0.7 there, 0.5 now\)"):
        hd.make_dataset(tiny_G, out, 3, doms, truncation=0.5, **FAST)
    with pytest.raises(HyperdomainError, match=r"other settings \(domains: \['pixar_render', 'anime'\] there"):
        hd.make_dataset(tiny_G, out, 3, doms[:1], **FAST)
    with pytest.raises(HyperdomainError, match=r"other settings \(views: 0 there, 1 now\)"):
        hd.make_dataset(tiny_G, out, 3, doms, views=1, **FAST)
    stored = json.loads((out / "settings.json").read_text())  # a dataset made with another pass shape
    (out / "settings.json").write_text(json.dumps({**stored, "pass_rows": 4}))
    with pytest.raises(HyperdomainError, match=r"other settings \(pass_rows: 4 there, 8 now\)"):
        hd.make_dataset(tiny_G, out, 3, doms, **FAST)
    old = {k: v for k, v in stored.items() if k != "pass_rows"}  # one made before passes had a fixed shape
    (out / "settings.json").write_text(json.dumps({**old, "batch": 4}))
    with pytest.raises(HyperdomainError, match=r"settings.json: made by hyperdomain .* whose images depend on --batch"):
        hd.make_dataset(tiny_G, out, 3, doms, **FAST)
    (out / "settings.json").write_text(json.dumps(stored))
    assert hd.make_dataset(tiny_G, out, 3, doms, shard_size=3, batch=5, progress=False)["samples"] == 3
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(HyperdomainError, match="is not empty and holds no dataset"):
        hd.make_dataset(tiny_G, other, 3, doms, **FAST)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kw,fragment", [
    (dict(n=0), r"n must be an integer in \[1, 100000000\], got 0"),
    (dict(n=-3), "n must be"),
    (dict(views=-1), r"views must be an integer in \[0, 1000\], got -1"),
    (dict(shard_size=0), "shard_size must be"),
    (dict(batch=0), "batch must be"),
    (dict(size=64), "only downscaled"),
    (dict(format="gif"), "format must be one of png, jpg, webp"),
    (dict(sigma=float("nan")), "sigma must be a finite number"),
    (dict(sigma=1e39), r"sigma must be a finite number in \[0, 10\], got 1e\+39"),
    (dict(truncation=1e39), r"truncation must be a finite number in \[0, 2\]"),
    (dict(n=2**63), r"n must be an integer in \[1, 100000000\], got 9223372036854775808"),
    (dict(views=10**9), r"views must be an integer in \[0, 1000\], got 1000000000"),
    (dict(shard_size=10**9), r"shard_size must be an integer in \[1, 100000\]"),
    (dict(batch=10**9), r"batch must be an integer in \[1, 1024\]"),
    (dict(seed=-1), r"seed must be an integer in \[0, 9223372036854775807\], got -1"),
    (dict(n=1000, views=1000, shard_size=1000), "shard_size 1000: a shard would hold 1003000 images"),
])
def test_bad_arguments_write_nothing(tmp_path, tiny_G, doms, kw, fragment):
    args = {"n": 3, **FAST, **kw}
    with pytest.raises(HyperdomainError, match=fragment):
        hd.make_dataset(tiny_G, tmp_path / "x", args.pop("n"), doms, **args)
    assert not (tmp_path / "x").exists()


def test_records_are_strict_json_at_the_largest_sigma(tmp_path, tiny_G):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    hd.make_dataset(tiny_G, tmp_path / "s", 1, [], views=2, sigma=10, **FAST)
    with tarfile.open(tmp_path / "s" / "shard-000000.tar") as tar:
        record = json.loads(tar.extractfile("00000000.json").read(), parse_constant=refuse)
    assert torch.tensor(record["view_z"]).isfinite().all()
    for name in ("settings.json", "index.json", ".shard-000000.tar.digest"):
        json.loads((tmp_path / "s" / name).read_text(), parse_constant=refuse)
    images = tar_images(tmp_path / "s" / "shard-000000.tar")
    assert all(a.std() > 1 for a in images.values())  # views, not black squares


@pytest.mark.parametrize("edit,fragment", [
    (dict(shard_size=0), "field 'shard_size' must be an integer in [1, 100000], got 0"),
    (dict(n="abc"), "field 'n' must be an integer in [1, 100000000], got 'abc'"),
    (dict(n=1e19), "field 'n' must be an integer in [1, 100000000], got 1e+19"),
    (dict(n=10**19), "field 'n' must be an integer in [1, 100000000], got 10000000000000000000"),
    (dict(sigma=float("inf")), "field 'sigma' must be a finite number in [0, 10], got inf"),
    (dict(truncation=True), "field 'truncation' must be a finite number"),
    (dict(layout="zip"), "field 'layout' must be one of webdataset, folder, got 'zip'"),
    (dict(domains=[{"name": "../up", "digest": "0", "prompt": None}]), "field 'domains' holds the name '../up'"),
    (dict(generator=None), "field 'generator' must hold the generator's name"),
    (dict(size=1 << 20), "field 'size' must be an integer in [1, 32]"),
    (dict(theme="dark"), "unexpected field 'theme'"),
    (dict(n=None), "field 'n' must be an integer"),
    (dict(format_version=7), "dataset format 7 is not one this version reads"),
])
def test_a_hand_edited_settings_file_is_one_line(tmp_path, tiny_G, doms, edit, fragment):
    out = tmp_path / "d"
    hd.make_dataset(tiny_G, out, 2, doms, **FAST)
    path = out / "settings.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    assert_user_error(cli("dataset", "--out", out, "--verify"), str(out), fragment)
    with pytest.raises(HyperdomainError, match=re.escape(fragment)):
        hd.make_dataset(tiny_G, out, 2, doms, **FAST)


def test_verify_stops_at_settings_that_do_not_fit_the_index(tmp_path, tiny_G, doms):
    """Settings within bounds that the index does not describe (a hundred million shards): one line, at once."""
    out = tmp_path / "d"
    hd.make_dataset(tiny_G, out, 2, doms, **FAST)
    path = out / "settings.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "n": 10**8, "shard_size": 1}))
    assert_user_error(cli("dataset", "--out", out, "--verify"), "index.json and settings.json describe different")
    index = json.loads((out / "index.json").read_text())
    index["settings"] = json.loads(path.read_text())
    (out / "index.json").write_text(json.dumps(index))
    assert_user_error(cli("dataset", "--out", out, "--verify"), "index.json lists 1 shards, the settings give 100000000")


def test_another_programs_settings_file_is_not_a_dataset(tmp_path, tiny_G, doms):
    for content in ('{"theme": "dark"}', "[1, 2]", '{"dataset_format": "other", "n": 3}'):
        out = tmp_path / "mine"
        out.mkdir(exist_ok=True)
        (out / "settings.json").write_text(content)
        for r in (cli("dataset", "--out", out, "--verify"),):
            assert_user_error(r, f"{out}: not a hyperdomain dataset folder")
        with pytest.raises(HyperdomainError, match="not a hyperdomain dataset folder"):
            hd.make_dataset(tiny_G, out, 2, doms, **FAST)
        assert [p.name for p in out.iterdir()] == ["settings.json"] and (out / "settings.json").read_text() == content
    (out / "settings.json").write_text("{not json")
    assert_user_error(cli("dataset", "--out", out, "--verify"), "settings.json", "not JSON")


def test_a_domain_for_another_generator_is_refused(tmp_path, tiny_G, doms):
    other = make_tiny_generator(seed=1)
    with pytest.raises(HyperdomainError, match="was trained for generator"):
        hd.make_dataset(other, tmp_path / "x", 3, doms, **FAST)
    small = hd.Domain(torch.zeros(10), (10,))
    with pytest.raises(HyperdomainError, match="has 10 numbers in 1 convs"):
        hd.make_dataset(tiny_G, tmp_path / "x", 3, [small], **FAST)
    assert not (tmp_path / "x").exists()
    hd.make_dataset(tiny_G, tmp_path / "done", 2, doms, **FAST)
    before = tree(tmp_path / "done")
    with pytest.raises(HyperdomainError, match="has 10 numbers in 1 convs"):
        hd.make_dataset(tiny_G, tmp_path / "done", 2, [doms[0], small], **FAST)
    assert tree(tmp_path / "done") == before


def test_a_full_disk_stops_with_one_line_and_keeps_complete_shards(tmp_path, tiny_G, doms, monkeypatch):
    from hyperdomain.datasets import shards

    out = tmp_path / "full"
    real = shards.TarShardWriter.add

    def add(self, name, data):
        if name.startswith("00000004"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, data)

    monkeypatch.setattr(shards.TarShardWriter, "add", add)
    with pytest.raises(HyperdomainError, match=r"shard-000001.tar: cannot write the shard \(No space left on device\)"):
        hd.make_dataset(tiny_G, out, 6, doms, **FAST)
    assert sorted(p.name for p in out.iterdir()) == [".shard-000000.tar.digest", "settings.json", "shard-000000.tar"]
    with tarfile.open(out / "shard-000000.tar") as tar:
        assert len(tar.getmembers()) == 3 * 4
    with pytest.raises(HyperdomainError, match="cannot create the dataset folder"):
        hd.make_dataset(tiny_G, out / "settings.json" / "sub", 3, doms, **FAST)  # under a file: unwritable


def test_an_io_error_in_a_shard_is_a_storage_fault(tmp_path, tiny_ckpt, domain_files, monkeypatch):
    """EIO (or a full disk) while a shard is written: the storage's fault, exit 1, one line; then a resume finishes."""
    from hyperdomain.datasets import shards

    ckpt, _ = tiny_ckpt
    out = tmp_path / "eio"
    args = ["dataset", "--generator", ckpt, "-d", domain_files[0], "-n", 5, "--shard-size", 3, "--out", out,
            "--device", "cpu", "--no-progress"]
    real = shards.TarShardWriter.add

    def add(self, name, data):
        if name.startswith("00000004"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(self, name, data)

    monkeypatch.setattr(shards.TarShardWriter, "add", add)
    r = cli(*args)
    assert_storage_error(r, str(out / "shard-000001.tar"), "cannot write the shard", os.strerror(errno.EIO),
                         "complete shards are kept")
    assert sorted(p.name for p in out.iterdir()) == [".shard-000000.tar.digest", "settings.json", "shard-000000.tar"]
    monkeypatch.setattr(shards.TarShardWriter, "add", real)
    assert cli(*args, "--verify").exit_code == 0


# ------------------------------------------------------------------------------------ CLI
@pytest.fixture
def domain_files(tmp_path, doms):
    paths = [tmp_path / "pixar.safetensors", tmp_path / "anime.safetensors"]
    for d, p in zip(doms, paths):
        d.save(p)
    return paths


def test_cli_dataset_verify_and_resume_message(tmp_path, tiny_ckpt, domain_files, monkeypatch):
    ckpt, _ = tiny_ckpt
    out = tmp_path / "ds"
    base = ["dataset", "--generator", ckpt, "-d", domain_files[0], "-d", domain_files[1], "-n", 5, "--views", 1,
            "--shard-size", 2, "--batch", 3, "--out", out, "--device", "cpu", "--no-progress"]
    r = cli(*base, "--verify")
    assert r.exit_code == 0, r.output
    assert "wrote" in r.stdout and "5 samples, 20 images in 3 shards (webdataset, 32 px png), verified" in r.stdout
    index = json.loads((out / "index.json").read_text())
    assert [d["name"] for d in index["settings"]["domains"]] == ["pixar", "anime"]
    r = cli("dataset", "--out", out, "--verify")
    assert r.exit_code == 0 and "verified 5 samples, 20 images in 3 shards" in r.stdout, r.output
    r = cli(*base)  # complete: nothing to do, same files
    assert r.exit_code == 0, r.output
    # Ctrl-C: one line saying how to resume, exit 130
    import hyperdomain.datasets.make as make

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(make, "render_rows", interrupt)
    r = cli(*base[:-4], tmp_path / "ds2", "--device", "cpu", "--no-progress")
    assert r.exit_code == 130 and "run the same command again to resume" in r.stderr, r.output
    assert sorted(p.name for p in (tmp_path / "ds2").iterdir()) == ["settings.json"]


def test_cli_bad_input_gives_one_line(tmp_path, tiny_ckpt, domain_files, tiny_clip_config):
    ckpt, _ = tiny_ckpt
    base = ["dataset", "--generator", ckpt, "--device", "cpu", "--no-progress"]
    out = tmp_path / "o"
    for args, fragments in (
        (["-n", 0, "--out", out], ["--num", "in [1, 100000000], got 0"]),
        (["-n", 3, "--views", -2, "--out", out], ["--views", "in [0, 1000], got -2"]),
        (["-n", 3, "--shard-size", 0, "--out", out], ["--shard-size"]),
        (["-n", 3, "--size", 64, "--out", out], ["--size 64", "32 px"]),
        (["--out", out], ["-n/--num is required"]),
        (["-n", 3, "-p", "Anime", "--out", out], ["--hyper FILE"]),
        (["-n", 3, "-d", tmp_path / "missing.safetensors", "--out", out], ["missing.safetensors"]),
    ):
        assert_user_error(cli(*base, *args), *fragments)
    assert not out.exists()
    # a domain for another generator
    other = hd.Domain(torch.zeros(10), (10,), {"generator": "big"})
    other.save(tmp_path / "big.safetensors")
    assert_user_error(cli(*base, "-n", 3, "-d", tmp_path / "big.safetensors", "--out", out), "big.safetensors", "convs")
    # a prompt list with errors: every problem named, before any model is loaded
    from hyperdomain.model.hypernet import HyperConfig, HyperDomainNet

    G = make_tiny_generator()
    net = HyperDomainNet(HyperConfig(domain_dims=G.domain_dims, input_dim=32, width=16, block_width=16),
                         meta={"generator": "tiny", "generator_fingerprint": G.fingerprint})
    net.save(tmp_path / "hdn.safetensors")
    bad = tmp_path / "bad.txt"
    bad.write_text("Anime painting\nanime  painting\nSketch - \n")
    assert_user_error(cli(*base, "-n", 3, "--hyper", tmp_path / "hdn.safetensors", "--prompts", bad, "--out", out),
                      "bad.txt", "line 2: duplicate of line 1", "line 3: empty source")
    assert not out.exists()
    # an existing folder of other files; a finished dataset verified with damage
    out.mkdir()
    (out / "mine.txt").write_text("x")
    assert_user_error(cli(*base, "-n", 3, "--out", out), "not empty")
    # the hypernetwork's prompts make a dataset
    good = tmp_path / "good"
    r = cli(*base, "-n", 2, "--hyper", tmp_path / "hdn.safetensors", "-p", "Anime painting", "--hyper-clip",
            tiny_clip_config, "--out", good, "--shard-size", 2)
    assert r.exit_code == 0, r.output
    assert json.loads((good / "index.json").read_text())["keys"] == ["source", "anime_painting"]
    data = bytearray((good / "shard-000000.tar").read_bytes())
    data[700] ^= 1
    (good / "shard-000000.tar").write_bytes(bytes(data))
    assert_user_error(cli("dataset", "--out", good, "--verify"), "shard-000000.tar", "the index says")


# ------------------------------------------------------------------------------------ processes
def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _cli_args(ckpt, domain_files, out, n=9, shard_size=2, batch=3):
    return ["dataset", "--generator", str(ckpt), "-d", str(domain_files[0]), "-d", str(domain_files[1]), "-n", str(n),
            "--views", "1", "--shard-size", str(shard_size), "--batch", str(batch), "--out", str(out), "--device", "cpu",
            "--no-progress"]


@pytest.mark.slow  # three processes
def test_sigkill_mid_shard_then_resume_is_byte_identical(tmp_path, tiny_ckpt, domain_files):
    ckpt, _ = tiny_ckpt
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run([sys.executable, "-m", "cli.main", *_cli_args(ckpt, domain_files, whole, shard_size=3)], cwd=ROOT,
                   env=_env(), check=True, capture_output=True, timeout=300)
    ready = tmp_path / "stalled"
    # the worker stalls in its 4th step, inside shard 1 (3 samples x 4 images: a step of 8 rows, then 4)
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "dataset_worker.py"), str(ready), "3",
                             *_cli_args(ckpt, domain_files, cut, shard_size=3)], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not ready.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    partial = cut / ".shard-000001.tar.partial"
    assert partial.is_file()  # killed with a shard half made
    assert sorted(p.name for p in cut.glob("shard-*")) == ["shard-000000.tar"]  # no reader takes it for complete
    # resumed with another --batch: it changes no byte
    r = subprocess.run([sys.executable, "-m", "cli.main", *_cli_args(ckpt, domain_files, cut, shard_size=3, batch=16)],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert tree(cut) == tree(whole)


@pytest.mark.slow  # torchrun with 2 processes
def test_torchrun_ranks_write_disjoint_shards_equal_to_one_process(tmp_path, tiny_ckpt, domain_files):
    ckpt, _ = tiny_ckpt
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "cli.main", *_cli_args(ckpt, domain_files, one)], cwd=ROOT, env=_env(),
                   check=True, capture_output=True, timeout=300)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cli.main", "-v",
           *_cli_args(ckpt, domain_files, two)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1, proc.stdout
    written = {}
    for line in proc.stderr.splitlines():
        if "dataset shard" in line and "written by rank" in line:
            name, rank = line.split("dataset shard ")[1].split(" written by rank ")
            written.setdefault(int(rank.split()[0]), []).append(name)
    assert written == {0: ["shard-000000.tar", "shard-000002.tar", "shard-000004.tar"],
                       1: ["shard-000001.tar", "shard-000003.tar"]}, proc.stderr[-3000:]
    assert tree(two) == tree(one)
