"""The exception types for problems a user can fix (a file, an argument, the network, the disk).

The CLI prints such an error as one line: exit code 2 for bad input (:class:`HyperdomainError`),
1 when the storage failed a write (:class:`StorageError`); anything else is a bug and keeps its
traceback.
"""
import unicodedata


class HyperdomainError(Exception):
    """A user-facing error; its message names the file or argument and what was expected."""


class StorageError(HyperdomainError):
    """The storage failed a write: the disk is full, over quota, read-only, or reports an I/O error.

    The environment, not the input: nothing the command was given was wrong. Its message names the
    file and the reason, and says what of a training run was kept.
    """


def one_line(text: object) -> str:
    """``text`` on one line, as every message is: characters that break or control a line (a newline
    or a tab in a file name, a line separator) escaped as Python writes them (``\\n``, ``\\t``,
    ``\\u2028``); everything else, non-ASCII letters included, as it is."""
    text = str(text)
    return "".join(c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) in _BREAKING else c
                   for c in text)


_BREAKING = frozenset({"Cc", "Zl", "Zp"})  # control characters, line and paragraph separators
