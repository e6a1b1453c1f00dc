"""One-line errors for the command line.

Bad input (a value out of range, an unknown name, a missing file, an unusable checkpoint, a
parser error) is reported as ``error: <what> (valid: <choices>)`` with exit status 2 instead of a
traceback. ``LIGHTNING_SNN_DEBUG=1`` shows the traceback (and the parser's usage text) as well.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from jsonargparse import ArgumentError
from lightning_fabric.utilities.exceptions import MisconfigurationException

DEBUG_ENV = "LIGHTNING_SNN_DEBUG"
EXIT_USAGE = 2
# errors the project (and its parser) raises for input that cannot work; anything else is a bug
# or a failure of the machine and keeps its traceback
USAGE_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, FileNotFoundError, NotADirectoryError, PermissionError, ArgumentError,
    MisconfigurationException,
)

_PARSER_KEY = re.compile(r'Parser key "([^"]+)":?')
_KINDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
_EXPECTED = re.compile(r"Expected a <class '(\w+)'>\. Got value: (.*)")


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


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
    rest = [_PARSER_KEY.sub("", ln).strip() for ln in lines]
    reasons = [ln for ln in rest if ln and not ln.startswith(
        ("Does not validate", "Subtypes:", "Errors:", "Given value", "- Expected a <class 'NoneType'>"))]
    reason = reasons[-1].lstrip("- ") if reasons else "invalid arguments"
    line = f"{key}: {reason}" if key and key not in reason else reason
    if any(hint in line for hint in ("(valid: ", "(choose from ", " must be ")):
        return line  # the reason states what is valid
    return f"{line} (valid: the options listed by --help)"


def error_line(exc: BaseException) -> str:
    """``error: ...`` in one line for a usage error."""
    text = str(exc)
    if isinstance(exc, ArgumentError) or "Parser key" in text or "Does not validate" in text:
        text = parser_error_line(text)  # jsonargparse's, also when raised while instantiating
    text = " ".join(text.split()) or type(exc).__name__
    if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return f"error: {text}"


def run_main(main: Callable[[], Any]) -> NoReturn:
    """Run ``main``; a usage error becomes one line on stderr and exit status 2."""
    try:
        main()
    except USAGE_ERRORS as exc:
        if debug_enabled():
            traceback.print_exc()
        print(error_line(exc), file=sys.stderr)
        sys.exit(EXIT_USAGE)
    sys.exit(0)
