"""Command line: ``python -m lightning_snn {fit,validate,test,predict,export,report} --config configs/<x>.yaml``.

Lightning's own ``LightningCLI``; the data module's number of classes and input shape are linked
into the model (and the model's ``T`` into the number of event frames), a best-and-last ``ModelCheckpoint`` and a CSV logger are on by default, and
``--test_after_fit best|last`` evaluates the best checkpoint (by ``val/acc``) or the final
weights on the test split after ``fit``. With a W&B logger (``--trainer.logger`` class_path
``pytorch_lightning.loggers.WandbLogger``) the full parsed config is also stored in the run's config.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import pytorch_lightning as pl
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger

from lightning_snn.commands import SNNTrainer
from lightning_snn.data import VisionDataModule
from lightning_snn.module import SNNModule


class SaveConfigToLogger(SaveConfigCallback):
    """Lightning's ``config.yaml`` in the log dir, plus the whole config in a W&B run's config (so
    runs can be compared by any option, not only the module's hyper-parameters)."""

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if loggers:
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            for lg in loggers:
                lg.experiment.config.update({"cli": config}, allow_val_change=True)


class SNNCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands plus ``export`` (NIR) and ``report`` (spikes / SOPs / energy)."""
        return {**LightningCLI.subcommands(), "export": {"model", "datamodule"},
                "report": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_shape", "model.input_shape", apply_on="instantiate")
        parser.link_arguments("model.T", "data.frames")  # event data: one frame per time step
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "epoch{epoch}-acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
                "trainer.logger": {
                    "class_path": "pytorch_lightning.loggers.CSVLogger",
                    "init_args": {"save_dir": "logs"},
                },
            }
        )
        parser.add_argument(
            "--test_after_fit", type=Optional[Literal["best", "last"]], default=None,
            help="after fit, evaluate the best (by val/acc) or the final weights on the test split",
        )

    def after_fit(self) -> None:
        which = self.config[self.subcommand].get("test_after_fit")
        if which:
            best = which == "best" and self.trainer.checkpoint_callback.best_model_path
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if best else None)


def main(args: list[str] | None = None, **cli_kwargs: Any) -> SNNCLI:
    """Run the command line on ``args`` (``sys.argv`` when ``None``); ``cli_kwargs`` go to
    ``SNNCLI`` (e.g. ``save_config_kwargs`` or ``run=False``) over the defaults."""
    kwargs: dict[str, Any] = {
        "save_config_callback": SaveConfigToLogger,
        "save_config_kwargs": {"overwrite": False},
        **cli_kwargs,
    }
    kwargs.setdefault("trainer_class", SNNTrainer)
    return SNNCLI(SNNModule, VisionDataModule, args=args, **kwargs)
