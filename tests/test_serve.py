"""The web app (hyperdomain serve) through its API with gradio_client, on tiny models; and the
pieces behind it without a server. The browser test is tests/test_serve_browser.py."""
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hyperdomain as hd
from hyperdomain.errors import HyperdomainError
from hyperdomain.webapp import explore, jobs
from hyperdomain.webapp.models import NONE, PROMPT, SOURCE

from conftest import assert_user_error, cli
from serve_fixtures import PROMPT as ANIME, expected_grid, load_app_models, make_files, read_rgb

gradio_client = pytest.importorskip("gradio_client", reason="the web app's tests need pip install 'hyperdomain[ui]'")
pytest.importorskip("gradio", reason="the web app's tests need pip install 'hyperdomain[ui]'")


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_clip_config):
    return make_files(tmp_path_factory.mktemp("serve_files"), tiny_clip_config)


@pytest.fixture(scope="module")
def server(files, tmp_path_factory):
    from hyperdomain.webapp.server import start

    running = start(load_app_models(files, tmp_path_factory.mktemp("serve_work")), port=None, block=False)
    yield running
    running.close()


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server.url, verbose=False)


def explore_args(domain=PROMPT, prompt=ANIME, strength=1.0, second=NONE, second_prompt="", mix=0.5,
                 truncation=0.7, seed=0, count=4):
    return [domain, prompt, strength, second, second_prompt, mix, truncation, seed, count]


def app_error(client, *args, api_name):
    with pytest.raises(Exception) as e:
        client.predict(*args, api_name=api_name)
    return str(e.value)


def test_the_server_is_local_and_quiet(server):
    from urllib.parse import urlparse

    import os

    assert urlparse(server.url).hostname == "127.0.0.1"
    assert server.app.analytics_enabled is False and os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"


# ------------------------------------------------------------------------------------------ Explore
def test_explore_renders_what_the_api_renders(client, files):
    for kw, want in [
        (dict(strength=0.5, seed=3), expected_grid(files, 4, 3, 0.7, 0.5)),
        (dict(strength=1.5, truncation=0.4, count=5), expected_grid(files, 5, 0, 0.4, 1.5)),
        (dict(domain=SOURCE, prompt="", count=3), expected_grid(files, 3, 0, 0.7, 1.0, prompt=None)),
        (dict(second="sketch", mix=0.3, strength=0.8),
         expected_grid(files, 4, 0, 0.7, 0.8, second=files.domain, mix=0.3)),
    ]:
        got = read_rgb(client.predict(*explore_args(**kw), api_name="/explore"))
        assert got.shape == want.shape and np.array_equal(got, want), kw
    # the strength changes the picture (the test's hypernetwork predicts a domain far from zero)
    weak = read_rgb(client.predict(*explore_args(strength=0.0), api_name="/explore"))
    assert not np.array_equal(weak, expected_grid(files, 4, 0, 0.7, 1.0))


@pytest.mark.parametrize("kw, fragment", [
    (dict(strength=1e9), "strength"), (dict(strength="nan"), "strength"), (dict(count=0), "count"),
    (dict(count=10_000), "count"), (dict(seed=-1), "seed"), (dict(seed=1.5), "seed"),
    (dict(truncation="abc"), "truncation"), (dict(domain="nope"), "no domain named 'nope'"),
    (dict(prompt=""), "type a prompt"), (dict(mix=-0.5, second="sketch"), "mix"),
])
def test_explore_refuses_absurd_values_sent_to_the_api(client, files, kw, fragment):
    message = app_error(client, *explore_args(**kw), api_name="/explore")
    assert fragment in message, message
    # the server goes on
    assert read_rgb(client.predict(*explore_args(count=1), api_name="/explore")).shape == (36, 36, 3)


def test_explore_downloads_the_grid_and_the_domain(client, files):
    paths = client.predict(*explore_args(strength=0.7, second="sketch", mix=0.25), api_name="/explore_files")
    grid, domain_file = sorted(paths, key=lambda p: p.endswith(".safetensors"))
    assert np.array_equal(read_rgb(grid), expected_grid(files, 4, 0, 0.7, 0.7, second=files.domain, mix=0.25))
    G = hd.load_generator(files.generator)
    d = hd.Domain.load(domain_file, generator=G)
    net = hd.HyperDomainNet.load(files.hyper, generator=G)
    want = hd.mix([net.domain(ANIME, clip=str(files.clip_config)), hd.Domain.load(files.domain)], [0.75, 0.25])
    assert torch.allclose(d.vector, want.vector * 0.7, atol=1e-6) and d.meta["explore"]["strength"] == 0.7


