"""The ``--config`` files of a command line read before it is parsed: each exists and is strict YAML
(:mod:`lightning_snn.yamlfile`), its ``config:`` includes too, so a typo in a file is one clear line
naming it rather than a parser's traceback. Used by the training command line (:mod:`lightning_snn.cli`)
and by the launchers' check of a job's command line (:mod:`lightning_snn.cli_check`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from lightning_snn.errors import UsageError
from lightning_snn.yamlfile import load_yaml

_CONFIG_FLAGS = ("--config", "-c")


def config_file_args(argv: Sequence[str]) -> list[str]:
    """The values of ``--config X`` / ``--config=X`` / ``-c X`` in a command line, in order."""
    out = []
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag in _CONFIG_FLAGS and eq:
            out.append(value)
        elif arg in _CONFIG_FLAGS and i + 1 < len(argv):
            out.append(argv[i + 1])
    return out


def _check_config_file(path: Path, chain: tuple[Path, ...]) -> None:
    """``path`` and the files its ``config:`` key includes (relative to it) read strictly."""
    if path.resolve() in chain:  # a loop: the parser names it
        return
    data = load_yaml(path)
    if not isinstance(data, dict):  # the parser would say "expected a dict" without the file
        raise UsageError(f"{path}: the top level is a YAML {type(data).__name__}, not a mapping "
                         "(valid: a mapping of options, e.g. `model:` / `data:` / `trainer:` keys)")
    includes = data.get("config")
    for inc in [includes] if isinstance(includes, str) else includes or []:
        target = path.parent / str(inc)
        if not target.is_file():
            raise UsageError(f"{path}: config: {inc!r} does not exist (valid: a YAML file, relative to "
                             f"{path.parent})")
        _check_config_file(target, (*chain, path.resolve()))


def check_config_files(argv: Sequence[str]) -> None:
    """Every ``--config`` file of ``argv`` (and its ``config:`` includes) exists and is strict YAML:
    UTF-8, no tabs, not empty, no key given twice (:mod:`lightning_snn.yamlfile`). A ``--config``
    value that is YAML itself (``--config '{model: {T: 2}}'``) is left to the parser."""
    for value in config_file_args(argv):
        path = Path(value)
        if path.is_file():
            _check_config_file(path, ())
            continue
        try:
            inline = yaml.safe_load(value)
        except yaml.YAMLError:
            inline = None
        if not isinstance(inline, dict):
            what = "is a directory" if path.is_dir() else "does not exist"
            raise UsageError(f"--config {value!r} {what} (valid: a YAML config file, e.g. "
                             "configs/fmnist_mlp_bptt.yaml)")
