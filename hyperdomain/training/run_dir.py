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
from ..files.run_checkpoints import CHECKPOINT

LOG = "log.jsonl"


def sample_name(step: int) -> str:
    """The sample grid written at ``step`` (every trainer numbers them alike)."""
    return f"samples/step_{step:06d}.png"


def refuse_existing_run(out_dir: Path | None) -> None:
    """A new run never overwrites a folder that holds one."""
    if out_dir is not None and (out_dir / CHECKPOINT).exists():
        raise HyperdomainError(
            f"{out_dir}: already holds a run ({CHECKPOINT}); resume it (--resume {out_dir}) or pick another --out"
        )


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


@contextmanager
def deferred_interrupt() -> Iterator[threading.Event]:
    """Turn the first Ctrl-C into a flag checked between steps (a second one interrupts at once).

    A step is then never cut in half, so the state saved on Ctrl-C is exactly a step boundary and
    resuming from it equals an uninterrupted run. Outside the main thread this is a no-op flag.
    """
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
