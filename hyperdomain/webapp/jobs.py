"""The Adapt panel's background run: one at a time per server, watched, stoppable, never lost.

A run trains in a thread with a run folder under the app's ``runs/`` (checkpoints, log, domain
file: the same as ``hyperdomain adapt --out``), so a stopped or failed run is resumable from the
command line. Stop sets the run's ``stop`` flag: it ends at the next step boundary and saves, as
Ctrl-C does for the CLI (signals reach only the main thread).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HyperdomainError
from ..files.atomic import atomic_path
from ..training.adapt import DOMAIN_FILE, AdaptConfig, slug
from .access import PUBLISHED
from .models import AppModels, check_prompt, integer_in, number_in

log = logging.getLogger(__name__)

ITERS = (1, 5000)
LR = (1e-5, 1.0)
PREVIEW_N = 4
STOPPING = "stopping at the end of this step"
UPLOADS = "uploads"  # private: reference images kept for runs
UPLOAD_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "TIFF": "tif", "BMP": "bmp", "GIF": "gif",
                     "MPO": "jpg", "PPM": "ppm", "TGA": "tga"}


@dataclass(frozen=True)
class RunStatus:
    """A snapshot of the panel's run for the page (``version`` grows with every change)."""

    state: str = "idle"  # idle, loading, running, done, stopped, failed
    what: str = ""
    step: int = 0
    iters: int = 0
    losses: tuple[tuple[int, str, float], ...] = ()  # (step, loss name, value), filled in by Runs.status
    preview: np.ndarray | None = None  # source row over domain row, uint8 [H, W, 3]
    message: str = ""
    run_dir: Path | None = None
    domain_file: Path | None = None  # the run folder's domain file
    download: Path | None = None  # its copy in the served downloads/ (what the page offers)
    domain_name: str | None = None
    version: int = 0

    @property
    def busy(self) -> bool:
        return self.state in ("loading", "running")


