"""A run folder's files besides the checkpoint, and Ctrl-C that waits for a step boundary."""
from __future__ import annotations

import json
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..errors import HyperdomainError
from ..files.atomic import write_error, write_text
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
        raise write_error(out_dir, e, "cannot create the run folder") from None
    write_text(out_dir / "config.json", json.dumps(dict(config), indent=2) + "\n")
    repair_log(out_dir / LOG, step)


def repair_log(path: Path, step: int) -> None:
    """Keep the complete lines of the log at ``path`` up to ``step``, each ending in a newline.

    A line that is not a whole JSON object of a step (a write cut short by a crash or a full disk,
    a torn sector's bytes) is dropped, so the next append starts on a line of its own. The file is
    rewritten (atomically) only when that changes it.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    except OSError as e:
        raise write_error(path, e, "cannot read the log") from None
    keep = [line for line in data.split(b"\n") if (n := _log_step(line)) is not None and n <= step]
    text = b"".join(line + b"\n" for line in keep)
    if text != data:
        write_text(path, text.decode("utf-8"))


def _log_step(line: bytes) -> int | None:
    """The step of a complete log line, None for anything else."""
    try:
        entry = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):  # not UTF-8, not JSON (cut short), or nested past the parser
        return None
    step = entry.get("step", 0) if isinstance(entry, dict) else None
    return step if type(step) is int else None


def append_log(out_dir: Path, step: int, values: Mapping[str, float]) -> None:
    """One line of ``log.jsonl``: the step and its losses.

    Append-safe: a write that fails part way (a full disk) is cut back, so the log never ends in a
    partial line for the next append to glue onto (and should the cut fail, the next line starts
    on a line of its own); the failure is one line naming the log.
    """
    path = out_dir / LOG
    line = (json.dumps({"step": step, **values}) + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        start = os.fstat(fd).st_size
        try:
            if start and _byte_at(fd, start - 1) != b"\n":
                line = b"\n" + line
            done = 0
            while done < len(line):  # a full disk may take part of the line and refuse the rest
                done += os.write(fd, line[done:])
        except OSError as e:
            try:
                os.ftruncate(fd, start)  # frees what the partial line took: works on a full disk
            except OSError:
                pass  # the next resume drops the partial line (repair_log)
            raise write_error(path, e) from None
    finally:
        os.close(fd)


def _byte_at(fd: int, offset: int) -> bytes:
    os.lseek(fd, offset, os.SEEK_SET)  # reads only: an O_APPEND write still goes to the end
    return os.read(fd, 1)


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (SIGINT) or SIGTERM at a step boundary, its state saved; ``signum``
    says which (the command line exits 130 or 143). ``save_error``: why saving that state failed
    (e.g. a full disk; the previous checkpoint is then kept), None when it was saved."""

    def __init__(self, signum: int = signal.SIGINT, save_error: str | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.save_error = save_error


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
