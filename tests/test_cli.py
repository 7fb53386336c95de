import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from cli.main import main
from hyperdomain.model.domain import Domain

from conftest import assert_user_error, cli as run, make_tiny_generator

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def domains(tmp_path, tiny_G):
    paths = []
    for seed in range(2):
        g = torch.Generator().manual_seed(seed)
        d = Domain(0.5 * torch.randn(tiny_G.num_domain_params, generator=g), tiny_G.domain_dims,
                   {"generator": "tiny", "generator_fingerprint": tiny_G.fingerprint, "prompt": f"style {seed}"})
        paths.append(d.save(tmp_path / f"style{seed}.safetensors"))
    return paths


def test_sample_rows_per_domain(tmp_path, tiny_ckpt, domains, tiny_G):
    ckpt, latent_avg = tiny_ckpt
    tiny_G.set_latent_avg(latent_avg)
    out = tmp_path / "grid.png"
    r = run("sample", "--generator", ckpt, "--domain", domains[0], "--domain", domains[1], "--with-source",
            "-n", 4, "--seed", 3, "--out", out, "--separate", tmp_path / "frames", "--device", "cpu")
    assert r.exit_code == 0, r.output
    img = Image.open(out)
    assert img.size == (4 * 34 + 2, 3 * 34 + 2)  # 4 per row, 3 rows (source + 2 domains), 2 px padding
    frames = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert len(frames) == 12 and frames[0] == "source_00000.png" and frames[-1] == "style1_00003.png"
    # the source row holds exactly what the library samples
    import numpy as np

    from hyperdomain.media.grids import make_grid

    expected = make_grid(tiny_G.sample(4, seed=3, truncation=0.7), nrow=4)
    got = torch.from_numpy(np.array(img))[: 34 + 2]
    assert (got.int() - expected[: 34 + 2].int()).abs().max() <= 1
    # domain rows differ from the source row
    assert (torch.from_numpy(np.array(img))[36:70].int() - got[2:36].int()).abs().float().mean() > 1


def test_info_describes_each_kind(tmp_path, tiny_ckpt, domains):
    ckpt, _ = tiny_ckpt
    r = run("info", ckpt)
    assert r.exit_code == 0 and "StyleGAN2 generator" in r.output and "224" in r.output
    r = run("info", domains[0])
    assert r.exit_code == 0 and "domain" in r.output and "style 0" in r.output


def test_import_paper_checkpoint(tmp_path, tiny_G):
    sd = {}
    offset = 0
    for k, c in enumerate(tiny_G.domain_dims):
        sd[f"heads.conv_{k}.params_in"] = torch.full((1, 1, c, 1, 1), 0.01 * k)
        offset += c
    src = tmp_path / "td_test.pt"
    torch.save({"model_type": "parameterization", "patch_key": "cin_mult", "state_dict": sd, "da_type": "td"}, src)
    out = tmp_path / "test.safetensors"
    r = run("import", src, "--prompt", "Sketch", "--out", out)
    assert r.exit_code == 0, r.output
    d = Domain.load(out)
    assert d.meta["prompt"] == "Sketch" and d.dims == tiny_G.domain_dims
    assert torch.equal(d.blocks()[3], torch.full((32,), 0.03))
    assert "paper checkpoint" in run("info", src).output