@dataclass
class Runs:
    """The server's one adaptation slot."""

    models: AppModels
    _status: RunStatus = field(default_factory=RunStatus)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _losses: list[tuple[int, str, float]] = field(default_factory=list)  # appended by the run, copied when asked

    def status(self) -> RunStatus:
        with self._lock:
            return replace(self._status, losses=tuple(self._losses))

    def _set(self, **changes: Any) -> None:
        with self._lock:
            self._status = replace(self._status, **changes, version=self._status.version + 1)

    def start(self, target: str = "", source: str = "", image: str | Path | None = None,
              iters: int = AdaptConfig.iters, lr: float | None = None, seed: int = 0) -> RunStatus:
        """Start a text run (``target``), or a one-shot run (``image``, optionally steered by ``target``);
        refused with one line while another run is going."""
        target = check_prompt(target, "target")
        source = check_prompt(source, "source") or None
        if image is None and not target:
            raise HyperdomainError("target: type a prompt for the new domain (or give a reference image)")
        iters = integer_in("iterations", iters, *ITERS)
        lr = None if lr is None or str(lr).strip() == "" else number_in("learning rate", lr, *LR)
        seed = integer_in("seed", seed, 0, 2**31 - 1)
        if image is not None:
            from ..image.photos import min_photo_side, read_photo

            shown = Path(image).name  # as the user named it; the copy is named by its content
            decoded = read_photo(image, min_photo_side(self.models.G.resolution))  # a broken upload: named now
            image = keep_upload(Path(image), decoded, self.models.work_dir / UPLOADS)
        what = " + ".join(([f"image {shown!r}"] if image is not None else []) + ([repr(target)] if target else []))
        with self._lock:
            if self._status.busy:
                s = self._status
                raise HyperdomainError(f"a run is already going ({s.what}, step {s.step}/{s.iters}): one run at a "
                                       f"time per server; stop it or wait for it")
            run_dir = _new_run_dir(self.models.work_dir / "runs", slug(target) if target else slug(Path(image).stem))
            self._stop = threading.Event()
            self._losses = []
            self._status = RunStatus(state="loading", what=what, iters=iters, run_dir=run_dir,
                                     message="loading the models", version=self._status.version + 1)
            args = dict(target=target or None, source=source, image=image, iters=iters, lr=lr, seed=seed,
                        run_dir=run_dir, stop=self._stop)
            self._thread = threading.Thread(target=self._run, kwargs=args, name="hyperdomain-adapt", daemon=True)
            self._thread.start()
            return self._status

    def stop(self) -> RunStatus:
        """Ask the run to end at the next step boundary (it saves); a no-op when none is going."""
        with self._lock:
            busy = self._status.busy
        if busy:
            self._stop.set()
            self._set(message=STOPPING)
        return self.status()

    def wait(self, timeout: float | None = None) -> RunStatus:
        t = self._thread
        if t is not None:
            t.join(timeout)
        return self.status()

    # ------------------------------------------------------------------ the thread
    def _run(self, target, source, image, iters, lr, seed, run_dir: Path, stop: threading.Event) -> None:
        import torch

        import hyperdomain as hd

        m = self.models
        every = max(1, iters // 10)
        truncation = AdaptConfig.sample_truncation  # as the run folder's sample grids
        source_row = None

        def each_step(step: int, values, domain_vector) -> None:
            nonlocal source_row
            preview = None
            if step == 1 or step % every == 0 or step == iters:
                if source_row is None:
                    source_row = m.G.sample(PREVIEW_N, truncation=truncation, seed=seed)
                adapted = m.G.sample(PREVIEW_N, domain=domain_vector, truncation=truncation, seed=seed)
                preview = hd.make_grid(torch.cat([source_row, adapted]), nrow=PREVIEW_N).numpy()
            with self._lock:
                self._losses.extend((step, k, float(v)) for k, v in values.items())
                s = self._status
                self._status = replace(s, state="running", step=step,
                                       preview=preview if preview is not None else s.preview,
                                       message=STOPPING if stop.is_set() else f"step {step}/{iters}",
                                       version=s.version + 1)

        started = time.monotonic()
        try:
            encoders = m.clip_encoders()
            options = dict(iters=iters, seed=seed, out_dir=run_dir, callback=each_step, progress=False, stop=stop,
                           clip=encoders, generator=m.generator_spec)
            if lr is not None:
                options["lr"] = lr
            if stop.is_set():
                raise _Stopped()
            self._set(state="running", message="step 0/%d" % iters)
            if image is not None:
                aligning = m.align is True  # a reference is used as it is unless asked (ImageAdaptConfig.align)
                d = hd.adapt_image(m.G, image=image, target=target, lpips=m.lpips(),
                                   detector=m.face_detector() if aligning else None, align=aligning,
                                   inversion=m.inversion, source=source,
                                   lpips_backbone=m.lpips_backbone, **options)
            else:
                d = hd.adapt(m.G, target, source, **options)
        except _Stopped:
            self._set(state="stopped", message="stopped before the first step; nothing was trained")
            return
        except HyperdomainError as e:
            self._set(state="failed", message=str(e))
            return
        except Exception as e:  # the server keeps going; the traceback goes to its log
            log.exception("adaptation run failed")
            self._set(state="failed", message=f"the run failed: {type(e).__name__}: {e}"[:500])
            return
        name = m.add_domain(d, run_dir.name)
        steps = int(d.meta.get("iterations", iters))
        state = "stopped" if steps < iters else "done"
        took = time.monotonic() - started
        download = publish(run_dir / DOMAIN_FILE, m.work_dir / PUBLISHED / f"{run_dir.name}_step{steps}.safetensors")
        self._set(state=state, step=steps, domain_file=run_dir / DOMAIN_FILE, download=download, domain_name=name,
                  message=(f"stopped at step {steps}/{iters} and saved" if state == "stopped" else
                           f"done: {steps} steps in {took:.0f} s") + f"; the domain is {name!r} in Explore and "
                  f"Photo; the run folder {run_dir} resumes with hyperdomain adapt --resume")


class _Stopped(Exception):
    pass


def keep_upload(path: Path, decoded, folder: Path) -> Path:
    """A copy of an uploaded reference image in the app's private ``uploads/``: the run records its
    path, and a resume reads it again long after the server's temporary upload is gone.

    Named by its content (sha256) with the extension of the format PIL decoded (``decoded``, the
    image read from it), never by the name the user gave: a "photo" named ``x.html`` is kept as
    ``<sha256>.png``, and the folder is not served anyway.
    """
    import hashlib

    data = path.read_bytes()
    ext = UPLOAD_EXTENSIONS.get(decoded.info.get("source_format") or "", "img")
    folder.mkdir(parents=True, exist_ok=True)
    kept = folder / f"{hashlib.sha256(data).hexdigest()}.{ext}"
    if not kept.is_file():
        with atomic_path(kept) as tmp:
            tmp.write_bytes(data)
    return kept


def publish(path: Path, target: Path) -> Path:
    """A copy of a file the app made (a run's domain) in the served ``downloads/``."""
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            tmp.write_bytes(path.read_bytes())
    return target


def _new_run_dir(runs: Path, name: str) -> Path:
    runs.mkdir(parents=True, exist_ok=True)
    k = 1
    while True:
        path = runs / (name if k == 1 else f"{name}_{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            k += 1
