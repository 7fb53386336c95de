"""Domain lists: the text files of prompts a multi-domain hypernetwork is trained on.

One domain per line, ``Target - Source``; the source is optional and defaults to the
generator's source prompt. ``#`` starts a comment at the start of a line or after whitespace.
Every problem in a file is collected and raised as one :class:`HyperdomainError`, so a user
fixes a 300-line list in one pass instead of one error per run.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..model.config import DEFAULT_SOURCE_PROMPT
from ..errors import HyperdomainError

__all__ = ["DomainPrompt", "read_domain_list", "parse_domain_list", "builtin_domain_list",
           "BUILTIN_LISTS"]

BUILTIN_LISTS = ("train", "heldout")
_MAX_LISTED = 10  # problems named in one error message; the rest are counted

# A comment starts at '#' at line start or after whitespace, so "C#"-like words survive.
_COMMENT = re.compile(r"(^|\s)#.*$")
# The separator is a hyphen with whitespace (or the line's edge) on both sides: "Spider-Man"
# is one target, while "Anime -" and "- Photo" are a separator with an empty side.
_SEPARATOR = re.compile(r"(?:^|\s+)-(?:\s+|$)")


@dataclass(frozen=True)
class DomainPrompt:
    """One target domain, the source prompt it departs from, and its 1-based line number."""

    target: str
    source: str
    line: int


def prompt_key(prompt: str) -> str:
    """Case- and whitespace-insensitive identity of a prompt (what CLIP's tokenizer sees)."""
    return " ".join(prompt.split()).casefold()


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def parse_domain_list(text: str, default_source: str = DEFAULT_SOURCE_PROMPT,
                      where: str = "<text>") -> list[DomainPrompt]:
    """Parse a domain list; raise one :class:`HyperdomainError` naming ``where`` and every problem."""
    default_source = default_source.strip()
    if not default_source:
        raise HyperdomainError(f"{where}: the default source prompt is empty")
    prompts: list[DomainPrompt] = []
    problems: list[str] = []
    first_seen: dict[str, DomainPrompt] = {}
    # Split on "\n" only: str.splitlines also breaks on form feeds and the like, and line
    # numbers must match what an editor shows.
    for lineno, raw in enumerate(text.split("\n"), start=1):
        content = _COMMENT.sub("", raw).strip()
        if not content:
            continue
        if any(ord(ch) < 32 and ch != "\t" for ch in content):  # NUL and other controls: a binary file
            problems.append(f"line {lineno}: control characters (is this a text file?)")
            continue
        parts = _SEPARATOR.split(content)
        if len(parts) > 2:
            problems.append(f"line {lineno}: more than one ' - ' separator in {_short(content)}")
            continue
        target = parts[0].strip()
        source = parts[1].strip() if len(parts) == 2 else default_source
        if not target:
            problems.append(f"line {lineno}: empty target")
            continue
        if not source:
            problems.append(f"line {lineno}: empty source after ' - ' in {_short(content)}")
            continue
        if prompt_key(target) == prompt_key(source):
            # The direction loss needs T_trg - T_src != 0.
            problems.append(f"line {lineno}: target is the same as its source ({_short(target)})")
            continue
        earlier = first_seen.get(prompt_key(target))
        if earlier is not None:
            problems.append(f"line {lineno}: duplicate of line {earlier.line} ({_short(earlier.target)})")
            continue
        prompt = DomainPrompt(target=target, source=source, line=lineno)
        first_seen[prompt_key(target)] = prompt
        prompts.append(prompt)
    if problems:
        listed = "; ".join(problems[:_MAX_LISTED])
        if len(problems) > _MAX_LISTED:
            listed += f"; and {len(problems) - _MAX_LISTED} more"
        raise HyperdomainError(f"{where}: {listed}")
    if not prompts:
        raise HyperdomainError(f"{where}: no domains in the list (only blank lines and comments)")
    return prompts


def read_domain_list(path: str | os.PathLike, default_source: str = DEFAULT_SOURCE_PROMPT) -> list[DomainPrompt]:
    """Read and parse a UTF-8 domain list file (a leading byte-order mark is allowed).

    ``path`` may also name a shipped list: ``builtin:train`` or ``builtin:heldout``.
    """
    if str(path).startswith("builtin:"):
        path = builtin_domain_list(str(path).split(":", 1)[1])
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise HyperdomainError(f"{path}: cannot read domain list ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise HyperdomainError(f"{path}: line {line}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return parse_domain_list(text, default_source=default_source, where=str(path))


def builtin_domain_list(name: str) -> Path:
    """Path of a list shipped with the package: ``"train"`` or ``"heldout"`` (disjoint prompts)."""
    if name not in BUILTIN_LISTS:
        raise HyperdomainError(f"unknown built-in domain list {name!r}; expected one of {', '.join(BUILTIN_LISTS)}")
    resource = resources.files("hyperdomain.guidance").joinpath(f"domains_{name}.txt")
    # A normal (or editable) install keeps package data as real files; only a zipped install
    # would not, and nothing here is zip-safe anyway (CUDA extensions, open_clip).
    if not isinstance(resource, Path) or not resource.is_file():
        raise HyperdomainError(f"built-in domain list {name!r} is missing from the installed package ({resource})")
    return resource
