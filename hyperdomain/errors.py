"""The one exception type for problems a user can fix (a file, an argument, the network).

The CLI prints such an error as one line and exits with code 2; anything else is a bug and
keeps its traceback.
"""


class HyperdomainError(Exception):
    """A user-facing error; its message names the file or argument and what was expected."""
