"""Command line: ``python -m lightning_snn {fit,validate,test,predict,export,report,timesteps} --config configs/<x>.yaml``.

Lightning's own ``LightningCLI``; the data module's number of classes and input shape are linked
into the model (and the model's ``T`` into the number of event frames), checkpoints (best by
``val/acc`` at each validation, ``last.ckpt`` at epoch ends / ``--checkpoint.every_n_train_steps`` /
on SIGTERM or SIGUSR1, see ``checkpoints``) and a CSV logger are on by default, and
``--test_after_fit best|last`` evaluates the best checkpoint (by ``val/acc``) or the final
weights on the test split after ``fit``. With a W&B logger (``--trainer.logger`` class_path
``pytorch_lightning.loggers.WandbLogger``) the full parsed config is also stored in the run's config.

``--ckpt_path`` is verified before anything starts: an unreadable ``last``/``hpc_ckpt`` file falls
back to the newest intact checkpoint (``fit``), and a checkpoint whose model settings differ from
the requested ones is an error naming the keys (the checkpoint never overrides the config); so are
other data settings on resume, and another data set in evaluation unless ``--allow_other_data``.
``python -m lightning_snn`` reports bad input in one line (``errors``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from typing import Any, Literal, NoReturn, Optional

import pytorch_lightning as pl
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from lightning_snn.checkpoints import (
    AtomicCheckpointIO, CheckpointError, TrainingInterrupted, best_and_resume_callbacks, check_data_settings,
    hparam_mismatch, read_checkpoint, resolve_resume, stored_data_settings,
)
from lightning_snn.config_files import check_config_files
from lightning_snn.commands import SNNTrainer, space_separated_list
from lightning_snn.data import VisionDataModule
from lightning_snn.errors import UsageError, one_line, run_cli
from lightning_snn.module import SNNModule
from lightning_snn.profiling import is_out_of_memory, memory_peak_text
from lightning_snn.rundirs import planned_dirs, remove_empty, require_writable_run_dirs
from lightning_snn.yamlfile import install_jsonargparse_loader


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
    _ckpt_hparams: dict[str, Any] | None = None
    _ckpt_data: dict[str, Any] | None = None
    _ckpt_file: str | None = None

    def __init__(self, *args: Any, trainer_class: Any = SNNTrainer, **kwargs: Any) -> None:
        # the trainer class carries the ``export`` and ``report`` commands
        super().__init__(*args, trainer_class=trainer_class, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """Lightning's parser, reading YAML with the duplicate-key check (``yamlfile``)."""
        kwargs.setdefault("parser_mode", install_jsonargparse_loader())
        return super().init_parser(**kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Check the ``--config`` files (strict YAML, named in errors) first, then parse."""
        if args is None or isinstance(args, (list, tuple)):
            check_config_files(sys.argv[1:] if args is None else args)
        super().parse_arguments(parser, args)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands plus ``export`` (NIR), ``report`` (spikes / SOPs / energy) and
        ``timesteps`` (the report and accuracy against the number of time steps)."""
        return {**LightningCLI.subcommands(), "export": {"model", "datamodule"},
                "report": {"model", "datamodule"}, "timesteps": {"model", "datamodule"}}

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
        parser.add_argument(
            "--init_from", type=Optional[str], default=None,
            help="fit: start from this checkpoint's weights only (no optimiser, epoch or T); mismatched "
                 "keys are an error unless named in --init_from_ignore (lightning_snn.init_from)",
        )
        parser.add_argument(
            "--init_from_ignore", type=list[str], default=[],
            help="fit --init_from: keys (fnmatch globs) not loaded; missing / reshaped ones keep their initialisation",
        )
        parser.add_argument(
            "--init_from_calibrate", type=bool, default=False,
            help="fit --init_from: then set each IF layer's threshold to the 99.9th percentile of its post-ReLU "
                 "ANN activation over 5 validation batches (DSR's hybrid recipe, lightning_snn.calibrate)",
        )
        parser.add_argument(
            "--threads", type=Optional[int], default=None,
            help="torch intra-op threads of this process (default: the CPUs it may use: affinity, "
                 "SLURM_CPUS_PER_TASK, Ray's resources, LSNN_CPUS, OMP_NUM_THREADS; env LSNN_NUM_THREADS)",
        )
        parser.add_argument(
            "--allow_other_data", type=bool, default=False,
            help="test / validate / report a --ckpt_path on another data set than it was trained on",
        )
        parser.add_argument(
            "--allow_unknown_data", type=bool, default=False,
            help="fit: resume a --ckpt_path that does not record its data settings, with the requested ones",
        )

    def _parse_ckpt_path(self) -> None:
        """Verify ``--ckpt_path`` (fall back from a broken ``last`` when fitting) and keep its model
        settings to compare after instantiation; unlike Lightning, never merge them into the config."""
        sub = self.config.get("subcommand")
        if not sub or not self.config[sub].get("ckpt_path"):
            return
        cfg = self.config[sub]
        if cfg.ckpt_path == "best":  # Lightning's "best" is the best file of a fit in this process
            raise CheckpointError(f"--ckpt_path best: `{sub}` has no best checkpoint of its own, 'best' is "
                                  "that of a fit in the same command (valid: the checkpoint file, e.g. "
                                  "<checkpoint dir>/epoch3-acc0.9012.ckpt, or 'last')")
        path = resolve_resume(str(cfg.ckpt_path), cfg.checkpoint.dirpath if "checkpoint" in cfg else None,
                              cfg.trainer.default_root_dir, fallback=sub == "fit")
        cfg.ckpt_path = path
        if path not in ("last", "best", "hpc") and not path.startswith("registry"):
            self._ckpt_file = path
            ckpt = read_checkpoint(path)
            self._ckpt_hparams, self._ckpt_data = ckpt.get("hyper_parameters"), stored_data_settings(ckpt)

    def after_instantiate_classes(self) -> None:
        self._set_threads(self.trainer)
        if self.subcommand is None:
            return
        self._check_checkpoint_matches_model()
        if (self.subcommand == "fit" and self._ckpt_file and self._ckpt_data is None
                and hasattr(self.datamodule, "run_settings")
                and not self.config["fit"].get("allow_unknown_data")):
            # its position in the epoch, batch size and split cannot be checked: resuming would silently
            # re-derive them from the requested settings (and record those as the checkpoint's)
            raise CheckpointError(
                f"checkpoint {self._ckpt_file} does not record the data settings it was trained with, so a "
                "resume cannot check them (valid: --allow_unknown_data true to resume it with the requested "
                "--data.* settings, or no --ckpt_path to start a new run)")
        self._init_from()
        if self._ckpt_data and self.subcommand != "export" and hasattr(self.datamodule, "run_settings"):
            note = check_data_settings(self._ckpt_data, self.datamodule.run_settings(), self._ckpt_file,
                                       self.subcommand, self.config[self.subcommand].get("allow_other_data"))
            if note:
                print(note, file=sys.stderr)
        trainer = self.trainer
        # the --checkpoint.* callback becomes best-by-validation + last/step/signal (checkpoints.py)
        configured = self.config_init[self.subcommand].get("checkpoint")
        if configured in trainer.callbacks:
            args = self.config[self.subcommand].checkpoint.as_dict()
            i = trainer.callbacks.index(configured)
            trainer.callbacks[i:i + 1] = best_and_resume_callbacks(args)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def _set_threads(self, trainer: pl.Trainer) -> None:
        """torch's threads to this process's CPUs (``threads``), said in the log; DDP ranks on one
        machine share its CPUs (a SLURM task has its own ``SLURM_CPUS_PER_TASK``)."""
        import os

        from lightning_snn.threads import set_intra_op_threads

        processes = 1 if os.environ.get("SLURM_CPUS_PER_TASK") else max(1, int(trainer.num_devices))
        try:
            config = self.config[self.subcommand] if self.subcommand else self.config
            line = set_intra_op_threads(config.get("threads"), processes)
        except ValueError as e:
            raise UsageError(str(e)) from None
        rank_zero_info(line)

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """Lightning's trainer; an accelerator this machine lacks is named with what would work."""
        try:
            return super().instantiate_trainer(**kwargs)
        except MisconfigurationException as e:
            acc = (self.config[self.subcommand] if self.subcommand else self.config).trainer.get("accelerator")
            if not isinstance(acc, str) or acc in ("auto", "cpu") or "available" not in str(e).lower() \
                    and "no supported" not in str(e).lower():
                raise
            raise UsageError(f"--trainer.accelerator {acc}: not available on this machine ({one_line(e)}) "
                             "(valid: cpu, or auto to use a GPU where there is one)") from e

    def _run_subcommand(self, subcommand: str) -> None:
        """Run it; a failed run leaves no empty log / checkpoint folder, and out of memory becomes one
        line with the batch size, T and the peak memory tried."""
        if subcommand in ("fit", "validate", "test"):  # they write logs (and fit checkpoints)
            # a read-only folder: one line naming it, not a chain of tracebacks
            require_writable_run_dirs(self.trainer, checkpoints=subcommand == "fit")
        created = planned_dirs(self.trainer)
        try:
            super()._run_subcommand(subcommand)
        except BaseException as e:
            remove_empty(created)  # the log / checkpoint folders this failed run left empty
            if not isinstance(e, (RuntimeError, MemoryError)) or not is_out_of_memory(e):
                raise
            data = self.datamodule.hparams
            evaluation = f"--data.eval_batch_size {data.get('eval_batch_size') or data['batch_size']}"
            sizes = evaluation if subcommand != "fit" else f"--data.batch_size {data['batch_size']} ({evaluation})"
            raise UsageError(
                f"out of memory in {subcommand} with {sizes} and --model.T {self.model.hparams.T} "
                f"({memory_peak_text(e, self.trainer.strategy.root_device)}) "
                "(valid: a smaller --data.batch_size / --data.eval_batch_size or --model.T, "
                "--trainer.precision bf16-mixed, or --trainer.accumulate_grad_batches)") from e

    def _init_from(self) -> None:
        """``fit --init_from CKPT``: the weights of another run (``init_from``), before training."""
        cfg = self.config[self.subcommand]
        source, ignore = cfg.get("init_from"), list(cfg.get("init_from_ignore") or [])
        if not source:
            if ignore or cfg.get("init_from_calibrate"):
                what = f"--init_from_ignore {ignore}" if ignore else "--init_from_calibrate"
                raise UsageError(f"{what} without --init_from (valid: with --init_from, or neither)")
            return
        if self.subcommand != "fit":
            raise UsageError(f"--init_from {source}: only fit starts from another run's weights (valid: "
                             f"`{self.subcommand} --ckpt_path {source}` to evaluate it)")
        if cfg.get("ckpt_path"):  # a resumed run (e.g. requeued) continues from its own weights
            print(f"--init_from {source} not applied: resuming from --ckpt_path {cfg.ckpt_path}", file=sys.stderr)
            return
        from lightning_snn.init_from import init_weights

        report = init_weights(self.model, source, ignore)
        print(report.summary(source), file=sys.stderr)
        if cfg.get("init_from_calibrate"):
            from lightning_snn.calibrate import calibrate_thresholds

            dm = self.datamodule
            dm.setup("fit")
            thresholds = calibrate_thresholds(self.model.net, (b[0] for b in dm.val_dataloader()))
            print("--init_from_calibrate: thresholds " + ", ".join(f"{k} {v:.4g}" for k, v in thresholds.items()),
                  file=sys.stderr)

    def _check_checkpoint_matches_model(self) -> None:
        if not self._ckpt_hparams:
            return
        diff = hparam_mismatch(self._ckpt_hparams, dict(self.model.hparams),
                               include_optimisation=self.subcommand == "fit")
        if self.subcommand == "timesteps":  # T is what it varies (--T), and only there
            diff = [d for d in diff if d[0] != "T"]
        if diff:
            shown = "; ".join(f"model.{k}: checkpoint {a!r}, requested {b!r}" for k, a, b in diff)
            raise CheckpointError(
                f"checkpoint {self._ckpt_file} was made with other model settings than requested: {shown} "
                "(valid: the checkpoint's settings, or no --ckpt_path to start a new run)")

    def after_fit(self) -> None:
        which = self.config[self.subcommand].get("test_after_fit")
        if which:
            best = which == "best" and self.trainer.checkpoint_callback.best_model_path
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if best else None)


