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

    running = start(load_app_models(files, tmp_path_factory.mktemp("serve_work")), port=None, block=False,
                    max_upload_mb=1)
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
    # the run folder resumes from the command line, as a Ctrl-C'd run does, with the CLIP the run recorded
    assert (s.run_dir / "checkpoint.safetensors").is_file()
    r = cli("adapt", "--resume", s.run_dir, "--iters", s.step + 1, "--device", "cpu", "--no-progress")
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
    from hyperdomain.training.one_shot import read_image_adapt_config

    kept = Path(read_image_adapt_config(s.run_dir).image)
    assert kept.parent == server.runs.models.work_dir / "uploads" and kept.read_bytes() == files.photo.read_bytes()


# ------------------------------------------------------------------------------------------ Photo
def test_photo_in_the_chosen_domains(client, server, files):
    message = app_error(client, gradio_client.handle_file(str(files.broken)), ["sketch"], "", 2, api_name="/photo")
    assert message.startswith("notes.png: not an image"), message  # named as uploaded, not by a temp path
    grid_path, paths = client.predict(gradio_client.handle_file(str(files.photo)), ["sketch", PROMPT], ANIME, 2,
                                      "II2S", api_name="/photo")
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
    assert latent.meta["inversion"]["steps"] == 2 and latent.meta["method"] == "ii2s"
    assert "no domain named" in app_error(client, gradio_client.handle_file(str(files.photo)), ["nope"], "", 2,
                                          api_name="/photo")


def test_photo_through_the_encoder_by_default(client, server, files):
    """With an encoder the panel's default is one pass through it (no II2S step); "encoder + II2S"
    refines from its latent; a method the page does not offer is one line."""
    from hyperdomain.image.encoders import load_encoder

    photo = gradio_client.handle_file(str(files.photo))
    _, paths = client.predict(photo, ["sketch"], "", 2, api_name="/photo")  # the method left to its default
    latent = hd.Latent.load(next(p for p in paths if p.endswith(".safetensors")))
    assert latent.meta["method"] == "e4e" and "inversion" not in latent.meta
    G = hd.load_generator(files.generator)
    [want] = hd.invert(G, [files.photo], encoder=load_encoder(files.encoder), align=False, lpips_backbone="random",
                     progress=False)
    assert torch.allclose(latent.ws, want.ws, atol=1e-6)  # the app's latent is the library's encoding
    _, paths = client.predict(photo, ["sketch"], "", 2, "encoder + II2S", api_name="/photo")
    refined = hd.Latent.load(next(p for p in paths if p.endswith(".safetensors")))
    assert refined.meta["method"] == "e4e + ii2s refine 2" and refined.meta["inversion"]["steps"] == 2
    assert not torch.equal(refined.ws, latent.ws)  # II2S moved it from the encoder's latent
    assert "not in the list of choices" in app_error(client, photo, ["sketch"], "", 2, "telepathy", api_name="/photo")
    from hyperdomain.webapp.photo import stylize_photo

    with pytest.raises(HyperdomainError, match="method: 'telepathy' is not offered"):  # a library caller's value
        stylize_photo(server.runs.models, str(files.photo), ["sketch"], method="telepathy")


def test_photo_through_a_translator(client, server, files):
    """The panel's translator: the photo as the translator reads it beside its one-pass translation,
    both as the library makes them, and the translation offered for download."""
    from hyperdomain.image.translate import prepare_for
    from hyperdomain.webapp.photo import translate_photo

    grid_path, [png] = client.predict(gradio_client.handle_file(str(files.photo)), "sketchy", api_name="/translate")
    T = hd.load_translator(files.translator)
    [prepared] = prepare_for(T, [files.photo], align=False)
    [want] = hd.translate(T, [prepared], progress=False)
    expected = hd.make_grid(torch.stack([prepared.tensor()[0], want]), nrow=2).numpy()
    assert np.array_equal(read_rgb(grid_path), expected)
    assert not np.array_equal(expected[:, :34], expected[:, 34:68])  # the translation changed the photo
    assert (server.runs.models.work_dir / "downloads" / Path(png).name).is_file()  # published, as the page made it
    assert np.array_equal(read_rgb(png), hd.make_grid(want[None], padding=0).numpy())
    with pytest.raises(HyperdomainError, match="no translator named 'nope'"):
        translate_photo(server.runs.models, str(files.photo), "nope")


