"""The manifest, the weights folder, and verified, resumable downloads from a local HTTP server."""
import hashlib
import json
import logging
import os
import random
import re
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from conftest import local_http_server
from hyperdomain.files import pretrained as weights
from hyperdomain.errors import HyperdomainError
from hyperdomain.files.pretrained import ManifestEntry, download, load_manifest, resolve, weights_home

DATA = random.Random(0).randbytes(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and srv.honour_range:
            start = int(m.group(1))
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_next_at is not None:  # simulate a dropped connection
            body, srv.cut_next_at = body[: srv.cut_next_at], None
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    with local_http_server(_Handler, files={"/w/tiny.pt": DATA, "/mirror/tiny.pt": DATA}, requests=[],
                           honour_range=True, cut_next_at=None) as srv:
        yield srv


def _manifest(urls, sha=SHA, size=len(DATA)):
    return {"tiny": ManifestEntry("tiny", tuple(urls), sha, size, "port", 32, "Photo", "test file")}


def test_download_verifies_and_never_downloads_twice(server, tmp_path):
    m = _manifest([server.url + "/w/tiny.pt"])
    path = download("tiny", home=tmp_path, progress=False, manifest=m)
    assert path == tmp_path / "tiny.pt" and path.read_bytes() == DATA
    assert not (tmp_path / "tiny.pt.part").exists()
    assert json.loads((tmp_path / "checksums.json").read_text())["tiny.pt"]["sha256"] == SHA
    n = len(server.requests)
    assert download("tiny", home=tmp_path, progress=True, manifest=m) == path
    assert len(server.requests) == n


def test_resume_partial_file_with_range(server, tmp_path):
    (tmp_path / "tiny.pt.part").write_bytes(DATA[:123_456])
    path = download("tiny", home=tmp_path, progress=False, manifest=_manifest([server.url + "/w/tiny.pt"]))
    assert server.requests == [("/w/tiny.pt", "bytes=123456-")]
    assert path.read_bytes() == DATA


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.honour_range = False
    (tmp_path / "tiny.pt.part").write_bytes(b"x" * 1000)
    path = download("tiny", home=tmp_path, progress=False, manifest=_manifest([server.url + "/w/tiny.pt"]))
    assert server.requests[0][1] == "bytes=1000-" and path.read_bytes() == DATA


def test_dropped_connection_then_resume(server, tmp_path):
    m = _manifest([server.url + "/w/tiny.pt"])
    server.cut_next_at = 100_000
    with pytest.raises(HyperdomainError, match=r"could not download tiny from .*interrupted"):
        download("tiny", home=tmp_path, progress=False, manifest=m)
    assert (tmp_path / "tiny.pt.part").stat().st_size == 100_000
    path = download("tiny", home=tmp_path, progress=False, manifest=m)
    assert server.requests[-1] == ("/w/tiny.pt", "bytes=100000-")
    assert path.read_bytes() == DATA


def test_bad_checksum_deletes_and_names_both(server, tmp_path):
    wrong = "0" * 64
    with pytest.raises(HyperdomainError) as e:
        download("tiny", home=tmp_path, progress=False, manifest=_manifest([server.url + "/w/tiny.pt"], sha=wrong))
    msg = str(e.value)
    assert SHA in msg and wrong in msg and "\n" not in msg
    assert not (tmp_path / "tiny.pt").exists() and not (tmp_path / "tiny.pt.part").exists()
    with pytest.raises(HyperdomainError, match=r"300000 bytes, expected 299999"):
        download("tiny", home=tmp_path, progress=False, manifest=_manifest([server.url + "/w/tiny.pt"], size=299_999))
    assert not (tmp_path / "tiny.pt.part").exists()


def test_mirrors_tried_in_order(server, tmp_path):
    m = _manifest([server.url + "/gone/tiny.pt", server.url + "/mirror/tiny.pt"])
    path = download("tiny", home=tmp_path, progress=False, manifest=m)
    assert [p for p, _ in server.requests] == ["/gone/tiny.pt", "/mirror/tiny.pt"]
    assert path.read_bytes() == DATA


def test_trust_on_first_use(server, tmp_path, caplog):
    m = _manifest([server.url + "/w/tiny.pt"], sha=None, size=None)
    with caplog.at_level(logging.WARNING, logger="hyperdomain.files.pretrained"):
        path = download("tiny", home=tmp_path, progress=False, manifest=m)
    assert "trust on first use" in caplog.text and SHA in caplog.text
    assert json.loads((tmp_path / "checksums.json").read_text())["tiny.pt"]["sha256"] == SHA
    # the same bytes pass again; different bytes (same size, new mtime) are caught
    assert download("tiny", home=tmp_path, progress=False, manifest=m) == path
    path.write_bytes(DATA[:-1] + bytes([DATA[-1] ^ 1]))
    os.utime(path, ns=(1, 1))
    with pytest.raises(HyperdomainError, match=rf"tiny\.pt: sha256 is [0-9a-f]{{64}}, but .*checksums\.json recorded {SHA}.*; delete it to download again"):
        download("tiny", home=tmp_path, progress=False, manifest=m)


def test_offline_gives_one_line_error(tmp_path):
    url = "http://127.0.0.1:9/stylegan2-tiny.pt"
    m = {"tiny": ManifestEntry("tiny", (url,), SHA, len(DATA), "port", 32, "Photo")}
    with pytest.raises(HyperdomainError) as e:
        download("tiny", home=tmp_path, progress=False, manifest=m)
    msg = str(e.value)
    assert "\n" not in msg
    dest = tmp_path / "stylegan2-tiny.pt"
    assert re.fullmatch(rf"could not download tiny from {re.escape(url)} \(.+\); download it by hand and put it "
                        rf"at {re.escape(str(dest))}, or pass its path", msg), msg


# ---------------------------------------------------------------------------- manifest
def test_packaged_manifest():
    m = load_manifest()
    for name, prompt, res in [("ffhq", "Photo", 1024), ("afhqcat", "Photo of a cat", 512),
                              ("afhqdog", "Photo of a dog", 512), ("car", "Photo of a car", 512),
                              ("church", "Photo of a church", 256), ("horse", "Photo of a horse", 256)]:
        assert m[name].source_prompt == prompt and m[name].resolution == res
    assert m["ffhq"].sha256 == "646c7e7c5e3fc4cf8e83dcfe5dce505cc74b61d8982c09563932aa15c4baf18c"
    assert m["ffhq"].size == 132_717_355 and m["ffhq"].filename == "stylegan2-ffhq-config-f.pt"
    assert m["ffhq"].urls[0] == "https://huggingface.co/aaronb/StyleGAN2/resolve/main/stylegan2-ffhq-config-f.pt"
    assert {e.format for e in m.values()} == {"port", "nvidia-pickle"}
    assert len({e.filename for e in m.values()}) == len(m)  # no two entries share a download place
    # the paper's single-domain recipes (configs td_single_*.yaml)
    assert m["ffhq"].adapt == {"iters": 300, "batch": 4, "lr": 0.1, "betas": [0.9, 0.999], "losses": {"direction": 1.0}}
    assert m["cat"].adapt["losses"] == {"direction": 1.0, "l2": 0.5} and m["church"].adapt["betas"] == [0.0, 0.999]
    assert m["car"].adapt["losses"] == {"direction": 1.0, "indomain": 1.5} and m["horse"].adapt is None


GOOD = {"urls": ["https://example.org/g.pt"], "sha256": None, "size": 10, "format": "port",
        "resolution": 256, "source_prompt": "Photo", "description": "d"}


@pytest.mark.parametrize("field,value", [
    ("urls", []), ("urls", "https://example.org/g.pt"), ("urls", ["ftp://example.org/g.pt"]),
    ("urls", ["https://example.org/"]), ("sha256", "abc"), ("sha256", "A" * 64), ("size", -1), ("size", True),
    ("size", "10"), ("format", "onnx"), ("resolution", 300), ("resolution", 2), ("source_prompt", ""),
    ("description", 3), ("checksum", "x"), ("adapt", {"epochs": 3}), ("adapt", {"lr": 0}), ("adapt", {"batch": 2.5}),
    ("adapt", {"betas": [0.9]}), ("adapt", {"losses": {"beauty": 1}}), ("adapt", {"losses": {"l2": 1}}),
    ("adapt", {"lr": True}), ("adapt", {"losses": {"direction": 1, "tt_direction": 0.4}}),
])
def test_malformed_entry_names_file_entry_field(tmp_path, field, value):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"generators": {"ok": GOOD, "broken": {**GOOD, field: value}}}))
    with pytest.raises(HyperdomainError) as e:
        load_manifest(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: entry 'broken', field {field!r}") and "\n" not in msg


def test_missing_field_and_bad_json(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"generators": {"g": {k: v for k, v in GOOD.items() if k != "format"}}}))
    with pytest.raises(HyperdomainError, match=r"entry 'g', field 'format': expected one of .*got '<missing>'"):
        load_manifest(path)
    path.write_text("{not json")
    with pytest.raises(HyperdomainError, match=r"manifest\.json: not valid JSON"):
        load_manifest(path)
    path.write_text(json.dumps({"generators": {"g": GOOD}}))
    assert load_manifest(path)["g"] == ManifestEntry("g", ("https://example.org/g.pt",), None, 10, "port", 256, "Photo", "d")