def test_explore_exports_animations(client, files):
    [path] = client.predict(*explore_args(strength=0.9, count=2), "strength", "webp", 5, 10,
                            api_name="/explore_animation")
    with Image.open(path) as im:
        assert im.n_frames == 5
        im.seek(0)
        first = np.asarray(im.convert("RGB"))
        im.seek(4)
        last = np.asarray(im.convert("RGB"))
    # lossless WebP: the way out starts at the source and ends at the panel's grid
    assert np.array_equal(first, expected_grid(files, 2, 0, 0.7, 1.0, prompt=None))
    assert np.array_equal(last, expected_grid(files, 2, 0, 0.7, 0.9))
    [gif] = client.predict(*explore_args(second="sketch", count=2), "morph", "gif", 3, 10,
                           api_name="/explore_animation")
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 3
    assert "second domain" in app_error(client, *explore_args(), "morph", "gif", 3, 10, api_name="/explore_animation")
    assert "frames" in app_error(client, *explore_args(), "strength", "gif", 10**6, 10, api_name="/explore_animation")


def test_domain_files_are_added_or_refused_in_the_page(client, files, server):
    message = app_error(client, gradio_client.handle_file(str(files.foreign_domain)), api_name="/add_domain")
    assert "big.safetensors" in message and "convs" in message
    message = app_error(client, gradio_client.handle_file(str(files.broken)), api_name="/add_domain")
    assert "['.safetensors']" in message  # Gradio's own check of the upload's type
    junk = files.broken.with_name("junk.safetensors")
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    message = app_error(client, gradio_client.handle_file(str(junk)), api_name="/add_domain")
    assert "junk.safetensors" in message, message
    client.predict(gradio_client.handle_file(str(files.domain)), api_name="/add_domain")
    assert "sketch_2" in server.runs.models.choices()  # the same file again, under a unique name


