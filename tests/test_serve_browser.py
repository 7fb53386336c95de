"""The web app in a real browser: Debian's chromium and chromium-driver, driven by Selenium.

Skips with the reason when the browser, its driver or Selenium is missing, except where
HYPERDOMAIN_REQUIRE_BROWSER=1 (set by .ci/run, which installs them): there a missing browser fails.
Screenshots go to $HYPERDOMAIN_ARTIFACTS (default: test-artifacts/ in the repository).
"""
import os
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
import pytest

import hyperdomain as hd

from serve_fixtures import expected_grid, load_app_models, make_files, read_rgb

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
REBOUND = "rebound.test"


def _need(ok: bool, why: str) -> None:
    if ok:
        return
    if os.environ.get("HYPERDOMAIN_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{why}, and HYPERDOMAIN_REQUIRE_BROWSER=1 says the browser test must run")
    pytest.skip(why)


try:
    import gradio  # noqa: F401
    import selenium  # noqa: F401
    HAVE_PACKAGES = True
except ImportError:
    HAVE_PACKAGES = False


@pytest.fixture(scope="module")
def artifacts():
    folder = Path(os.environ.get("HYPERDOMAIN_ARTIFACTS", ROOT / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_clip_config):
    return make_files(tmp_path_factory.mktemp("browser_files"), tiny_clip_config)


@pytest.fixture(scope="module")
def server(files, tmp_path_factory):
    _need(HAVE_PACKAGES, "needs gradio and selenium (pip install -e '.[test]')")
    from hyperdomain.webapp.server import start

    running = start(load_app_models(files, tmp_path_factory.mktemp("browser_work")), port=None, block=False)
    yield running
    running.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    _need(HAVE_PACKAGES, "needs gradio and selenium (pip install -e '.[test]')")
    _need(CHROMIUM is not None and DRIVER is not None,
          "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # as root in a container, with no network: no sandbox, no GPU, no background connections
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,1300", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
                # a name that resolves to this machine, as a DNS-rebinding page's name would
                f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def until(condition, timeout=120.0, what="the page"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = condition()
        except Exception:  # an element that is being re-rendered
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def grid_src(driver, element="explore-grid"):
    return css(driver, f"#{element} img").get_attribute("src")


def fetch_rgb(url, folder: Path, name: str) -> np.ndarray:
    path = folder / name
    path.write_bytes(urllib.request.urlopen(url, timeout=30).read())
    return read_rgb(path)


def type_into(element, text):
    from selenium.webdriver.common.keys import Keys

    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(text, Keys.ENTER)  # typed over the selection: the field is never empty


def open_tab(driver, name):
    until(lambda: [b for b in driver.find_elements("css selector", "button[role=tab]") if b.text == name])[0].click()


def toast_text(driver):
    return " ".join(t.text for t in driver.find_elements("css selector", "[data-testid=toast-body]"))


def requested_urls(driver) -> list[str]:
    import json

    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_the_app_in_a_browser(browser, server, files, artifacts, tmp_path):
    d = browser
    d.get(server.url)
    first = until(lambda: grid_src(d), what="the first grid")
    # the page is whole without the internet: every request goes to the app itself
    from urllib.parse import urlparse

    urls = requested_urls(d)
    assert urls and all(urlparse(u).hostname in ("127.0.0.1", "localhost") for u in urls
                        if urlparse(u).scheme in ("http", "https", "ws", "wss")), sorted(set(urls))[:20]
    # type a prompt: the hypernetwork's domain for it, at once
    type_into(css(d, "#explore-prompt textarea"), "Anime painting")
    typed = until(lambda: grid_src(d) != first and grid_src(d), what="the grid for the typed prompt")
    assert np.array_equal(fetch_rgb(typed, tmp_path, "typed.png"), expected_grid(files, 8, 0, 0.7, 1.0))
    # move the strength slider: a new grid, equal to the API's render at that strength
    type_into(css(d, "#explore-strength input[type=number]"), "0.5")
    moved = until(lambda: grid_src(d) != typed and grid_src(d), what="the grid at strength 0.5")
    got = fetch_rgb(moved, tmp_path, "moved.png")
    assert not np.array_equal(got, read_rgb(tmp_path / "typed.png"))
    assert np.array_equal(got, expected_grid(files, 8, 0, 0.7, 0.5))
    d.save_screenshot(str(artifacts / "webapp-explore.png"))

    # Adapt: start a run, watch it, stop it, download its domain
    open_tab(d, "Adapt")
    type_into(until(lambda: css(d, "#adapt-target textarea")), "Sketch of a face")
    type_into(css(d, "#adapt-iters input"), "400")
    css(d, "#adapt-start").click()
    until(lambda: server.runs.status().step >= 3, what="the run's third step")
    until(lambda: "Running" in css(d, "#adapt-status").text, what="the run's status in the page")
    until(lambda: css(d, "#adapt-preview img").get_attribute("src"), what="the run's sample grid")
    d.save_screenshot(str(artifacts / "webapp-adapt-running.png"))
    css(d, "#adapt-stop").click()
    link = until(lambda: css(d, "#adapt-domain a").get_attribute("href"), what="the domain's download link")
    s = server.runs.status()
    assert s.state == "stopped" and "Stopped" in css(d, "#adapt-status").text
    domain_file = tmp_path / "downloaded.safetensors"
    domain_file.write_bytes(urllib.request.urlopen(link, timeout=30).read())
    downloaded = hd.Domain.load(domain_file, generator=server.runs.models.G)
    assert downloaded.meta["iterations"] == s.step and 3 <= s.step < 400
    d.save_screenshot(str(artifacts / "webapp-adapt-stopped.png"))
    # a run that ends by itself: the page learns it by polling and offers its domain
    type_into(css(d, "#adapt-iters input"), "3")
    css(d, "#adapt-start").click()
    until(lambda: "Done" in css(d, "#adapt-status").text, what="the second run's end")
    second = until(lambda: css(d, "#adapt-domain a").get_attribute("href") not in (None, link)
                   and css(d, "#adapt-domain a").get_attribute("href"), what="the second run's download link")
    (tmp_path / "second.safetensors").write_bytes(urllib.request.urlopen(second, timeout=30).read())
    assert hd.Domain.load(tmp_path / "second.safetensors").meta["iterations"] == 3

    # Photo: a broken file is a message in the page; the server goes on
    open_tab(d, "Photo")
    until(lambda: css(d, "#photo-file input[type=file]")).send_keys(str(files.broken))
    time.sleep(1.0)  # the upload
    css(d, "#photo-run").click()
    message = until(lambda: toast_text(d), what="the error message")
    assert "notes.png" in message and "image" in message.lower(), message
    d.save_screenshot(str(artifacts / "webapp-photo-error.png"))
    # a photo goes through the app's encoder by default: the row is the library's, in about a second
    css(d, "#photo-file button[aria-label='Clear']").click()  # the broken upload, removed
    until(lambda: css(d, "#photo-file input[type=file]")).send_keys(str(files.photo))
    time.sleep(1.0)
    css(d, "#photo-run").click()
    row = until(lambda: grid_src(d, "photo-grid"), what="the photo's row")
    from hyperdomain.image.encoders import load_encoder

    G = hd.load_generator(files.generator)
    [want] = hd.stylize(G, [files.photo], encoder=load_encoder(files.encoder), align=False, lpips_backbone="random",
                        progress=False)
    assert np.array_equal(fetch_rgb(row, tmp_path, "photo-row.png"), hd.make_grid(want.row(), nrow=2).numpy())
    d.save_screenshot(str(artifacts / "webapp-photo-encoder.png"))
    # and through the translator (the only one, chosen already): the photo beside its translation
    css(d, "#photo-translate").click()
    translated = until(lambda: grid_src(d, "photo-grid") != row and grid_src(d, "photo-grid"), what="the translation")
    from hyperdomain.image.translate import prepare_for

    T = hd.load_translator(files.translator)
    [prepared] = prepare_for(T, [files.photo], align=False)
    [out] = hd.translate(T, [prepared], progress=False)
    assert np.array_equal(fetch_rgb(translated, tmp_path, "translated.png"),
                          hd.make_grid(torch.stack([prepared.tensor()[0], out]), nrow=2).numpy())
    d.save_screenshot(str(artifacts / "webapp-photo-translator.png"))
    # and the page still answers: the strength slider renders again
    open_tab(d, "Explore")
    type_into(until(lambda: css(d, "#explore-strength input[type=number]")), "1.5")
    again = until(lambda: grid_src(d) != moved and grid_src(d), what="a grid after the error")
    assert np.array_equal(fetch_rgb(again, tmp_path, "again.png"), expected_grid(files, 8, 0, 0.7, 1.5))


def test_the_browser_cannot_be_turned_against_the_app(browser, server, files, artifacts, tmp_path):
    """A stored-XSS upload (a PNG named .html holding a script) never runs; a page on another name
    that resolves to 127.0.0.1 (DNS rebinding) gets nothing from the app."""
    from urllib.parse import quote, urlparse

    from test_serve import poc_png

    d = browser
    d.get(server.url)
    open_tab(d, "Adapt")
    poc = poc_png(tmp_path / "poc.html")
    until(lambda: css(d, "#adapt-image input[type=file]")).send_keys(str(poc))
    until(lambda: css(d, "#adapt-image a").get_attribute("href"), what="the upload's link")
    upload_link = css(d, "#adapt-image a").get_attribute("href")
    type_into(css(d, "#adapt-iters input"), "1")
    css(d, "#adapt-start").click()
    until(lambda: "Done" in css(d, "#adapt-status").text, timeout=300, what="the one-shot run's end")
    s = server.runs.status()
    kept = server.runs.models.work_dir / "uploads"
    [kept_file] = [p for p in kept.iterdir() if p.read_bytes() == poc.read_bytes()]
    assert kept_file.suffix == ".png"
    # every place the upload could be reached: Gradio's copy (the page's link), the kept copy, the run folder
    for url in (upload_link, f"{server.url.rstrip('/')}/gradio_api/file={quote(str(kept_file))}",
                f"{server.url.rstrip('/')}/gradio_api/file={quote(str(s.run_dir / 'config.json'))}"):
        d.get(url)
        time.sleep(0.5)
        assert d.title != "pwned" and d.execute_script("return window.pwned === undefined"), url
    d.save_screenshot(str(artifacts / "webapp-upload-not-served.png"))
    # DNS rebinding: the same server under another name answers nothing but the refusal
    port = urlparse(server.url).port
    d.get(f"http://{REBOUND}:{port}/")
    body = css(d, "body").text
    assert "refused" in body and "--allow-host" in body and not d.find_elements("css selector", "#explore-grid"), body
    d.save_screenshot(str(artifacts / "webapp-rebinding-refused.png"))
    d.get(server.url)  # the app itself still answers
    until(lambda: grid_src(d), what="the grid after the attacks")
