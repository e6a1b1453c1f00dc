"""A run that fails leaves no empty folders behind.

Lightning creates a logger's ``version_N`` folder (and the checkpoint folder) when the run starts,
before the data module and the callbacks are set up, so an error found there used to leave empty
``lightning_logs/version_N`` folders, each taking the next version number. The command line notes
the local folders a run is going to create; if the run fails, those still empty are removed
(a folder with anything but the run's ``config.yaml`` / ``hparams.yaml`` in it, e.g. a failed
run's metrics or checkpoints, is kept). Before that, the folders a command will write are probed
(:func:`require_writable`): a read-only file system or a path under a file is one line naming the
option, not a chain of tracebacks from the first ``mkdir``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Lightning is imported by the functions that take a trainer: the suite's file
    import pytorch_lightning as pl  # commands import require_writable without it


def planned_dirs(trainer: pl.Trainer) -> list[Path]:
    """Folders that do not exist yet and that ``trainer``'s local loggers (their version folder)
    and checkpoint callbacks would create, with their missing parents; deepest first."""
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

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


def require_writable(path: str | Path, option: str) -> None:
    """Raise a one-line ``UsageError`` naming ``option`` and ``path`` unless this process can create
    files at ``path``: its nearest existing folder is probed by creating (and removing) a file there,
    which, unlike the mode bits, also finds a read-only file system and holds for root. Nothing is
    created at ``path`` itself."""
    import tempfile

    from lightning_snn.errors import UsageError

    if "://" in str(path):  # remote storage: its own client reports
        return
    target = Path(path).absolute()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{option} {path}: {existing} is a file, not a folder, so {target} cannot be created "
                         "(valid: a folder path this user can write)")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".lsnn-write-probe-"):
            pass
    except OSError as e:
        raise UsageError(f"{option} {path}: {existing} is not writable ({e.strerror or e}) "
                         "(valid: a folder this user can write, on a writable file system)") from None


def require_writable_run_dirs(trainer: pl.Trainer, checkpoints: bool = True) -> None:
    """The folders ``trainer``'s local loggers and (``checkpoints``: a fit) checkpoint callbacks
    write, each checked with :func:`require_writable` before the run creates anything, named by the
    option that sets it."""
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    root = Path(trainer.default_root_dir).absolute()
    for lg in trainer.loggers:
        if isinstance(lg, (CSVLogger, TensorBoardLogger)):
            own = Path(lg.save_dir).absolute() != root  # Lightning's default logger writes under the root
            require_writable(lg.save_dir, "--trainer.logger.init_args.save_dir" if own else "--trainer.default_root_dir")
    for cb in trainer.checkpoint_callbacks if checkpoints else []:
        if cb.dirpath:
            require_writable(cb.dirpath, "--checkpoint.dirpath")
        elif not trainer.loggers:  # no logger: checkpoints go to <default_root_dir>/checkpoints
            require_writable(root, "--trainer.default_root_dir")