class _NoTips(logging.Filter):
    """Drops Lightning's advertising tips ("Tip: ... try installing litlogger ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless" not in str(record.msg)


def quiet_lightning_hints() -> None:
    """Keep Lightning's litlogger tip and, outside a SLURM job, its "prepend srun" hint (this
    project launches SLURM jobs itself, ``suite run --launcher slurm``) off every command's output."""
    lg = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _NoTips) for f in lg.filters):
        lg.addFilter(_NoTips())
    if "SLURM_JOB_ID" not in os.environ:
        warnings.filterwarnings("ignore", message="The `srun` command is available on your system")


def main(args: list[str] | None = None, **cli_kwargs: Any) -> SNNCLI:
    """Run the command line on ``args`` (``sys.argv`` when ``None``); ``cli_kwargs`` go to
    ``SNNCLI`` (e.g. ``save_config_kwargs`` or ``run=False``) over the defaults."""
    quiet_lightning_hints()
    if args is None:  # export --verify a b c, timesteps --T 1 2 4: the parser reads [a,b,c]
        sys.argv[1:] = space_separated_list(space_separated_list(sys.argv[1:]), "--T")
    else:
        args = space_separated_list(space_separated_list(args), "--T")
    kwargs: dict[str, Any] = {
        "save_config_callback": SaveConfigToLogger,
        "save_config_kwargs": {"overwrite": False},
        **cli_kwargs,
    }
    return SNNCLI(SNNModule, VisionDataModule, args=args, **kwargs)


def command_line(args: list[str] | None = None) -> NoReturn:
    """``python -m lightning_snn``: bad input is one line and exit status 2 (``errors``); a run
    stopped by SIGTERM / SIGUSR1 exits with ``128 + signal`` after saving its checkpoint."""

    def run() -> None:
        try:
            main(args, parser_kwargs=_NO_EXIT)
        except TrainingInterrupted as stop:
            print(f"interrupted: {stop}", file=sys.stderr)
            sys.exit(128 + stop.signum)
        except SIGTERMException:  # Lightning's own, outside the training loop (e.g. in test): not 0
            print("interrupted: stopped by SIGTERM", file=sys.stderr)
            sys.exit(128 + signal.SIGTERM)

    run_cli(run)


# parse errors raise (jsonargparse.ArgumentError) instead of printing the usage text and exiting
_NO_EXIT: dict[str, Any] = {"exit_on_error": False, **{
    sub: {"exit_on_error": False} for sub in ("fit", "validate", "test", "predict", "export", "report", "timesteps")}}
