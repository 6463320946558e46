"""The errors a user can fix, and the one policy every command line of the project applies to them.

An *expected* error is bad input or set-up that the message alone lets the user fix: a missing or
unreadable file, a wrong value or configuration, a missing dependency, a foreign output folder. The
command lines (the core's and every system's) print it as one line, ``error: <message>``,
and exit with status 2; ``--debug`` (anywhere on the command line) shows the traceback instead. Any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence


class UserError(Exception):
    """An error the user can fix; its message names the problem and the fix (in command-line terms
    where a command line can raise it)."""


# OSError: missing/unreadable files and folders; ValueError: bad values, configurations and data
# (DataError, MelConfigMismatchError and the argument checks are ValueErrors).
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (UserError, OSError, ValueError)
DEBUG_FLAG = "--debug"
DEBUG_HELP = "on an error, show the full traceback instead of the one-line message"


def one_line(error: BaseException) -> str:
    """The error's message on one line (a FileNotFoundError without a message names its file)."""
    text = str(error)
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.strerror}: {error.filename}"
    return " ".join(text.split()) or type(error).__name__


def run_cli(main: Callable[[list[str]], int], argv: Sequence[str | os.PathLike] | None = None) -> int:
    """Run a command line's ``main(args)`` under the project's error policy (see the module docstring)."""
    args = [os.fspath(a) for a in (sys.argv[1:] if argv is None else argv)]
    debug = DEBUG_FLAG in args
    args = [a for a in args if a != DEBUG_FLAG]
    try:
        return main(args)
    except EXPECTED_ERRORS as e:
        if debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
