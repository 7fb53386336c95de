"""The exception types for problems a user can fix (a file, an argument, the network, the disk).

The CLI prints such an error as one line: exit code 2 for bad input (:class:`HyperdomainError`),
1 when the storage failed a write (:class:`StorageError`); anything else is a bug and keeps its
traceback.
"""


class HyperdomainError(Exception):
    """A user-facing error; its message names the file or argument and what was expected."""


class StorageError(HyperdomainError):
    """The storage failed a write: the disk is full, over quota, read-only, or reports an I/O error.

    The environment, not the input: nothing the command was given was wrong. Its message names the
    file and the reason, and says what of a training run was kept.
    """
