"""Downloads from Google Drive, against a local server that behaves as Drive does for a large file:
``uc?export=download&id=X`` answers with the "can't scan for viruses" page, whose form leads to
``/download?id=X&export=download&confirm=t&uuid=U`` on another host, which serves the bytes."""
import hashlib
import json
import random
import re
import urllib.parse
from http.server import BaseHTTPRequestHandler

import pytest

from conftest import local_http_server
from hyperdomain.errors import HyperdomainError
from hyperdomain.files.pretrained import ModelEntry, load_models, resolve_model

DATA = random.Random(1).randbytes(200_000)
SHA = hashlib.sha256(DATA).hexdigest()
UUID = "5d3c-uuid"

PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
<div class="uc-main"><p class="uc-warning-subcaption">Google Drive can't scan this file for viruses.</p>
<form id="download-form" action="{action}" method="get">
<input type="submit" id="uc-download-link" class="goog-inline-block jfk-button" value="Download anyway"/>
<input type="hidden" name="id" value="{id}"><input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="{uuid}"></form></div>
</body></html>"""


class _Drive(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        srv = self.server
        url = urllib.parse.urlparse(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        srv.requests.append((url.path, q, self.headers.get("Range")))
        if url.path == "/uc" and q.get("id") == "FILE":
            body = PAGE.format(action=f"{srv.url}/download", id="FILE", uuid=UUID).encode()
            if srv.no_form:
                body = b"<html><body>Sign in to continue</body></html>"
            self._send(200, body, "text/html; charset=utf-8")
        elif url.path == "/download" and q == {"id": "FILE", "export": "download", "confirm": "t", "uuid": UUID}:
            start = 0
            m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            data = srv.data
            if m:
                start = int(m[1])
            self._send(206 if start else 200, data[start:], "application/octet-stream",
                       cut=srv.cut_next_at)
            srv.cut_next_at = None
        else:
            self._send(404, b"<html>not found</html>", "text/html")

    def _send(self, code, body, ctype, cut=None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:cut] if cut is not None else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def drive():
    with local_http_server(_Drive, requests=[], no_form=False, cut_next_at=None, data=DATA) as srv:
        yield srv


def _models(url, sha=SHA, size=len(DATA)):
    return {"enc": ModelEntry("enc", (url,), sha, size, "an encoder", file_name="enc_ffhq_encode.pt")}


def test_the_confirmation_page_is_answered_and_the_file_named_by_the_manifest(drive, tmp_path):
    models = _models(f"{drive.url}/uc?export=download&id=FILE")
    path = resolve_model("enc", home=tmp_path, models=models, progress=False)
    assert path == tmp_path / "enc_ffhq_encode.pt" and path.read_bytes() == DATA
    assert [r[0] for r in drive.requests] == ["/uc", "/download"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checksums.json", "enc_ffhq_encode.pt"]  # no "uc", no .part
    resolve_model("enc", home=tmp_path, models=models, progress=False)
    assert len(drive.requests) == 2  # verified, not downloaded again


def test_a_dropped_drive_download_resumes_after_confirming_again(drive, tmp_path):
    models = _models(f"{drive.url}/uc?export=download&id=FILE")
    drive.cut_next_at = 70_000
    with pytest.raises(HyperdomainError):
        resolve_model("enc", home=tmp_path, models=models, progress=False)
    assert (tmp_path / "enc_ffhq_encode.pt.part").stat().st_size == 70_000
    assert resolve_model("enc", home=tmp_path, models=models, progress=False).read_bytes() == DATA
    assert drive.requests[-1][0] == "/download" and drive.requests[-1][2] == "bytes=70000-"


def test_wrong_bytes_or_a_page_without_a_form_are_refused_in_one_line(drive, tmp_path):
    url = f"{drive.url}/uc?export=download&id=FILE"
    drive.data = DATA[:-1] + b"x"  # same size, another digest
    with pytest.raises(HyperdomainError) as e:
        resolve_model("enc", home=tmp_path, models=_models(url), progress=False)
    assert "\n" not in str(e.value) and f"expected {SHA}" in str(e.value)
    assert not list(tmp_path.glob("enc_ffhq_encode.pt*"))  # nothing kept, nothing half-written
    drive.data = DATA + b"more"
    with pytest.raises(HyperdomainError) as e:
        resolve_model("enc", home=tmp_path, models=_models(url), progress=False)
    assert f"{len(DATA) + 4} bytes, expected {len(DATA)}" in str(e.value)
    drive.data, drive.no_form = DATA, True
    with pytest.raises(HyperdomainError) as e:
        resolve_model("enc", home=tmp_path, models=_models(url), progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "web page, not the file" in msg
    assert msg.endswith(f"put it at {tmp_path / 'enc_ffhq_encode.pt'}, or pass its path"), msg
    assert not list(tmp_path.glob("enc_ffhq_encode.pt*"))


def test_offline_names_where_to_put_the_file(tmp_path):
    models = _models("https://127.0.0.1:9/uc?export=download&id=FILE")
    with pytest.raises(HyperdomainError) as e:
        resolve_model("enc", home=tmp_path, models=models, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("could not download enc from https://127.0.0.1:9/uc")
    assert msg.endswith(f"put it at {tmp_path / 'enc_ffhq_encode.pt'}, or pass its path"), msg


def test_the_manifest_names_the_encoder_releases(tmp_path):
    models = load_models()
    for name, file in [("e4e-ffhq", "e4e_ffhq_encode.pt"), ("restyle-psp-ffhq", "restyle_psp_ffhq_encode.pt"),
                       ("restyle-e4e-ffhq", "restyle_e4e_ffhq_encode.pt")]:
        assert models[name].filename == file and all("drive.google.com/uc?" in u for u in models[name].urls)
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"generators": {}, "models": {"x": {"urls": ["https://a.b/uc"], "filename": "../x"}}}))
    with pytest.raises(HyperdomainError, match="field 'filename'"):
        load_models(bad)
