"""What commands write: never over one of their inputs, never over a file of another kind, over a
file of the same kind only with --overwrite, every output checked before any work, run folders only
new, empty or resumed, and names that never collide (one file per image)."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import hyperdomain as hd
from hyperdomain.errors import HyperdomainError
from hyperdomain.files import kinds
from hyperdomain.files.run_checkpoints import CHECKPOINT
from hyperdomain.files.safetensors_files import checkpoint_format, write_own_file

from conftest import assert_user_error, cli

QUICK = ["--lpips-vgg", "random", "--pca-samples", "300", "--no-align", "--device", "cpu", "--no-progress"]


def fake_run(folder, kind):
    """A run folder whose checkpoint names trainer ``kind`` (only its header is ever read here)."""
    folder.mkdir(parents=True)
    write_own_file(folder / CHECKPOINT, checkpoint_format(kind), 1, {"x": torch.zeros(1)}, {"meta": "{}"})
    (folder / "config.json").write_text("{}\n")
    return folder


@pytest.fixture
def f(tmp_path, tiny_G, tiny_ckpt, tiny_clip_config):
    """One file of every kind a command reads or writes."""
    dims, fp = tiny_G.domain_dims, tiny_G.fingerprint
    g = torch.Generator().manual_seed(0)
    domains = []
    for name in ("a", "b"):  # the same file name twice, as runs write them
        (tmp_path / name).mkdir()
        d = hd.Domain(0.3 * torch.randn(sum(dims), generator=g), dims,
                      {"generator": "tiny", "generator_fingerprint": fp, "prompt": name})
        domains.append(d.save(tmp_path / name / "domain.safetensors"))
    hyper = hd.HyperDomainNet(hd.HyperConfig(domain_dims=dims, input_dim=32, width=16, block_width=16),
                              {"input_clip": hd.load_clip([str(tiny_clip_config)])[0].label, "generator": "tiny", "generator_fingerprint": fp}
                              ).save(tmp_path / "hdn.safetensors")
    td = tmp_path / "td.pt"
    torch.save({"model_type": "parameterization", "patch_key": "cin_mult", "da_type": "td",
                "state_dict": {f"heads.conv_{k}.params_in": 0.1 * torch.randn(1, 1, c, 1, 1, generator=g)
                               for k, c in enumerate(dims)}}, td)
    photo = tmp_path / "me.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3)).astype(np.uint8)).save(photo)
    latent = hd.Latent(torch.randn(tiny_G.num_ws, tiny_G.w_dim, generator=g),
                       {"generator": "tiny", "generator_fingerprint": fp}).save(tmp_path / "me.safetensors")
    return SimpleNamespace(gen=tiny_ckpt[0], domains=domains, hyper=hyper, td=td, photo=photo, latent=latent,
                           run=fake_run(tmp_path / "run", "adapt"), clip=tiny_clip_config)


def contents(*paths):
    return {p: p.read_bytes() for p in paths}


@pytest.fixture
def nothing_loads(monkeypatch):
    """Output checks come first: a command that gets to loading the generator fails the test."""
    def loaded(*args, **kwargs):
        raise AssertionError("the generator was loaded before the outputs were checked")

    monkeypatch.setattr(hd, "load_generator", loaded)


# ------------------------------------------------------------------------------------ file kinds
def test_file_kinds(tmp_path, f):
    (tmp_path / "r.json").write_text(json.dumps([{"name": "a", "quality": 0.3, "diversity": 0.1}]))
    (tmp_path / "r.csv").write_text("name,prompt,split,quality,diversity,n\n")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("RGB", (4, 4)).save(tmp_path / "x.jpg")
    Image.new("RGB", (4, 4)).save(tmp_path / "x.webp")
    expected = {f.domains[0]: kinds.DOMAIN_KIND, f.hyper: kinds.HYPERNET_KIND, f.latent: kinds.LATENT_KIND,
                f.run / CHECKPOINT: "adapt run checkpoint", f.gen: kinds.TORCH_CHECKPOINT, f.td: kinds.TORCH_CHECKPOINT,
                f.photo: kinds.IMAGE, tmp_path / "x.jpg": kinds.IMAGE, tmp_path / "x.webp": kinds.IMAGE,
                tmp_path / "r.json": kinds.RESULTS, tmp_path / "r.csv": kinds.RESULTS,
                f.run / "config.json": kinds.OTHER, tmp_path / "empty.png": kinds.EMPTY, f.run: kinds.FOLDER}
    assert {p: kinds.file_kind(p) for p in expected} == expected
    assert kinds.file_kind(fake_run(tmp_path / "h", "hyper") / CHECKPOINT) == "train-hyper run checkpoint"
    assert kinds.file_kind(fake_run(tmp_path / "i", "image") / CHECKPOINT) == "adapt --image run checkpoint"


def test_image_suffixes_are_the_ones_images_are_written_as():
    from hyperdomain.media.grids import _FORMATS

    assert set(kinds.IMAGE_SUFFIXES) == set(_FORMATS)


# ------------------------------------------------------------------------------------ export, import
@pytest.mark.parametrize("target,fragment", [("hyper", "inputs"), ("gen", "PyTorch checkpoint"),
                                             ("run", "adapt run checkpoint")])
def test_export_never_replaces_its_input_or_another_kind(f, target, fragment):
    out = {"hyper": f.hyper, "gen": f.gen, "run": f.run / CHECKPOINT}[target]
    before = contents(out)
    for extra in ([], ["--overwrite"]):  # not even when told to overwrite
        assert_user_error(cli("export", "--hyper", f.hyper, "-p", "Anime painting", "--out", out, *extra),
                          str(out), fragment)
    assert contents(out) == before


def test_export_replaces_a_domain_only_with_overwrite(f):
    out = f.domains[0]
    before = contents(out)
    args = ["export", "--hyper", f.hyper, "-p", "Anime painting", "--out", out, "--hyper-clip", f.clip]
    assert_user_error(cli(*args), str(out), "already exists", "--overwrite")
    assert contents(out) == before
    r = cli(*args, "--overwrite")
    assert r.exit_code == 0, r.output
    assert hd.Domain.load(out).meta["prompt"] == "Anime painting"


def test_import_never_replaces_its_checkpoint(f):
    before = contents(f.td, f.hyper)
    assert_user_error(cli("import", f.td, "--prompt", "Sketch", "--out", f.td, "--overwrite"), "inputs")
    assert_user_error(cli("import", f.td, "--prompt", "Sketch", "--out", f.hyper, "--overwrite"),
                      "hypernetwork file, not domain file")
    assert contents(f.td, f.hyper) == before


# ------------------------------------------------------------------------------------ sample
def test_sample_checks_every_output_before_it_loads_anything(tmp_path, f, nothing_loads):
    base = ["sample", "--generator", f.gen, "--domain", f.domains[0], "-n", 2, "--device", "cpu"]
    grid = tmp_path / "grid.png"
    grid.write_bytes(f.photo.read_bytes())
    assert_user_error(cli(*base, "--out", grid), str(grid), "--overwrite")
    assert_user_error(cli(*base, "--out", tmp_path / "g.gif"), "unknown image type '.gif'")
    assert_user_error(cli(*base, "--out", tmp_path / "g.png", "--separate", f.photo / "frames"),
                      "not a folder")
    assert_user_error(cli(*base, "--out", tmp_path / "s" / "domain_00001.png", "--separate", tmp_path / "s"),
                      "twice")
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "domain_00001.png").write_bytes(f.photo.read_bytes())
    assert_user_error(cli(*base, "--out", tmp_path / "g.png", "--separate", frames), "domain_00001.png",
                      "--overwrite")
    assert not (tmp_path / "g.png").exists()


def test_names_too_long_for_the_file_system_are_refused_before_any_work(tmp_path, f, nothing_loads):
    """A name past NAME_MAX (the file's, as its temporary .NAME.XXXXXXXX.tmp, or a folder's still to be
    made) or a path past PATH_MAX was found only when the first file was written, after the work (a
    minute of inversion); now it is one line, exit 2, before anything loads."""
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    long = "x" * 300
    assert_user_error(cli("sample", "--generator", f.gen, "--out", tmp_path / f"{long}.png"),
                      f"--out {tmp_path / long}.png: the name", "is too long for this file system (304 bytes; at most "
                      f"{name_max - 14} here)")
    fits_only_without_temp = "y" * (name_max - 4) + ".png"  # NAME_MAX itself; its temporary name is not
    assert_user_error(cli("sample", "--generator", f.gen, "--out", tmp_path / fits_only_without_temp), "too long")
    assert_user_error(cli("invert", f.photo, "--generator", f.gen, "--out", tmp_path / long / "latents", *QUICK),
                      f"--out {tmp_path / long / 'latents' / 'me.safetensors'}: the name", "(300 bytes; at most "
                      f"{name_max} here)")
    deep = tmp_path.joinpath(*["z" * 200] * 25) / "g.png"
    assert_user_error(cli("sample", "--generator", f.gen, "--out", deep), "the path is too long for this file system")
    for command in (["adapt", "-t", "Sketch"], ["train-hyper"]):
        assert_user_error(cli(*command, "--generator", f.gen, "--out", tmp_path / long), "is too long")
    assert not any(len(p.name) > 100 for p in tmp_path.iterdir())  # nothing was made


def test_a_name_that_just_fits_is_written(tmp_path, f):
    name = "w" * (os.pathconf(tmp_path, "PC_NAME_MAX") - 14 - 4) + ".png"  # its temporary name: NAME_MAX
    r = cli("sample", "--generator", f.gen, "-n", 1, "--out", tmp_path / name, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert (tmp_path / name).is_file()


def test_sample_refuses_an_input_under_another_name(tmp_path, f, nothing_loads):
    link = tmp_path / "link.png"
    link.symlink_to(f.domains[0])
    hard = tmp_path / "hard.png"
    os.link(f.domains[0], hard)
    before = contents(f.domains[0])
    for out in (link, hard):
        assert_user_error(cli("sample", "--generator", f.gen, "--domain", f.domains[0], "--out", out, "--overwrite",
                              "--device", "cpu"), "inputs")
    assert contents(f.domains[0]) == before


def test_sample_writes_one_file_per_image(tmp_path, f):
    frames = tmp_path / "frames"
    r = cli("sample", "--generator", f.gen, *[a for d in f.domains for a in ("--domain", d)], "--with-source",
            "-n", 2, "--out", tmp_path / "g.png", "--separate", frames, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in frames.iterdir()) == [
        "domain_00000.png", "domain_00001.png", "domain_2_00000.png", "domain_2_00001.png",
        "source_00000.png", "source_00001.png"]
    # prompts whose names collide with each other and with a domain file's
    anime = tmp_path / "anime_painting.safetensors"
    anime.write_bytes(f.domains[0].read_bytes())
    frames = tmp_path / "frames2"
    r = cli("sample", "--generator", f.gen, "--domain", anime, "--hyper", f.hyper, "--hyper-clip", f.clip,
            "-p", "Anime painting", "-p", "anime painting!", "-n", 2, "--out", tmp_path / "g2.png",
            "--separate", frames, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert len(list(frames.iterdir())) == 3 * 2


# ------------------------------------------------------------------------------------ invert, stylize
@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_invert_never_replaces_a_photo_even_with_overwrite(tmp_path, f, nothing_loads, link):
    out = tmp_path / "latents"
    out.mkdir()
    (out / "me.png").symlink_to(f.photo) if link == "symlink" else os.link(f.photo, out / "me.png")
    before = contents(f.photo)
    assert_user_error(cli("invert", f.photo, "--generator", f.gen, "--out", out, "--overwrite", *QUICK),
                      "me.png", "inputs")
    assert contents(f.photo) == before


def test_invert_refuses_an_existing_latent_without_overwrite(tmp_path, f, nothing_loads):
    out = tmp_path / "latents"
    out.mkdir()
    (out / "me.safetensors").write_bytes(f.latent.read_bytes())
    assert_user_error(cli("invert", f.photo, "--generator", f.gen, "--out", out, *QUICK), "me.safetensors",
                      "--overwrite")
    (out / "me.safetensors").write_bytes(f.domains[0].read_bytes())
    assert_user_error(cli("invert", f.photo, "--generator", f.gen, "--out", out, "--overwrite", *QUICK),
                      "me.safetensors", "domain file, not latent file")
    assert (out / "me.safetensors").read_bytes() == f.domains[0].read_bytes()


def test_stylize_separate_names_are_unique(tmp_path, f):
    photo_domain = tmp_path / "photo.safetensors"
    photo_domain.write_bytes(f.domains[0].read_bytes())
    single = tmp_path / "single"
    r = cli("stylize", "--latent", f.latent, "--generator", f.gen, "--domain", photo_domain,
            *[a for d in f.domains for a in ("--domain", d)], "--out", tmp_path / "styled", "--separate", single,
            "--no-check", "--device", "cpu")
    assert r.exit_code == 0, r.output
    # photo, reconstruction and three domains: five images, five files
    assert sorted(p.name for p in single.iterdir()) == ["me_domain.png", "me_domain_2.png", "me_photo.png",
                                                        "me_photo_2.png", "me_reconstruction.png"]


# ------------------------------------------------------------------------------------ evaluate
def test_evaluate_results(tmp_path, f, nothing_loads):
    results = tmp_path / "r.json"
    results.write_text(json.dumps([{"name": "a", "quality": 0.3, "diversity": 0.1}]))
    base = ["evaluate", "--generator", f.gen, "--domain", f.domains[0], "--clip", f.clip, "-n", 2, "--device", "cpu"]
    assert_user_error(cli(*base, "-o", results), "already exists", "--overwrite")
    config = f.run / "config.json"
    before = contents(results, config)
    assert_user_error(cli(*base, "-o", config, "--overwrite"), str(config), "file of unknown kind, not evaluation results")
    assert contents(results, config) == before


# ------------------------------------------------------------------------------------ run folders
@pytest.fixture
def user_folder(tmp_path):
    """What a user keeps: a finished run's files without its checkpoint."""
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in ("config.json", "domain.safetensors", "samples.png", "log.jsonl"):
        (folder / name).write_text(name)
    return folder


