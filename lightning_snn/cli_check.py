"""Check a training command line without running it: the launchers (SLURM submit, sweeps) parse
the config and options a job or trial will get with the same parser (``SNNCLI``, LightningCLI)
before anything is queued, started or written."""

from __future__ import annotations

import argparse
import warnings
from typing import Any

from lightning_snn.errors import UsageError, one_line


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
