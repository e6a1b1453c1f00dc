"""Strict YAML reading for every file the project reads (training configs, sweep spaces, suites).

PyYAML silently keeps the last of two equal keys (``lr: 0.1`` then ``lr: 0.5``), drops the file name
from its errors and reports a tab or a non-UTF-8 byte in words that do not say where. Here each of
these is a :class:`~lightning_snn.errors.YamlError` on one line naming the file, the line and the
key or reason. :func:`install_jsonargparse_loader` gives the command line's parser the same duplicate
check for config files and for YAML given inline (``--model '{lr: 0.1, lr: 0.5}'``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from lightning_snn.errors import YamlError

class EmptyYamlError(YamlError):
    """A YAML file or text with no document (empty, or only comments)."""


# the parser mode of the command line (jsonargparse's YAML loader plus the duplicate-key check)
JSONARGPARSE_MODE = "yaml_unique_keys"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _key_text(node: yaml.Node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else f"<{node.id} key>"


def _check_unique_keys(node: yaml.Node, name: str, prefix: str = "", seen: set[int] | None = None) -> None:
    """Raise :class:`YamlError` at the first mapping (depth first) that holds a key twice.

    Keys are compared as written with their resolved tag (``1`` and ``"1"`` differ, as in YAML);
    ``<<`` merge keys are YAML's explicit way to override and are not counted.
    """
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias of a node already checked
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                ident, line = (key.tag, key.value), key.start_mark.line + 1
                if ident in first:
                    raise YamlError(f"{name} line {line}: key '{prefix}{key.value}' given twice (first at "
                                    f"line {first[ident]}; the second would silently win) (valid: each key once)")
                first[ident] = line
            _check_unique_keys(value, name, f"{prefix}{_key_text(key)}.", seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, name, f"{prefix}{i}.", seen)


def _syntax_error(exc: yaml.YAMLError, text: str, name: str) -> YamlError:
    """One line for PyYAML's multi-line error: where (file, line, column) and what."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{name} line {mark.line + 1}, column {mark.column + 1}" if mark else name
    lines = text.splitlines()
    if mark is not None and mark.line < len(lines) and "\t" in lines[mark.line]:
        return YamlError(f"{where}: a tab character (valid: spaces; YAML does not allow tabs for indentation)")
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    reason = f"{context}, {problem}" if context else problem
    return YamlError(f"{where}: {' '.join(str(reason).split())} (valid: YAML syntax, e.g. `key: value` "
                     "indented with spaces)")


def loads_yaml(text: str, name: str) -> Any:
    """Parse one YAML document ``text`` (from ``name``, which the errors name).

    Raises :class:`YamlError` for a syntax error or a tab (with the line), a key given twice in one
    mapping (with the line and the dotted key), or a document that holds nothing (empty or only
    comments).
    """
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, text, name) from None
    if root is None:
        what = "is empty" if not text.strip() else "holds only comments"
        raise EmptyYamlError(f"{name} {what} (valid: a YAML document, e.g. a mapping `key: value`)")
    _check_unique_keys(root, name)
    return yaml.load(text, Loader=_Loader)


def load_yaml(path: str | os.PathLike) -> Any:
    """Read and parse the YAML file ``path`` strictly (see :func:`loads_yaml`).

    Raises :class:`YamlError` naming the file for a missing or unreadable file and for bytes that
    are not UTF-8 (with the line and the byte).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise YamlError(f"{path} does not exist (valid: a YAML file)") from None
    except OSError as exc:
        raise YamlError(f"{path} cannot be read: {exc.strerror or exc} (valid: a readable YAML file)") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise YamlError(f"{path} line {line}: byte 0x{data[exc.start]:02x} is not UTF-8 text "
                        "(valid: a UTF-8 encoded YAML file)") from None
    return loads_yaml(text, str(path))


def _jsonargparse_load(value: str, path: str = "") -> Any:
    """jsonargparse's own YAML loader, after the duplicate-key check of :func:`loads_yaml`.

    Any other YAML error is left to jsonargparse's loader (which, for a command-line value, may
    then read the value as a plain string, as it always did).
    """
    from jsonargparse import get_loader

    try:
        root = yaml.compose(value, Loader=_Loader)
    except yaml.YAMLError:
        root = None
    if root is not None:
        _check_unique_keys(root, str(path) if path else f"the command-line value {' '.join(value.split())!r}")
    return get_loader("yaml")(value)


def install_jsonargparse_loader() -> str:
    """Register :data:`JSONARGPARSE_MODE` with jsonargparse (idempotent); return the mode name."""
    from jsonargparse import set_loader

    set_loader(JSONARGPARSE_MODE, _jsonargparse_load, exceptions=(yaml.YAMLError,))
    return JSONARGPARSE_MODE
