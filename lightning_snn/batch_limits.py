"""``limit_{train,val,test,predict}_batches`` as Lightning's Python API means them: an ``int`` is a
number of batches, a ``float`` a fraction of the epoch (``1`` = one batch, ``1.0`` = all).

``pl.Trainer`` annotates them ``float | int | None``; a parser that tries the types in order turns
``--trainer.limit_test_batches 1`` into ``1.0`` (every batch). :class:`lightning_snn.commands.SNNTrainer`
declares them :data:`BatchLimit` (``int`` first) so the command line keeps the integer, and
:class:`BatchLimitNote` writes the limit applied to each loop in the run log.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities.rank_zero import rank_zero_info

# int first: "1" parses as 1 batch, "1.0" as 100%. Written with `|` (a types.UnionType): typing's
# Optional[Union[int, float]] is cached by equality, and Union[int, float] == Union[float, int], so
# whichever order was built first in the process (pl.Trainer's own annotation) would come back.
BatchLimit = int | float | None

STAGES = ("train", "val", "test", "predict")


def _total(loaders: Any) -> int | None:
    """Batches per epoch of a data loader or a list of them (``None`` when one has no length)."""
    items = loaders if isinstance(loaders, (list, tuple)) else [loaders]
    try:
        return sum(len(dl) for dl in items if dl is not None)
    except TypeError:
        return None


def describe(option: str, limit: int | float, applied: int | float, total: int | None) -> str:
    """``limit_train_batches: 1 batch (of 469)`` / ``limit_train_batches: 100% of 469 batches``."""
    of = f"{total}" if total is not None else "an unknown number of"
    if isinstance(limit, int) and not isinstance(limit, bool):
        n = int(applied)
        return f"{option}: {n} batch{'es' if n != 1 else ''}" + (f" (of {total})" if total is not None else "")
    return f"{option}: {limit * 100:g}% of {of} batches ({int(applied)})"


class BatchLimitNote(pl.Callback):
    """Write each ``limit_*_batches`` the user set, as applied, when its loop starts."""

    def __init__(self, limits: dict[str, int | float | None]) -> None:
        self.limits = {k: v for k, v in limits.items() if v is not None}

    def _note(self, trainer: pl.Trainer, stage: str, applied: Any, loaders: Any) -> None:
        limit = self.limits.get(stage)
        if limit is None or trainer.sanity_checking:
            return
        n = sum(applied) if isinstance(applied, (list, tuple)) else applied
        rank_zero_info(describe(f"limit_{stage}_batches", limit, n, _total(loaders)))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._note(trainer, "train", trainer.num_training_batches, trainer.train_dataloader)
        if "val" in self.limits and trainer.val_dataloaders is not None:
            self._note(trainer, "val", trainer.num_val_batches, trainer.val_dataloaders)
            self.limits.pop("val")  # once per run, not at every validation

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._note(trainer, "val", trainer.num_val_batches, trainer.val_dataloaders)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._note(trainer, "test", trainer.num_test_batches, trainer.test_dataloaders)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._note(trainer, "predict", trainer.num_predict_batches, trainer.predict_dataloaders)
