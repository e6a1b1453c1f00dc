"""One-line errors for the project's command lines.

A command's ``main`` raises :class:`UsageError` (or another ``ValueError`` / ``FileNotFoundError``
of the project's own validation) for bad input; :func:`run_main` turns it into one line on stderr,
``error: <what> (valid: <choices>)``, and exit status 2, so the message is not buried under a
traceback. ``--debug`` on the command line or ``LIGHTNING_SNN_DEBUG=1`` in the environment shows the
traceback instead (the exception propagates unchanged).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

DEBUG_ENV = "LIGHTNING_SNN_DEBUG"
USAGE_EXIT = 2

# Exceptions that mean "the input is wrong", as opposed to a bug: printed as one line.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError,
                                                 NotADirectoryError, IsADirectoryError, PermissionError)


class UsageError(ValueError):
    """Bad input to a command: the message names the value and what would be valid."""


class DataFileError(UsageError, RuntimeError):
    """A data file that exists but cannot be read (truncated, zeroed, not in the expected format):
    the message names the file."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """``argparse`` parser whose usage errors raise :class:`UsageError` (one line through
    :func:`run_main`) instead of printing the usage block and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (valid: see {self.prog} --help)")


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (newlines of multi-line messages folded to ``; ``)."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = str(exc.args[0])
    out = ""
    for line in (line.strip() for line in text.splitlines()):
        if line:
            out += (" " if out.endswith(":") else "; " if out else "") + line
    return out


def debug_requested(argv: Sequence[str]) -> bool:
    """``--debug`` among the arguments or ``LIGHTNING_SNN_DEBUG`` set to a true value."""
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


def run_main(fn: Callable[[list[str]], int | None], argv: Sequence[str] | None = None,
             errors: tuple[type[BaseException], ...] = USER_ERRORS) -> int:
    """Run ``fn(argv)`` (``argv`` without ``--debug``; ``sys.argv[1:]`` by default) and return its
    exit status; an exception of ``errors`` becomes ``error: <message>`` on stderr and status 2.

    ``argparse`` usage errors already exit with status 2 and one line of their own.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:  # only the command's own options may hold --debug
        i = argv.index("--")
        own, rest = argv[:i], argv[i:]
    else:
        own, rest = argv, []
    debug = debug_requested(own)
    argv = [a for a in own if a != "--debug"] + rest
    if debug:
        status = fn(argv)
        return 0 if status is None else int(status)
    try:
        status = fn(argv)
    except errors as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        return USAGE_EXIT
    return 0 if status is None else int(status)
