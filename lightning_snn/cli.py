"""Command line: ``python -m lightning_snn {fit,validate,test,predict} --config configs/<x>.yaml``.

Lightning's own ``LightningCLI``; the data module's number of classes and input shape are linked
into the model, a best-and-last ``ModelCheckpoint`` and a CSV logger are on by default, and
``--test_after_fit best|last`` evaluates the best checkpoint (by ``val/acc``) or the final
weights on the test split after ``fit``.
"""

from __future__ import annotations

from typing import Literal, Optional

from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from lightning_snn.data import VisionDataModule
from lightning_snn.module import SNNModule


class SNNCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_shape", "model.input_shape", apply_on="instantiate")
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


def main(args: list[str] | None = None) -> SNNCLI:
    return SNNCLI(
        SNNModule,
        VisionDataModule,
        args=args,
        save_config_kwargs={"overwrite": False},
    )
