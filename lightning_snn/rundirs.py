"""A run that fails leaves no empty folders behind.

Lightning creates a logger's ``version_N`` folder (and the checkpoint folder) when the run starts,
before the data module and the callbacks are set up, so an error found there used to leave empty
``lightning_logs/version_N`` folders, each taking the next version number. The command line notes
the local folders a run is going to create; if the run fails, those still empty are removed
(a folder with anything but the run's ``config.yaml`` / ``hparams.yaml`` in it, e.g. a failed
run's metrics or checkpoints, is kept).
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger


def planned_dirs(trainer: pl.Trainer) -> list[Path]:
    """Folders that do not exist yet and that ``trainer``'s local loggers (their version folder)
    and checkpoint callbacks would create, with their missing parents; deepest first."""
    targets = [lg.log_dir for lg in trainer.loggers if isinstance(lg, (CSVLogger, TensorBoardLogger))]
    targets += [cb.dirpath for cb in trainer.checkpoint_callbacks if cb.dirpath]
    missing: set[Path] = set()
    for target in targets:
        if "://" in str(target):  # remote storage: left alone
            continue
        path = Path(target).absolute()
        while not path.exists() and path != path.parent:
            missing.add(path)
            path = path.parent
    return sorted(missing, key=lambda p: len(p.parts), reverse=True)


# what a run writes into its log folder when it starts, before it has done anything
START_FILES = frozenset({"config.yaml", "hparams.yaml"})


def remove_empty(dirs: list[Path]) -> None:
    """Remove the folders of ``dirs`` (deepest first, all created by the failed run) that hold
    nothing but the run's start files (``START_FILES``)."""
    for path in dirs:
        try:
            entries = list(path.iterdir())
            if all(p.is_file() and p.name in START_FILES for p in entries):
                for p in entries:
                    p.unlink()
                path.rmdir()
        except OSError:  # gone, or written meanwhile
            pass
