"""How the command line fails: one line on stderr and an exit code (2 bad input, 1 storage,
130/143 Ctrl-C/SIGTERM), never a traceback."""
from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
from pathlib import Path

import click

from .outputs import CommandError


class UserError(CommandError):
    """A bad file or argument: one line on stderr, exit code 2."""

    exit_code = 2


class StorageFault(CommandError):
    """The storage failed a write (a full disk, an I/O error): one line on stderr, exit code 1 (the
    environment, not the input)."""

    exit_code = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers, ``timeout``, Docker and Kubernetes send before they kill), raised
    where the command is, as Ctrl-C raises KeyboardInterrupt: the same clean-up runs (a temporary
    file is removed, ffmpeg stopped)."""

    signum = int(signal.SIGTERM)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises :class:`Terminated` while a command runs (in the main thread; a trainer's own
    handler, which saves the run first, takes over inside it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def user_errors(fn):
    """Turn the library's errors into one-line CLI errors: exit 2 for bad input, 1 for a storage
    fault (StorageError, or an OSError the library did not name: its file and reason); Ctrl-C or
    SIGTERM: one line, exit 130 or 143 (128 + the signal, as shells report it)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from hyperdomain.errors import HyperdomainError, StorageError

        try:
            with sigterm_as_interrupt():
                return fn(*args, **kwargs)
        except StorageError as e:
            raise StorageFault(str(e)) from None
        except HyperdomainError as e:
            raise UserError(str(e)) from None
        except OSError as e:
            raise StorageFault(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)) from None
        except KeyboardInterrupt as stop:
            signum = int(getattr(stop, "signum", signal.SIGINT))
            click.echo("terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted", err=True)
            sys.exit(128 + signum)
    return wrapper


def interrupted(ctx, out: Path, command: str, stop: KeyboardInterrupt, say: bool = True) -> None:
    """Ctrl-C or SIGTERM during training: say where the run is saved (if it is) and exit 130 or 143
    (128 + the signal, as shells report it). A save that failed (a full disk) is said in the same
    line, with the previous checkpoint, which it left as it was."""
    from hyperdomain.files.run_checkpoints import CHECKPOINT

    signum = getattr(stop, "signum", signal.SIGINT)
    if say:
        what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
        failed = getattr(stop, "save_error", None)
        if failed:
            what += f", but saving failed ({failed})"
        if (out / CHECKPOINT).is_file():
            saved = "its last checkpoint is in" if failed else "the run is saved in"
            click.echo(f"{what}; {saved} {out}. Continue with: hyperdomain {command} --resume {out}", err=True)
        else:
            click.echo(f"{what}{'' if failed else ' before the first checkpoint'}; nothing was saved", err=True)
    ctx.exit(128 + int(signum))


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


class OneLineErrors(click.Group):
    """Usage errors (a bad option value, an unknown option or command) as one line, like every other
    error, with where to look; click's default adds the usage text and a hint over three more lines."""

    def parse_args(self, ctx, args):
        return self._one_line(ctx, super().parse_args, ctx, args)

    def invoke(self, ctx):
        return self._one_line(ctx, super().invoke, ctx)

    @staticmethod
    def _one_line(ctx, fn, *args):
        try:
            return fn(*args)
        except _NO_ARGS_IS_HELP:  # a bare `hyperdomain`: the help, as click shows it
            raise
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            raise UserError(f"{e.format_message()} (see {where} --help)") from None