# ---------------------------------------------------------------------------- home and resolve
def test_weights_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HYPERDOMAIN_HOME", str(tmp_path / "w"))
    assert weights_home() == tmp_path / "w"
    monkeypatch.delenv("HYPERDOMAIN_HOME")
    repo = Path(__file__).resolve().parent.parent
    assert weights_home() == repo / "pretrained"  # this is a source checkout (setup.cfg beside it)
    monkeypatch.setattr(weights, "__file__", str(tmp_path / "site" / "hyperdomain" / "files" / "pretrained.py"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert weights_home() == tmp_path / "cache" / "hyperdomain"


def test_resolve(server, monkeypatch, tmp_path):
    monkeypatch.setenv("HYPERDOMAIN_HOME", str(tmp_path / "home"))
    m = _manifest([server.url + "/w/tiny.pt"])
    existing = tmp_path / "mine.pt"
    existing.write_bytes(b"x")
    assert resolve(existing, manifest=m) == (existing, None)
    with pytest.raises(HyperdomainError, match=r"tiny is not downloaded yet \(expected at .*home/tiny\.pt\)"):
        resolve("tiny", download=False, manifest=m)
    path, entry = resolve("tiny", manifest=m)
    assert path == tmp_path / "home" / "tiny.pt" and entry is m["tiny"] and path.read_bytes() == DATA
    assert resolve("tiny", download=False, manifest=m) == (path, m["tiny"])
    with pytest.raises(HyperdomainError, match=r"nope: no such file, and not a known generator name \(known: tiny\)"):
        resolve("nope", manifest=m)
    with pytest.raises(HyperdomainError, match=r"known: .*afhqcat.*ffhq"):
        resolve("nope")


# ---------------------------------------------------------------------------- auxiliary models
def test_models_check_a_published_hash_prefix_unpack_and_use_torchs_cache(server, tmp_path, monkeypatch):
    import bz2

    from hyperdomain.files.pretrained import ModelEntry, resolve_model

    server.files["/m/net-" + SHA[:8] + ".pth"] = DATA
    server.files["/m/wrong-00000000.pth"] = DATA
    server.files["/m/shape.dat.bz2"] = bz2.compress(DATA)
    models = {
        "net": ModelEntry("net", (server.url + f"/m/net-{SHA[:8]}.pth",), None, None, sha256_prefix=SHA[:8],
                          also_at="torch-hub"),
        "wrong": ModelEntry("wrong", (server.url + "/m/wrong-00000000.pth",), None, None, sha256_prefix="00000000"),
        "shape": ModelEntry("shape", (server.url + "/m/shape.dat.bz2",), None, None, compression="bz2"),
    }
    hub = tmp_path / "hub"
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(hub))
    path = resolve_model("net", home=tmp_path / "home", models=models, progress=False)
    assert path.read_bytes() == DATA and path.parent == tmp_path / "home"
    with pytest.raises(HyperdomainError, match=r"could not download wrong from .*expected one starting 00000000"):
        resolve_model("wrong", home=tmp_path / "home", models=models, progress=False)
    unpacked = resolve_model("shape", home=tmp_path / "home", models=models, progress=False)
    assert unpacked.name == "shape.dat" and unpacked.read_bytes() == DATA
    n = len(server.requests)
    assert resolve_model("shape", home=tmp_path / "home", models=models, progress=False) == unpacked
    assert len(server.requests) == n  # unpacked once, never fetched again
    # a copy already in torch's download cache is used (verified) without a request
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / f"net-{SHA[:8]}.pth").write_bytes(DATA)
    assert resolve_model("net", home=tmp_path / "other", models=models, progress=False) == \
        hub / "checkpoints" / f"net-{SHA[:8]}.pth"
    assert len(server.requests) == n
    with pytest.raises(HyperdomainError, match=r"model wrong is not downloaded yet"):
        resolve_model("wrong", home=tmp_path / "other", models=models, download=False)
    with pytest.raises(HyperdomainError, match=r"unknown model 'nope'"):
        resolve_model("nope", models=models)


def test_the_manifest_lists_the_models_features_need():
    from hyperdomain.files.pretrained import load_models

    models = load_models()
    assert {"vgg16", "dlib-68", "mediapipe-face"} <= set(models)
    assert models["vgg16"].sha256_prefix == "397923af" and models["vgg16"].filename == "vgg16-397923af.pth"
    assert models["dlib-68"].unpacked_name == "shape_predictor_68_face_landmarks.dat"

