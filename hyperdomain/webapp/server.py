"""Starting the app: Gradio with its analytics off, bound to 127.0.0.1 unless asked otherwise,
answering only requests for its own address (:mod:`.access`), serving only ``downloads/``."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import HyperdomainError
from .access import (MAX_UPLOAD_MB, PUBLISHED, HostCheck, HostPolicy, check_bind_host, check_upload_limit,
                     check_work_dir, claim_work_dir)
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
          quiet: bool = True, allow_hosts: Sequence[str] = (), auth: Sequence[tuple[str, str]] = (),
          max_upload_mb: float = MAX_UPLOAD_MB) -> Server:
    """Build and launch the app for ``models``. ``block=False`` returns at once with the server
    running in the background (``close()`` stops it); ``port=None`` takes the first free port
    from 7860.

    Requests must name ``host`` (or, for a loopback server, ``localhost``), or one of
    ``allow_hosts`` (a reverse proxy's public name); ``auth``: (user, password) pairs the page asks
    for; uploads over ``max_upload_mb`` are refused. Only the work folder's ``downloads/`` is served.
    """
    require_gradio()
    from starlette.middleware import Middleware

    from .ui import build_app

    check_bind_host(host)
    max_upload_mb = check_upload_limit(max_upload_mb)
    models.work_dir = claim_work_dir(models.work_dir)
    runs = Runs(models)
    app = build_app(models, runs)
    app.queue(default_concurrency_limit=1)
    policy = HostPolicy(host, allow_hosts)
    try:
        _, url, _ = app.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=quiet,
                               show_error=True, share=False, inbrowser=False, ssr_mode=False, mcp_server=False,
                               allowed_paths=[str(models.work_dir / PUBLISHED)], footer_links=["api"], css=CSS,
                               auth=list(auth) or None, max_file_size=int(max_upload_mb * 1024 * 1024),
                               app_kwargs={"middleware": [Middleware(HostCheck, policy=policy)]})
    except OSError as e:
        raise HyperdomainError(f"cannot listen on {host}:{port} ({e}); choose another --port") from None
    server = Server(app, url, runs)
    if block:
        server.block()
    return server


def serve(generator: str = "ffhq", domains=(), hyper=None, *, host: str = "127.0.0.1", port: int | None = 7860,
          work_dir: str | os.PathLike = "hyperdomain-app", block: bool = True, allow_hosts: Sequence[str] = (),
          auth: Sequence[tuple[str, str]] = (), max_upload_mb: float = MAX_UPLOAD_MB, **options: Any) -> Server:
    """``hyperdomain serve`` from Python: load the models (:func:`load_models`'s options) and launch
    (:func:`start`'s options)."""
    from .models import load_models

    require_gradio()
    check_work_dir(work_dir)  # before any model loads
    models = load_models(generator, domains, hyper=hyper, work_dir=work_dir, **options)
    return start(models, host, port, block, allow_hosts=allow_hosts, auth=auth, max_upload_mb=max_upload_mb)
