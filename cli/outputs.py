"""The files a command writes: checked before any work, so that nothing a user has is lost.

The policy, for every output: never one of the command's own inputs; never a file of another
kind (a domain never replaces a hypernetwork, a grid never a generator); an existing file of the
same kind only with ``--overwrite``; and a folder that can be written. Names made from inputs are
made unique, so no output of a command replaces another.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import click

overwrite_option = click.option(
    "--overwrite", is_flag=True,
    help="Replace existing output files of the same kind (never an input, never a file of another kind).")


class CommandError(click.ClickException):
    """An error the CLI prints as one line, whatever it quotes: a file name holding a newline or
    another control character is shown escaped (``hyperdomain.errors.one_line``)."""

    def __init__(self, message: str):
        message = str(message)
        if not message.isprintable():  # rare: only then is the library (and torch) imported here
            from hyperdomain.errors import one_line

            message = one_line(message)
        super().__init__(message)


class OutputError(CommandError):
    """An output the command refuses to write: one line, exit code 2 (as the CLI's UserError)."""

    exit_code = 2


def unique_names(names: Iterable[str]) -> list[str]:
    """``names`` with repeats made unique: ``domain``, ``domain_2``, ``domain_3`` (skipping any taken)."""
    taken: set[str] = set()
    out = []
    for name in names:
        unique, i = name, 1
        while unique in taken:
            i += 1
            unique = f"{name}_{i}"
        taken.add(unique)
        out.append(unique)
    return out


def unique_stems(paths: Iterable) -> list[str]:
    """The files' stems, made unique (``me``, ``me_2``) when two inputs share one."""
    return unique_names(Path(p).stem for p in paths)


def check_outputs(outputs: Sequence[tuple[str, Path, str]], inputs: Iterable, overwrite: bool) -> None:
    """Refuse, with one line, any of ``outputs`` (option, path, the kind written there; kinds as
    ``hyperdomain.files.kinds`` names them) that this command must not write.

    ``inputs``: the paths the command reads (None for an option not given).
    """
    # imports torch: lazily
    from hyperdomain.files.kinds import ANIMATION, ANIMATION_SUFFIXES, EMPTY, IMAGE, IMAGE_SUFFIXES, VIDEO, file_kind

    ins = {Path(p).resolve(): Path(p) for p in inputs if p is not None and str(p)}
    existing = [p for p in ins.values() if p.exists()]
    written: set[Path] = set()
    folders: set[Path] = set()
    for option, path, kind in outputs:
        path = Path(path)
        check_name_length(option, path)  # first: a name too long fails every other look at the path
        if kind == IMAGE and path.suffix.lower() not in IMAGE_SUFFIXES:
            raise OutputError(f"{option} {path}: unknown image type {path.suffix!r}; use one of "
                              f"{', '.join(IMAGE_SUFFIXES)}")
        if kind == ANIMATION and path.suffix.lower() not in ANIMATION_SUFFIXES:
            raise OutputError(f"{option} {path}: unknown animation type {path.suffix!r}; use one of "
                              f"{', '.join(ANIMATION_SUFFIXES)}")
        resolved = path.resolve()
        if resolved in written:
            raise OutputError(f"{path}: this command would write it twice; pick another {option}")
        written.add(resolved)
        source = ins.get(resolved) or _same_file(path, existing)
        if source is not None:
            raise OutputError(f"{path}: is one of this command's inputs ({source}); pick another {option}")
        if path.is_dir():
            raise OutputError(f"{option} {path}: is a folder; name a file")
        if path.exists():
            found = file_kind(path)
            same = (kind, EMPTY) + ((IMAGE, VIDEO) if kind == ANIMATION else ())  # an animation reads back as either
            if found not in same:
                raise OutputError(f"{path}: holds another kind of file ({found}, not {kind}); it is never "
                                  f"replaced, pick another {option}")
            if not overwrite:
                raise OutputError(f"{path}: already exists; pass --overwrite to replace it (or pick another "
                                  f"{option})")
        if resolved.parent not in folders:
            _check_folder(option, path)
            folders.add(resolved.parent)


def _same_file(path: Path, sources: Sequence[Path]) -> Path | None:
    """The one of ``sources`` that ``path`` already is under another name (a hard link), if any."""
    if not path.exists():
        return None
    for source in sources:
        try:
            if os.path.samefile(path, source):
                return source
        except OSError:
            continue
    return None


def _check_folder(option: str, path: Path) -> None:
    """The output's folder exists and is writable, or can be created in a writable one."""
    folder = path.resolve().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{option} {path}: cannot write there, {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: cannot write in {folder} (permission denied)")


def check_name_length(option: str, path: Path) -> None:
    """Refuse, before any work, a file the file system cannot name: the file's name (as the temporary
    name it is first written under) or a folder still to be made longer than NAME_MAX, or the whole
    path longer than PATH_MAX, each as the nearest existing folder's file system counts them."""
    from hyperdomain.files.atomic import temp_name_length

    path = Path(path)
    folder = path.absolute().parent
    while not _exists(folder) and folder != folder.parent:
        folder = folder.parent
    name_max, path_max = _limit(folder, "PC_NAME_MAX", 255), _limit(folder, "PC_PATH_MAX", 4096)
    new = path.absolute().relative_to(folder).parts
    for i, part in enumerate(new):
        size = len(os.fsencode(part))
        used = temp_name_length(part) if i == len(new) - 1 else size  # the file is written as .NAME.XXXXXXXX.tmp
        if used > name_max:
            raise OutputError(f"{option} {path}: the name {_short(part)!r} is too long for this file system ({size} "
                              f"bytes; at most {size - used + name_max} here)")
    longest = len(os.fsencode(str(path))) + temp_name_length(path.name) - len(os.fsencode(path.name))
    if longest >= path_max:
        raise OutputError(f"{option} {_short(str(path), 120)}: the path is too long for this file system "
                          f"({longest} bytes with its temporary name; under {path_max} here)")


def _exists(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError:  # missing, or a name too long to look up (Path.exists raises for that)
        return False
    return True


def _limit(folder: Path, name: str, default: int) -> int:
    try:
        return int(os.pathconf(folder, name))
    except (OSError, ValueError):  # not reported (-1 or unsupported): the common Linux limits
        return default


def _short(name: str, width: int = 60) -> str:
    """A long name in a message: its start and end (the whole of it fills screens)."""
    return name if len(name) <= width else f"{name[:width // 2 - 2]}...{name[-(width // 2 - 2):]}"


def spec_file(spec: str | None) -> str | None:
    """The FILE of a ``NAME[:TAG]=FILE`` model spec (an input of the command), else None."""
    return spec.partition("=")[2] or None if spec else None
