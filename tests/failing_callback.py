"""A callback that raises inside a real training run: a run that fails mid-training, for launcher tests."""

import pytorch_lightning as pl


class FailAtStep(pl.Callback):
    """Raise ``RuntimeError`` after training step ``step``."""

    def __init__(self, step: int = 2) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"deliberate failure at step {self.step}")