# ------------------------------------------------------------------------------------------ Adapt
def wait_for(condition, timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_adapt_runs_in_the_background_one_at_a_time_and_stops_saved(client, server, files):
    status = client.predict("Sketch of a face", "Photo", None, 400, 0.05, 1, api_name="/adapt_start")
    assert "Sketch of a face" in status
    busy = app_error(client, "Cubism", "Photo", None, 10, None, 0, api_name="/adapt_start")
    assert "already going" in busy and "one run at a time" in busy
    wait_for(lambda: server.runs.status().step >= 2)
    assert server.runs.status().preview is not None and server.runs.status().losses
    status, domain_file = client.predict(api_name="/adapt_stop")
    s = server.runs.status()
    assert s.state == "stopped" and 2 <= s.step < 400 and "stopped at step" in status
    d = hd.Domain.load(domain_file, generator=hd.load_generator(files.generator))
    assert d.meta["iterations"] == s.step and d.meta["prompt"] == "Sketch of a face"
    assert s.domain_name in server.runs.models.choices()
    # the run folder resumes from the command line, as a Ctrl-C'd run does
    assert (s.run_dir / "checkpoint.safetensors").is_file()
    r = cli("adapt", "--resume", s.run_dir, "--iters", s.step + 1, "--device", "cpu", "--no-progress",
            "--clip", files.clip_config)
    assert r.exit_code == 0, r.output
    assert hd.Domain.load(s.run_dir / "domain.safetensors").meta["iterations"] == s.step + 1
    # a finished run: the next one may start; bad settings are one line
    assert "iterations" in app_error(client, "Cubism", "Photo", None, 0, None, 0, api_name="/adapt_start")
    assert "type a prompt" in app_error(client, "", "Photo", None, 10, None, 0, api_name="/adapt_start")


def test_one_shot_run_from_an_uploaded_image(client, server, files):
    assert "notes.png" in app_error(client, "", "Photo", gradio_client.handle_file(str(files.broken)), 5, None, 0,
                                    api_name="/adapt_start")
    client.predict("", "Photo", gradio_client.handle_file(str(files.photo)), 2, None, 0, api_name="/adapt_start")
    s = server.runs.wait(300)
    assert s.state == "done", s.message
    d = hd.Domain.load(s.domain_file)
    assert d.meta["iterations"] == 2 and d.style_latent is not None
    # the run keeps its own copy of the upload, so it resumes after the server's temporary file is gone
    from hyperdomain.training.image import read_image_adapt_config

    kept = Path(read_image_adapt_config(s.run_dir).image)
    assert kept.parent == server.runs.models.work_dir / "uploads" and kept.read_bytes() == files.photo.read_bytes()


# ------------------------------------------------------------------------------------------ Photo
def test_photo_in_the_chosen_domains(client, server, files):
    message = app_error(client, gradio_client.handle_file(str(files.broken)), ["sketch"], "", 2, api_name="/photo")
    assert message.startswith("notes.png: not an image"), message  # named as uploaded, not by a temp path
    grid_path, paths = client.predict(gradio_client.handle_file(str(files.photo)), ["sketch", PROMPT], ANIME, 2,
                                      api_name="/photo")
    grid = read_rgb(grid_path)
    assert grid.shape == (36, 2 + 4 * 34, 3)  # photo, reconstruction, two domains
    latent = hd.Latent.load(next(p for p in paths if p.endswith(".safetensors")))
    G = hd.load_generator(files.generator)
    # the domains' columns are the latent rendered in each domain
    net = hd.HyperDomainNet.load(files.hyper, generator=G)
    doms = torch.stack([hd.Domain.load(files.domain).vector, net.domain(ANIME, clip=str(files.clip_config)).vector])
    with torch.no_grad():
        want = G.synthesis(latent.ws[None].expand(2, -1, -1), domain=doms, noise_mode="const")
    assert np.array_equal(grid[2:34, 2 + 2 * 34:2 + 2 * 34 + 32], hd.make_grid(want[:1]).numpy()[2:34, 2:34])
    assert latent.meta["inversion"]["steps"] == 2
    assert "no domain named" in app_error(client, gradio_client.handle_file(str(files.photo)), ["nope"], "", 2,
                                          api_name="/photo")


# ------------------------------------------------------------------------------------------ pieces
def test_settings_are_checked_as_received():
    assert explore.ExploreSettings(strength="0.5", seed=3.0, count="4").count == 4
    for kw in (dict(strength=1.51), dict(mix=2), dict(truncation=-0.1), dict(seed=2**31), dict(count=17),
               dict(domain=3), dict(strength=float("inf"))):
        with pytest.raises(HyperdomainError):
            explore.ExploreSettings(**kw)


def test_runs_are_one_at_a_time(tmp_path, files):
    models = load_app_models(files, tmp_path)
    runs = jobs.Runs(models)
    runs.start("Sketch", iters=1000)
    with pytest.raises(HyperdomainError, match="already going"):
        runs.start("Cubism", iters=5)
    runs.stop()
    s = runs.wait(120)
    assert s.state in ("stopped",) and s.step < 1000
    assert runs.start("Cubism", iters=2).busy
    assert runs.wait(120).state == "done"
    assert [p.name for p in sorted((tmp_path / "runs").iterdir())] == ["cubism", "sketch"]


def test_serve_command_checks_before_loading(tmp_path, files):
    assert_user_error(cli("serve", "-g", tmp_path / "missing.pt"), "missing.pt")
    (tmp_path / "file").write_text("x")
    assert_user_error(cli("serve", "-g", files.generator, "--work-dir", tmp_path / "file"), "--work-dir")
    assert_user_error(cli("serve", "-g", files.generator, "-d", files.foreign_domain, "--device", "cpu"),
                      "big.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("signum, port", [(2, 7990), (15, 7991)])  # Ctrl-C, SIGTERM
def test_serve_command_listens_on_loopback_and_a_signal_stops_it_saving_the_run(tmp_path, files, signum, port):
    """The real command in a process: it says where it listens (127.0.0.1) and serves the page; on
    Ctrl-C or SIGTERM a run in progress stops at its next step and saves before the server exits."""
    import json
    import os
    import re
    import subprocess
    import sys
    import urllib.request

    root = Path(__file__).resolve().parents[1]
    work = tmp_path / "work"
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "-g", files.generator, "--port", str(port),
                             "--work-dir", work, "--device", "cpu", "--hyper", files.hyper,
                             "--hyper-clip", files.clip_config, "--clip", files.clip_config],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"})
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "hyperdomain app on" in line:
                break
        url = re.search(r"hyperdomain app on (\S+)", "".join(lines)).group(1)
        assert url.startswith(f"http://127.0.0.1:{port}"), lines
        assert b"<html" in urllib.request.urlopen(url, timeout=30).read()
        gradio_client.Client(url, verbose=False).predict("Sketch", "Photo", None, 5000, "", 0,
                                                         api_name="/adapt_start")
        log = work / "runs" / "sketch" / "log.jsonl"
        wait_for(lambda: log.is_file() and len(log.read_text().splitlines()) >= 2)
        proc.send_signal(signum)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    steps = len(log.read_text().splitlines())
    d = hd.Domain.load(work / "runs" / "sketch" / "domain.safetensors")
    assert 2 <= d.meta["iterations"] == steps < 5000
    assert json.loads(log.read_text().splitlines()[-1])["step"] == steps
    assert (work / "runs" / "sketch" / "checkpoint.safetensors").is_file()


def test_serve_without_gradio_says_how_to_get_it(tmp_path, files, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    assert_user_error(cli("serve", "-g", files.generator, "--work-dir", tmp_path / "w"), "pip install 'hyperdomain[ui]'")
    assert not (tmp_path / "w").exists()
