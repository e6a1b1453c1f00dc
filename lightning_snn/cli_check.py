"""Check a training command line without running it: the launchers (SLURM submit, sweeps) parse
the config and options a job or trial will get with the same parser (``SNNCLI``, LightningCLI)
before anything is queued, started or written."""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from lightning_snn.errors import UsageError, one_line
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


def check_args(args: list[str], build: bool = False) -> Any:
    """Parse ``args`` (``fit --config ...``) with the command line's parser and return the parsed
    configuration (a jsonargparse namespace keyed by the subcommand); with ``build`` also
    build the model and the data module from them (their own checks: ``model.T: 0``, a leak out of
    range, network arguments of the wrong type), but no trainer, and without reading the data.

    Raises :class:`UsageError` for a YAML syntax error, an unknown option or a value of the wrong
    type (``--model.T abc``), with jsonargparse's message on one line, or for what building rejects.
    """
    from jsonargparse import ArgumentError

    from lightning_snn.cli import SNNCLI
    from lightning_snn.data import VisionDataModule
    from lightning_snn.errors import USER_ERRORS
    from lightning_snn.module import SNNModule

    class ParseOnly(SNNCLI):
        def _set_seed(self) -> None:  # parsing only: leave the global RNG alone
            pass

        def before_instantiate_classes(self) -> None:
            pass

        def instantiate_classes(self) -> None:
            if build:  # the data files are checked where the run starts (e.g. a SLURM node), not here
                self.config[self.subcommand].data.download = True
                super().instantiate_classes()

        def instantiate_trainer(self, **kwargs):  # type: ignore[no-untyped-def]
            return None

        def after_instantiate_classes(self) -> None:
            pass

        def _run_subcommand(self, subcommand: str) -> None:
            pass

    off = {"exit_on_error": False}
    try:
        with warnings.catch_warnings():  # "args and sys.argv both given": intended here
            warnings.filterwarnings("ignore", message=".*args parameter is intended")
            cli = ParseOnly(SNNModule, VisionDataModule, args=args, parser_kwargs={**off, args[0]: off})
    except argparse.ArgumentError as e:
        line = one_line(e)
        if "(valid: " not in line:
            line += f" (valid: what `python -m lightning_snn {args[0]} --help` lists)"
        raise UsageError(line) from e
    except (ArgumentError, *USER_ERRORS) as e:
        raise UsageError(one_line(e)) from e
    return cli.config
