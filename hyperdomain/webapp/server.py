"""Starting the app: Gradio with its analytics off, bound to 127.0.0.1 unless asked otherwise."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Any

from ..errors import HyperdomainError
from .jobs import Runs
from .models import AppModels

UI_EXTRA = "pip install 'hyperdomain[ui]'"
# small generators' grids shown at the panel's size with square pixels, not at 32 px in a corner
CSS = ("#explore-grid img, #adapt-preview img, #photo-grid img "
       "{image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain;}")


def require_gradio() -> None:
    """Gradio is an optional extra: one line saying how to get it, before any model loads."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry and no version check, ever
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise HyperdomainError(f"the web app needs Gradio: {UI_EXTRA}") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Server:
    """A running app: its page at ``url``; :meth:`close` first lets a run in progress stop and save."""

    app: Any
    url: str
    runs: Runs

    def close(self, timeout: float = 600.0) -> None:
        self.runs.stop()
        self.runs.wait(timeout)
        self.app.close()

    def block(self) -> None:
        """Serve until Ctrl-C (or SIGTERM), then close (a run in progress saves first)."""
        import signal
        import threading

        done = threading.Event()
        previous = {s: signal.signal(s, lambda *_: done.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            done.wait()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            self.close()


def start(models: AppModels, host: str = "127.0.0.1", port: int | None = 7860, block: bool = True,
          quiet: bool = True) -> Server:
    """Build and launch the app for ``models``. ``block=False`` returns at once with the server
    running in the background (``close()`` stops it); ``port=None`` takes the first free port
    from 7860."""
    require_gradio()
    from .ui import build_app

    models.work_dir.mkdir(parents=True, exist_ok=True)
    runs = Runs(models)
    app = build_app(models, runs)
    app.queue(default_concurrency_limit=1)
    try:
        _, url, _ = app.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=quiet,
                               show_error=True, share=False, inbrowser=False, ssr_mode=False, mcp_server=False,
                               allowed_paths=[str(models.work_dir.resolve())], footer_links=["api"], css=CSS)
    except OSError as e:
        raise HyperdomainError(f"cannot listen on {host}:{port} ({e}); choose another --port") from None
    server = Server(app, url, runs)
    if block:
        server.block()
    return server


def serve(generator: str = "ffhq", domains=(), hyper=None, *, host: str = "127.0.0.1", port: int | None = 7860,
          work_dir: str | os.PathLike = "hyperdomain-app", block: bool = True, **options: Any) -> Server:
    """``hyperdomain serve`` from Python: load the models (:func:`load_models`'s options) and launch."""
    from .models import load_models

    require_gradio()
    models = load_models(generator, domains, hyper=hyper, work_dir=work_dir, **options)
    return start(models, host, port, block)
