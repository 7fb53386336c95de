"""A run folder's files besides the checkpoint, and Ctrl-C that waits for a step boundary."""
from __future__ import annotations

import json
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..errors import HyperdomainError
from ..files.atomic import write_text
from ..files.kinds import file_kind, run_checkpoint, run_description
from ..files.run_checkpoints import CHECKPOINT

LOG = "log.jsonl"


def sample_name(step: int) -> str:
    """The sample grid written at ``step`` (every trainer numbers them alike)."""
    return f"samples/step_{step:06d}.png"


def _a(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def refuse_existing_run(out_dir: Path | None, kind: str) -> None:
    """A new ``kind`` run ("adapt", "image", "hyper") starts only in a new or empty folder: never
    over a run (resume one of the same kind instead) nor over anything else a user keeps there."""
    if out_dir is None or not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise HyperdomainError(f"{out_dir}: is a file, not a run folder; pick another --out")
    if (out_dir / CHECKPOINT).is_file():
        found = file_kind(out_dir / CHECKPOINT)
        if found == run_checkpoint(kind):
            raise HyperdomainError(f"{out_dir}: already holds a run ({CHECKPOINT}); resume it (--resume {out_dir}) "
                                   f"or pick another --out")
        what = _a(found[:-len(" checkpoint")]) if found.endswith(" run checkpoint") else f"{CHECKPOINT} ({found})"
        raise HyperdomainError(f"{out_dir}: already holds {what}, not {_a(run_description(kind))}; "
                               f"pick another --out")
    if any(out_dir.iterdir()):
        raise HyperdomainError(f"{out_dir}: holds files but no run ({CHECKPOINT}); a new run starts in a new or "
                               f"empty folder: pick another --out")


def prepare_run_dir(out_dir: Path, config: Mapping[str, Any], step: int) -> None:
    """Create a run folder (with ``samples/``), write ``config.json``, and cut ``log.jsonl`` back to ``step``.

    On resume the log lines past the checkpoint's step are dropped: those steps are trained again.
    """
    try:
        (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HyperdomainError(f"{out_dir}: cannot create the run folder ({e.strerror or e})") from None
    write_text(out_dir / "config.json", json.dumps(dict(config), indent=2) + "\n")
    log_path = out_dir / LOG
    if not log_path.exists():
        return
    keep = []
    for line in log_path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except ValueError:
            continue
    write_text(log_path, "".join(k + "\n" for k in keep))


def append_log(out_dir: Path, step: int, values: Mapping[str, float]) -> None:
    """One line of ``log.jsonl``: the step and its losses."""
    with open(out_dir / LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, **values}) + "\n")


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (SIGINT) or SIGTERM at a step boundary, its state saved; ``signum``
    says which (the command line exits 130 or 143)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


class StopRequest:
    """Set by the first Ctrl-C or SIGTERM; the loop checks it between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum = int(signal.SIGINT)

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self, signum: int = signal.SIGINT) -> None:
        self.signum = int(signum)
        self._event.set()


@contextmanager
def deferred_interrupt() -> Iterator[StopRequest]:
    """Turn the first Ctrl-C or SIGTERM into a request checked between steps (a second one
    interrupts at once).

    A step is then never cut in half, so the state saved on a stop is exactly a step boundary and
    resuming from it equals an uninterrupted run. SIGTERM is what schedulers, ``timeout``, Docker
    and Kubernetes send before they kill a process: it is treated as Ctrl-C. Outside the main
    thread this is a request nobody sets.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        if request.is_set():
            raise RunInterrupted(signum)
        request.set(signum)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