def test_download_list(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERDOMAIN_HOME", str(tmp_path))
    r = run("download", "--list")
    assert r.exit_code == 0 and "ffhq" in r.output and str(tmp_path) in r.output


def test_user_errors_are_one_line_exit_2(tmp_path, tiny_ckpt, domains, monkeypatch):
    ckpt, _ = tiny_ckpt
    monkeypatch.setenv("HYPERDOMAIN_HOME", str(tmp_path / "home"))
    assert_user_error(run("sample", "--generator", tmp_path / "nope.pt"), "nope.pt", "no such file")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(ckpt.read_bytes()[:500])
    assert_user_error(run("sample", "--generator", bad, "--device", "cpu"), "bad.pt", "corrupt")
    other = make_tiny_generator(seed=9)
    torch.save({"g_ema": other.state_dict()}, tmp_path / "other.pt")
    assert_user_error(run("sample", "--generator", tmp_path / "other.pt", "--domain", domains[0], "--device", "cpu"),
                      "fingerprint")
    r = run("sample", "--generator", tmp_path / "other.pt", "--domain", domains[0], "--no-check", "-n", 1,
            "--out", tmp_path / "ok.png", "--device", "cpu")
    assert r.exit_code == 0, r.output
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    assert_user_error(run("sample", "--generator", ckpt, "-n", 1, "--out", blocker / "g.png", "--device", "cpu"),
                      "cannot write")
    assert_user_error(run("sample", "--generator", ckpt, "--out", tmp_path / "g.gif", "--device", "cpu"), ".gif")
    assert_user_error(run("sample", "--generator", ckpt, "--device", "cuda:7"), "--device")
    assert_user_error(run("sample", "--generator", ckpt, "--domain", tmp_path / "x.safetensors", "--device", "cpu"),
                      "x.safetensors")
    assert_user_error(run("download", "nosuchmodel"), "nosuchmodel")
    assert_user_error(run("info", tmp_path / "missing.pt"), "missing.pt")
    r = run("sample", "-n", 0)
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_console_entry_point_exit_code(tmp_path):
    """The real process: a bad path gives exit code 2 and one line on stderr."""
    proc = subprocess.run([sys.executable, "-m", "cli.main", "info", str(tmp_path / "none.pt")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "none.pt" in proc.stderr


def test_option_defaults_are_the_librarys():
    """Every option whose default lives in the library shows and passes that default, read from the
    config dataclass or function signature (one home), and none of it imports torch for `--help`."""
    import dataclasses
    import inspect

    import hyperdomain as hd
    from cli.options import LibraryDefault
    from hyperdomain.webapp.server import start

    # what the library itself takes when nothing is given: a config built with no options, a signature
    taken = {hd.AdaptConfig: dataclasses.asdict(hd.AdaptConfig(target="x")),
             hd.HyperTrainConfig: dataclasses.asdict(hd.HyperTrainConfig()),
             hd.ImageAdaptConfig: dataclasses.asdict(hd.ImageAdaptConfig(image="x.png")),
             hd.EncoderTrainConfig: dataclasses.asdict(hd.EncoderTrainConfig()),
             hd.InversionConfig: dataclasses.asdict(hd.InversionConfig()),
             hd.evaluate: {k: p.default for k, p in inspect.signature(hd.evaluate).parameters.items()},
             hd.animate: {k: p.default for k, p in inspect.signature(hd.animate).parameters.items()},
             hd.Generator.sample: {k: p.default for k, p in inspect.signature(hd.Generator.sample).parameters.items()},
             hd.make_dataset: {k: p.default for k, p in inspect.signature(hd.make_dataset).parameters.items()},
             hd.invert: {k: p.default for k, p in inspect.signature(hd.invert).parameters.items()},
             start: {k: p.default for k, p in inspect.signature(start).parameters.items()}}
    checked = 0
    for name, command in main.commands.items():
        ctx = command.make_context(name, [], resilient_parsing=True)  # what the command gets with no options
        for param in command.params:
            if isinstance(param, LibraryDefault):
                value = taken[param._owner()][param._field]
                value = value.as_dict() if hasattr(value, "as_dict") else value  # loss weights: a mapping
                if param._fallback:  # left unset, so the generator's recipe can fill it; the help names the value
                    assert ctx.params[param.name] in (None, ())
                    help_text = param.get_help_record(ctx)[1]
                    if isinstance(value, dict) and "direction" in value:  # loss weights, as NAME=WEIGHT items
                        shown = " ".join(f"{k}={v:g}" for k, v in value.items() if v)
                    else:
                        shown = ", ".join(value) if isinstance(value, tuple) else str(value)
                    assert shown in " ".join(help_text.split()), (name, param.name, help_text)
                else:
                    assert ctx.params[param.name] == value, (name, param.name)
                checked += 1
    assert checked >= 40
    out = subprocess.run([sys.executable, "-c", "import sys; from cli.main import main; "
                          "sys.argv = ['hyperdomain', '--help']\ntry: main()\nexcept SystemExit: pass\n"
                          "print('torch' in sys.modules)"], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip().endswith("False"), out.stdout + out.stderr


def test_command_turns_on_huge_pages_before_torch_is_imported(tmp_path, monkeypatch):
    """`python -m cli.main` (as torchrun runs it) sets torch's huge-page switch in its entry point,
    before a command first imports torch (torch reads it once, at its first allocation); importing
    the package alone leaves the environment alone, and a value already set wins."""
    import os

    script = """
import importlib.abc, os, runpy, sys
seen = []
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("THP_MEM_ALLOC_ENABLE"))
sys.meta_path.insert(0, Spy())
import cli, cli.main
print("after import:", os.environ.get("THP_MEM_ALLOC_ENABLE"), "torch" in sys.modules)
sys.argv = ["cli.main", "info", sys.argv[1]]
try:
    runpy.run_module("cli.main", run_name="__main__", alter_sys=True)
except SystemExit as e:
    print("exit:", e.code)
print("torch imported with:", seen)
"""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "none.pt")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.splitlines() == ["after import: None False", "exit: 2", "torch imported with: ['1']"], \
        proc.stdout + proc.stderr
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    assert run("info", tmp_path / "none.pt").exit_code == 2
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"
