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
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from jsonargparse import ArgumentError

DEBUG_ENV = "LIGHTNING_SNN_DEBUG"
USAGE_EXIT = 2

# Exceptions that mean "the input is wrong", as opposed to a bug: printed as one line.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError,
                                                 NotADirectoryError, IsADirectoryError, PermissionError)


def cli_errors() -> tuple[type[BaseException], ...]:
    """``USER_ERRORS`` and, for the LightningCLI commands, the parser's and Lightning's own
    configuration errors (Lightning imported here, not by every command that reports errors)."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    return USER_ERRORS + (ArgumentError, MisconfigurationException)


class UsageError(ValueError):
    """Bad input to a command: the message names the value and what would be valid."""


class DataFileError(UsageError, RuntimeError):
    """A data file that exists but cannot be read (truncated, zeroed, not in the expected format):
    the message names the file."""


class YamlError(UsageError):
    """A YAML file or value that cannot be read as written (syntax, a tab, a key given twice, not
    UTF-8, empty): the message names the file, the line and the key or reason."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """``argparse`` parser whose usage errors raise :class:`UsageError` (one line through
    :func:`run_main`) instead of printing the usage block and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (valid: see {self.prog} --help)")


_PARSER_KEY = re.compile(r'Parser key "([^"]+)":?')
_KINDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
_EXPECTED = re.compile(r"Expected a <class '(\w+)'>\. Got value: (.*)")
_LITERAL = re.compile(r"Expected a typing\.Literal\[(.*)\]")
_GIVEN = re.compile(r"Given value: (.*)")
_EXPECTED_KIND = re.compile(r"Expected a <class '(\w+)'>")


def parser_error_line(message: str) -> str:
    """One line from jsonargparse's nested message: the full option key and the innermost reason.

    ``Parser key "model.neuron": ... Parser key "threshold": Expected a <class 'float'>. Got
    value: nan`` -> ``model.neuron.threshold: expected a float, got 'nan' (valid: a float)``.
    """
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    keys = [m.group(1) for ln in lines for m in [_PARSER_KEY.match(ln)] if m]
    key = ".".join(keys)
    for ln in lines:
        m = _EXPECTED.search(ln)
        if m:
            kind, got = m.group(1), m.group(2).strip()
            valid = _KINDS.get(kind, f"a {kind}")
            if got.lower() in ("nan", "inf", "-inf", ".nan", ".inf", "-.inf"):
                valid = "a finite number"
            return f"{key}: expected {valid}, got {got!r} (valid: {valid})"
    names = [m.group(1) for ln in lines for m in [_LITERAL.search(ln)] if m]
    given = [m.group(1) for ln in lines for m in [_GIVEN.search(ln)] if m]
    if names and given and any("dot import path" in ln for ln in lines):
        # a name or a class (model.optimizer / model.scheduler): say both forms
        valid = f"one of {names[-1]}, or a class: class_path + init_args"
        return f"{key}: got {given[-1].strip()!r} (valid: {valid})"
    rest = [_PARSER_KEY.sub("", ln).strip() for ln in lines]
    reasons = [ln for ln in rest if ln and not ln.startswith(
        ("Does not validate", "Subtypes:", "Errors:", "Given value", "- Expected a <class 'NoneType'>"))]
    reason = reasons[-1].lstrip("- ") if reasons else "invalid arguments"
    if not key and len(reasons) > 1 and reason != reasons[0]:  # e.g. a YAML error: what, then where
        reason = f"{reasons[0].rstrip(':')}: {reason}"
    line = f"{key}: {reason}" if key and key not in reason else reason
    if any(hint in line for hint in ("(valid: ", "(choose from ", " must be ")):
        return line  # the reason states what is valid
    return f"{line} (valid: the options listed by --help)"


_INIT_ARG = re.compile(r'expects a function or a callable class: Parser key "([^"]+)":')
_INIT_GOT = re.compile(r"(?:Given|Got) value: (.*?)\. Got value: Namespace\(class_path='([^']+)'")


def init_arg_error_line(exc: BaseException) -> str | None:
    """One line for an injected class's ``init_args`` value of the wrong type (``--model.optimizer.
    init_args.lr fast``), or ``None``: jsonargparse names only the union (``model.optimizer``) in the
    error it raises; the argument, its value and the type it needs are in the errors it chains."""
    chain, e = [], exc
    while e is not None and len(chain) < 20:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    text = "\n".join(chain)
    arg, outer = _INIT_ARG.search(text), _PARSER_KEY.search(chain[0])
    got = _INIT_GOT.search(text, arg.end()) if arg else None
    if not (arg and got and outer):
        return None
    kinds = [_KINDS.get(k, f"a {k}") for k in _EXPECTED_KIND.findall(text[arg.end():])]
    valid = " or ".join(dict.fromkeys(kinds)) or f"a value {got.group(2)} accepts"
    return f"{outer.group(1)}.init_args.{arg.group(1)}: expected {valid}, got {got.group(1)!r} for " \
           f"{got.group(2)} (valid: {valid})"


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (newlines of multi-line messages folded to ``; ``); a parser
    error (also one raised while instantiating) is reduced to the full option key and the
    innermost reason."""
    text = str(exc)
    if isinstance(exc, ArgumentError) or "Parser key" in text or "Does not validate" in text:
        init_arg = init_arg_error_line(exc)
        if init_arg:
            return init_arg
        return " ".join(parser_error_line(text).split())
    text = text.strip() or type(exc).__name__
    if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
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


def run_cli(main: Callable[[], Any]) -> NoReturn:
    """Run a LightningCLI ``main`` (which reads ``sys.argv`` itself); a usage error becomes one line
    on stderr and exit status 2, with the traceback too when ``LIGHTNING_SNN_DEBUG`` is set."""
    errors = cli_errors()
    try:
        main()
    except errors as exc:
        if debug_requested(()):
            traceback.print_exc()
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        sys.exit(USAGE_EXIT)
    sys.exit(0)