# ------------------------------------------------------------------------------------------ attacks
def http(url, path="/", method="GET", headers=None, body=None):
    """A raw request (any Host or Origin header): (status, headers, body bytes)."""
    import http.client
    from urllib.parse import quote, urlparse

    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.putrequest(method, quote(path, safe="/=:?&"), skip_host=True)
        sent = {"Host": u.netloc, **(headers or {})}
        if body is not None:
            sent["Content-Length"] = str(len(body))
        for k, v in sent.items():
            conn.putheader(k, v)
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def poc_png(path: Path) -> Path:
    """A valid PNG whose text chunk is an HTML page with a script (a stored-XSS payload when served as HTML)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("comment", "<html><script>document.title='pwned';window.pwned=1</script></html>")
    Image.fromarray(np.full((72, 72, 3), 128, np.uint8)).save(path, format="PNG", pnginfo=info)
    return path


def test_an_upload_named_html_is_kept_by_content_and_never_served(client, server, files, tmp_path):
    poc = poc_png(tmp_path / "poc.html")
    client.predict("", "Photo", gradio_client.handle_file(str(poc)), 1, None, 0, api_name="/adapt_start")
    s = server.runs.wait(300)
    from hyperdomain.training.one_shot import read_image_adapt_config

    kept = Path(read_image_adapt_config(s.run_dir).image)
    work = server.runs.models.work_dir
    import hashlib

    assert kept == work / "uploads" / (hashlib.sha256(poc.read_bytes()).hexdigest() + ".png"), kept
    assert "poc.html" in s.what  # the page names it as the user did
    # nothing under the work folder but downloads/ is served: not the upload, not the run folder, not the marker
    for private in (kept, s.run_dir / "checkpoint.safetensors", s.run_dir / "config.json", work / ".hyperdomain-app"):
        status, _, body = http(server.url, f"/gradio_api/file={private}")
        assert status == 403, (private, status, body[:200])
    # what the page offers is served, from downloads/
    assert s.download.parent == work / "downloads" and hd.Domain.load(s.download).meta["iterations"] == 1
    # Gradio's own copy of the upload is never HTML to a browser
    status, headers, body = http(server.url, "/gradio_api/upload", "POST",
                                 *multipart("poc.html", poc.read_bytes(), "text/html"))
    import json

    assert status == 200
    [uploaded] = json.loads(body)
    status, headers, _ = http(server.url, f"/gradio_api/file={uploaded}")
    assert status == 200 and "html" not in headers["content-type"] and headers["content-disposition"].startswith(
        "attachment"), headers


@pytest.mark.parametrize("headers", [{"Host": "evil.example"}, {"Host": "evil.example:7860"},
                                     {"Host": "127.0.0.1.nip.io"}, {"Host": ""}])
def test_requests_for_another_host_are_refused(server, headers):
    status, _, body = http(server.url, "/", headers=headers)
    assert status == 403 and b"refused" in body and b"--allow-host" in body, (status, body[:200])
    status, _, _ = http(server.url, "/gradio_api/info", headers=headers)
    assert status == 403


def test_requests_from_another_origin_are_refused(server):
    from urllib.parse import urlparse

    port = urlparse(server.url).port
    body = b'{"data": [], "fn_index": 0}'
    for origin in ("http://evil.example", f"http://evil.example:{port}", "null", f"http://127.0.0.1:{port + 1}"):
        status, _, text = http(server.url, "/gradio_api/queue/join", "POST",
                               {"Origin": origin, "Content-Type": "application/json"}, body)
        assert status == 403 and b"Origin" in text, (origin, status)
    # the page's own origin, under either loopback name, is served
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        status, _, _ = http(server.url, "/", headers={"Host": host, "Origin": f"http://{host}"})
        assert status == 200, host


def multipart(name: str, data: bytes, content_type: str = "image/png") -> tuple[dict, bytes]:
    return ({"Content-Type": "multipart/form-data; boundary=XyZ"},
            f'--XyZ\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n--XyZ--\r\n")


def test_uploads_over_the_limit_are_refused(client, server, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (1024 * 1024 + 10))  # the test server takes 1 MB
    message = app_error(client, gradio_client.handle_file(str(big)), ["sketch"], "", 2, api_name="/photo")
    assert "exceeds the maximum file size of 1048576 bytes" in message, message
    # the server itself refuses it too (a client that does not look at the page's limit)
    status, _, body = http(server.url, "/gradio_api/upload", "POST", *multipart("big.png", big.read_bytes()))
    assert status == 413, (status, body[:200])
    assert http(server.url, "/gradio_api/upload", "POST", *multipart("small.png", b"\0" * 1000))[0] == 200


def test_a_server_with_passwords_and_a_proxy_name(files, tmp_path):
    from hyperdomain.webapp.server import start

    running = start(load_app_models(files, tmp_path / "work"), port=None, block=False, auth=[("ada", "s3cret")],
                    allow_hosts=["hd.example.org"])
    try:
        with pytest.raises(Exception):
            gradio_client.Client(running.url, verbose=False)  # no password
        with pytest.raises(Exception):
            gradio_client.Client(running.url, auth=("ada", "wrong"), verbose=False)
        c = gradio_client.Client(running.url, auth=("ada", "s3cret"), verbose=False)
        assert read_rgb(c.predict(*explore_args(count=1), api_name="/explore")).shape == (36, 36, 3)
        # the proxy's name is answered (here the login page), other names are not
        assert http(running.url, "/", headers={"Host": "hd.example.org"})[0] == 200
        assert http(running.url, "/", headers={"Host": "hd.example.org", "Origin": "https://hd.example.org"})[0] == 200
        assert http(running.url, "/", headers={"Host": "other.example.org"})[0] == 403
    finally:
        running.close()


def test_host_policy():
    from hyperdomain.webapp.access import HostPolicy

    local = HostPolicy("127.0.0.1")
    assert all(local.host_ok(h) for h in ("127.0.0.1", "localhost", "LOCALHOST", "::1", "127.0.0.2"))
    assert not any(local.host_ok(h) for h in ("evil.example", "10.0.0.1", "", None, "127.0.0.1.evil.example"))
    lan = HostPolicy("0.0.0.0", ["hd.example.org"])
    assert lan.host_ok("192.168.1.20") and lan.host_ok("hd.example.org") and lan.host_ok("localhost")
    assert not lan.host_ok("evil.example")
    one = HostPolicy("192.168.1.20")
    assert one.host_ok("192.168.1.20") and not one.host_ok("localhost") and not one.host_ok("192.168.1.21")
    assert local.origin_ok("http://127.0.0.1:7860", "127.0.0.1:7860")
    assert not local.origin_ok("http://127.0.0.1:7861", "127.0.0.1:7860")
    assert not local.origin_ok("null", "127.0.0.1:7860") and not local.origin_ok("file://x", "127.0.0.1:7860")
    assert lan.origin_ok("https://hd.example.org", "127.0.0.1:7860")


def test_work_folders_holding_other_files_are_refused(tmp_path, files):
    from hyperdomain.webapp.access import MARKER, check_work_dir, claim_work_dir

    home = tmp_path / "home"
    (home / "Documents").mkdir(parents=True)
    (home / "notes.txt").write_text("mine")
    for call in (check_work_dir, claim_work_dir):
        with pytest.raises(HyperdomainError, match="not the app's .Documents, notes.txt."):
            call(home)
    assert sorted(p.name for p in home.iterdir()) == ["Documents", "notes.txt"]  # nothing written
    r = cli("serve", "-g", files.generator, "--work-dir", home)
    assert_user_error(r, "--work-dir", "notes.txt", "new or empty folder")
    # new, empty, and an earlier app's folder (its own sub-folders, with or without the marker) are fine
    for ok in (tmp_path / "new", tmp_path / "empty", tmp_path / "old_app"):
        ok.mkdir(exist_ok=True) if ok.name != "new" else None
    (tmp_path / "old_app" / "runs").mkdir()
    (tmp_path / "old_app" / "downloads").mkdir()
    for ok in (tmp_path / "new", tmp_path / "empty", tmp_path / "old_app"):
        assert claim_work_dir(ok) == ok.resolve() and (ok / MARKER).is_file() and (ok / "downloads").is_dir()
    (tmp_path / "old_app" / "mine.txt").write_text("a file of my own, later")
    assert check_work_dir(tmp_path / "old_app")  # once the app's (the marker), what is added later is not refused


def test_serve_refuses_bad_access_options(tmp_path, files):
    assert_user_error(cli("serve", "-g", files.generator, "--host", "999.1.1.1"), "--host", "999.1.1.1")
    assert_user_error(cli("serve", "-g", files.generator, "--auth", "nopassword"), "--auth", "USER:PASS")
    (tmp_path / "users.txt").write_text("# users\n\n")
    assert_user_error(cli("serve", "-g", files.generator, "--auth-file", tmp_path / "users.txt"), "no USER:PASS")
    r = cli("serve", "-g", files.generator, "--max-upload-mb", "0")
    assert r.exit_code == 2 and "--max-upload-mb" in r.output
    from hyperdomain.webapp.access import parse_auth

    (tmp_path / "users.txt").write_text("# users\nada:pa:ss\n bob:x\n")
    assert parse_auth(["eve:1"], [tmp_path / "users.txt"]) == [("eve", "1"), ("ada", "pa:ss"), ("bob", "x")]


def test_serve_refuses_bad_photo_models(tmp_path, files):
    """A missing translator, a domain file given as one, an encoder for another generator: one line
    each, before the server starts."""
    work = ["--work-dir", tmp_path / "w", "--device", "cpu"]
    assert_user_error(cli("serve", "-g", files.generator, "--translator", tmp_path / "nope.safetensors", *work),
                      "nope.safetensors")
    assert_user_error(cli("serve", "-g", files.generator, "--translator", files.domain, *work), "sketch.safetensors")
    assert_user_error(cli("serve", "-g", files.generator, "--encoder", files.translator, *work), "sketchy.safetensors")
    assert_user_error(cli("serve", "-g", files.generator, "--encoder", files.encoder, "--restyle-steps", 2, *work),
                      "--restyle-steps", "one pass")


def test_page_messages_hide_the_upload_folder(monkeypatch, tmp_path):
    from hyperdomain.webapp.ui import page_message

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "my temp"))
    path = f"{tmp_path}/my temp/{'a' * 64}/face.png"
    assert page_message(f"{path}: not an image PIL can read") == "face.png: not an image PIL can read"
    monkeypatch.delenv("GRADIO_TEMP_DIR")
    import tempfile

    path = f"{tempfile.gettempdir()}/gradio/{'b' * 64}/face.png"
    assert page_message(f"{path}: truncated") == "face.png: truncated"


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
