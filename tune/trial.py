"""One Tune trial = the ordinary ``lightning_snn`` fit of a config with the trial's overrides.

The trial builds the project's ``SNNCLI`` (same config parsing, registries and validation as
``python -m lightning_snn fit``), adds a Tune reporting/checkpointing callback and a firing-rate
monitor through the CLI's own ``--trainer.callbacks+=`` syntax, and points the logger (CSV, or W&B
grouped by sweep name) and checkpoints at the trial's directory. A trial that Tune restores (after a
driver restart or a retry) resumes from its last reported checkpoint.
"""

from __future__ import annotations

import json
import os
import threading
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from .space import to_overrides

REPORT_CALLBACK = "ray.tune.integration.pytorch_lightning.TuneReportCheckpointCallback"
RATE_CALLBACK = "lightning_snn.callbacks.FiringRateMonitor"
CHECKPOINT_FILE = "checkpoint"


@dataclass
class TrialSpec:
    """What every trial of a sweep shares (the launcher's arguments, resolved).

    Args:
        config: absolute path of the experiment config.
        output_dir: the experiment directory; trial ``<id>`` logs (CSV or W&B offline runs) and
            Lightning checkpoints go to ``<output_dir>/trials/<id>`` (a path every node sees).
        overrides: ``--key=value`` options applied to every trial before its sampled ones.
        cwd: directory relative paths in the config (e.g. ``data.root``) are resolved against.
        metrics: Lightning metric names reported to Tune each validation epoch.
        max_epochs: override of ``trainer.max_epochs`` (``None``: the config's).
        sweep_name: experiment name; the W&B group of every trial.
        wandb_project: log each trial to this W&B project (``None``: CSV logs in the trial dir).
        wandb_tags: tags of every trial's W&B run.
    """

    config: str
    output_dir: str = "."
    overrides: list[str] = field(default_factory=list)
    cwd: str = "."
    metrics: list[str] = field(default_factory=lambda: ["val/acc", "val/loss", "train/loss"])
    max_epochs: int | None = None
    sweep_name: str = "sweep"
    wandb_project: str | None = None
    wandb_tags: list[str] = field(default_factory=list)


def _logger(spec: TrialSpec, trial_dir: str, trial_name: str, trial_id: str) -> dict[str, Any]:
    if spec.wandb_project:
        return {
            "class_path": "pytorch_lightning.loggers.WandbLogger",
            "init_args": {
                "project": spec.wandb_project, "group": spec.sweep_name, "name": trial_name,
                "job_type": "tune-trial", "tags": [spec.sweep_name, *spec.wandb_tags],
                "save_dir": trial_dir,
            },
        }
    return {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": trial_dir}}


def trial_args(spec: TrialSpec, config: dict[str, Any], trial_dir: str, trial_name: str,
               trial_id: str, ckpt_path: str | None = None) -> list[str]:
    """The ``fit`` command line of one trial (without the subcommand's side effects)."""
    report = {"class_path": REPORT_CALLBACK,
              "init_args": {"metrics": {m: m for m in spec.metrics}, "filename": CHECKPOINT_FILE,
                            "save_checkpoints": True, "on": "validation_end"}}
    args = [
        "fit", "--config", spec.config, *spec.overrides, *to_overrides(config),
        f"--trainer.default_root_dir={trial_dir}",
        f"--trainer.logger={json.dumps(_logger(spec, trial_dir, trial_name, trial_id))}",
        "--trainer.enable_progress_bar=false",
        f"--trainer.callbacks+={json.dumps(report)}",
        f"--trainer.callbacks+={RATE_CALLBACK}",
        "--test_after_fit=null",
    ]
    if spec.max_epochs is not None:
        args.append(f"--trainer.max_epochs={spec.max_epochs}")
    if ckpt_path:
        args.append(f"--ckpt_path={ckpt_path}")
    return args


def run_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    """Tune function trainable: fit the config with this trial's overrides."""
    from lightning_snn.cli import main

    ctx = tune.get_context()
    # Not ctx.get_trial_dir(): that is a node-local staging copy, synced (or not) by Ray later.
    trial_dir = str(Path(spec.output_dir) / "trials" / ctx.get_trial_id())
    os.makedirs(trial_dir, exist_ok=True)
    if os.path.isdir(spec.cwd):
        os.chdir(spec.cwd)  # relative paths mean what they mean to the launching command line
    with ExitStack() as stack:
        ckpt_path = None
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            ckpt_dir = stack.enter_context(checkpoint.as_directory())
            ckpt_path = str(Path(ckpt_dir) / CHECKPOINT_FILE)
        args = trial_args(spec, config, trial_dir, ctx.get_trial_name(), ctx.get_trial_id(), ckpt_path)
        ok = False
        try:
            main(args, save_config_kwargs={"overwrite": True})
            ok = True
        except SystemExit as exc:
            if exc.code in (0, None):  # Tune stopped the trial (scheduler decision) inside report()
                ok = True
                raise
            # the parser rejected the overrides: a failed trial, not a dead worker
            raise RuntimeError(
                f"the command line rejected this trial (exit {exc.code}); see the trial's stderr. "
                f"Overrides: {to_overrides(config)}"
            ) from None
        finally:
            if spec.wandb_project:
                import wandb

                if wandb.run is not None:
                    wandb.finish(exit_code=0 if ok else 1)


def make_trainable(spec: TrialSpec, resources: dict[str, float], stop_timeout_s: float = 120.0) -> Any:
    """The Tune trainable of a sweep: :func:`run_trial` bound to ``spec``, with ``resources``.

    Tune stops a trial (ASHA's decision, or the end of the sweep) by ending its training thread
    inside ``report`` and then shutting its actor down without waiting for that thread; a logger
    still closing (a W&B run writing its file) would be cut off. This trainable's ``cleanup`` waits
    up to ``stop_timeout_s`` for the trial's own ``finally`` blocks to complete first.
    """
    from ray.tune.trainable.function_trainable import wrap_function
    from ray.train._internal.session import get_session

    base = wrap_function(tune.with_parameters(run_trial, spec=spec))

    class GracefulStop(base):  # type: ignore[misc, valid-type]
        def cleanup(self) -> None:
            session = get_session()
            thread = getattr(session, "training_thread", None) if session else None
            try:
                super().cleanup()
            finally:
                if thread is not None and thread.is_alive():
                    # plain Thread.join: the runner's own join re-raises what Tune already handled
                    threading.Thread.join(thread, stop_timeout_s)

    GracefulStop.__name__ = "run_trial"
    return tune.with_resources(GracefulStop, resources)