def test_a_new_run_never_replaces_files_in_its_folder(tmp_path, tiny_G, tiny_clip, user_folder, f):
    before = contents(*user_folder.iterdir())
    with pytest.raises(HyperdomainError, match="holds files but no run"):
        hd.adapt(tiny_G, "Sketch", clip=[tiny_clip], iters=1, out_dir=user_folder, progress=False)
    with pytest.raises(HyperdomainError, match="holds files but no run"):
        hd.adapt_image(tiny_G, f.photo, clip=[tiny_clip], iters=1, out_dir=user_folder, progress=False)
    with pytest.raises(HyperdomainError, match="holds files but no run"):
        hd.train_hyper(tiny_G, clip=[tiny_clip], input_clip=tiny_clip, domains="builtin:train", iters=1,
                       out_dir=user_folder, progress=False)
    assert contents(*user_folder.iterdir()) == before


def test_cli_run_folders_of_another_kind(tmp_path, f, user_folder, nothing_loads):
    hyper_run = fake_run(tmp_path / "hdn", "hyper")
    image_run = fake_run(tmp_path / "oneshot", "image")
    base = ["--generator", f.gen, "--clip", f.clip, "--iters", 1, "--device", "cpu"]
    assert_user_error(cli("adapt", "--target", "Sketch", "--out", hyper_run, *base),
                      str(hyper_run), "holds a train-hyper run, not an adapt run")
    assert_user_error(cli("adapt", "--target", "Sketch", "--out", image_run, *base),
                      "holds an adapt --image run, not an adapt run")
    assert_user_error(cli("adapt", "--image", f.photo, "--out", f.run, *base),
                      "holds an adapt run, not an adapt --image run")
    assert_user_error(cli("train-hyper", "--out", f.run, *base), "holds an adapt run, not a train-hyper run")
    assert_user_error(cli("adapt", "--target", "Sketch", "--out", f.run, *base), "already holds a run", "--resume")
    assert_user_error(cli("adapt", "--target", "Sketch", "--out", user_folder, *base), "holds files but no run")


def test_trainers_name_their_sample_grids_alike(tmp_path, tiny_G, tiny_clip):
    """Every trainer writes samples/step_NNNNNN.png; an empty folder is a new run's as well as a new one."""
    (tmp_path / "adapt").mkdir()
    hd.adapt(tiny_G, "Sketch", clip=[tiny_clip], iters=2, batch=2, sample_every=1, sample_n=1,
             out_dir=tmp_path / "adapt", progress=False)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Sketch\nZombie\n")
    hd.train_hyper(tiny_G, clip=[tiny_clip], input_clip=tiny_clip, domains=str(prompts), test_domains=None, iters=2,
                   batch=2, width=16, templates="single", sample_every=1, sample_n=1, sample_prompts=1,
                   checkpoint_every=0,
                   out_dir=tmp_path / "hyper", progress=False)
    grids = [sorted(p.name for p in (tmp_path / run / "samples").iterdir()) for run in ("adapt", "hyper")]
    assert grids[0] == grids[1] == ["step_000001.png"]
