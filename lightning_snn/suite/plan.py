"""What a suite launch will do: every run's command line checked, its data present, its state, and
an estimate of its cost from a measured step time."""

from __future__ import annotations

import io
import json
import logging
import math
import statistics
import tempfile
import warnings
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from lightning_snn.errors import UsageError, one_line
from lightning_snn.suite.execute import (
    FAILED, RESULT, fit_args, is_locked, read_metrics, read_result, resume_checkpoint,
)
from lightning_snn.suite.spec import Options, Row, RunSpec, SuiteError

# canonical training-split sizes: a smaller copy on disk (e.g. CIFAR-10's 20 test images) is not the data set
FULL_TRAIN_SIZE = {"mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000,
                   "imagenet": 1_281_167, "nmnist": 60_000, "nmnist_spikes": 60_000}


@dataclass
class RowCheck:
    """A row's parsed command line and whether its data are here."""

    config: Any  # the parsed ``fit`` namespace
    missing_data: str | None  # why the row cannot run here, or None
    train_size: int | None


def check_row(row: Row, opts: Options, seed: int) -> RowCheck:
    """Parse the row's full command line (config, overrides, options after ``--``) with the training
    command line's own parser, check the protocol can be followed, and look for its data."""
    from lightning_snn.cli_check import check_args

    run = RunSpec("check", row, seed)
    try:
        # built too (model and data module, no data read): a row's `--model.T=0` fails before any row trains
        cfg = check_args(fit_args(run, Options(root=Path(tempfile.gettempdir()), extra=opts.extra), 0),
                         build=True)["fit"]
    except UsageError as e:
        raise SuiteError(f"row {row.name!r} ({row.config.name}): {e}") from None
    if row.reference.protocol == "best_epoch" and int(cfg.data.val_size) != 0:
        raise SuiteError(f"row {row.name!r}: protocol best_epoch reads the test curve, but data.val_size is "
                         f"{cfg.data.val_size} (valid: data.val_size 0, which validates on the test split, "
                         "or protocol final)")
    missing, size = data_status(cfg.data)
    return RowCheck(cfg, missing, size)


def data_status(data: Any) -> tuple[str | None, int | None]:
    """``(reason it is missing or incomplete, training-split size)`` of a parsed ``data`` section."""
    from lightning_snn.data import VisionDataModule

    try:
        with quiet():  # the back end auto picks is said by the run, not by the plan
            dm = VisionDataModule(**dict(data))  # event data: frames = the model's T (linked)
        n = len(dm._open(train=True, augment=False, transform=False))
    except Exception as e:  # noqa: BLE001 - any reason the data cannot be read is "not here"
        return f"no data: {one_line(e)}", None
    full = FULL_TRAIN_SIZE.get(data.dataset)
    if full and n < full:
        return f"no data: only {n} of the {full} training images of {data.dataset} under {data.root}", n
    return None, n


def run_state(run: RunSpec, opts: Options) -> tuple[str, str]:
    """``(state, detail)``: done, failed, running, interrupted (resumes from its checkpoint) or pending."""
    d = run.directory(opts.root)
    if (d / RESULT).is_file():
        try:
            res = read_result(d, run.row.name, run.seed)
        except SuiteError as e:  # one bad file is that run's state, not the end of the listing
            return "invalid", str(e)
        v = res.get("value")
        return "done", f"{res.get('metric', '?')} {v:.2f}" if isinstance(v, (int, float)) else "no value"
    if is_locked(d):
        return "running", progress(d)
    if (d / FAILED).is_file():
        return "failed", json.loads((d / FAILED).read_text())["error"]
    if resume_checkpoint(d):
        return "interrupted", progress(d)
    return "pending", ""


def progress(d: Path) -> str:
    """Epochs logged so far out of the planned ones (from the run's own log files)."""
    m = read_metrics(d)
    done = int(m["epoch"].max()) + 1 if not m.empty and "epoch" in m else 0
    cfgs = sorted((d / "logs").glob("attempt*/config.yaml"))
    total = None
    if cfgs:
        import yaml

        total = (yaml.safe_load(cfgs[-1].read_text()) or {}).get("trainer", {}).get("max_epochs")
    return f"epoch {done}/{total if total is not None else '?'}"


def steps_per_run(cfg: Any, train_size: int | None) -> int | None:
    """Optimiser steps of a whole run: epochs x batches per epoch (``limit_train_batches`` applied)."""
    t = cfg.trainer
    if train_size is None or t.max_epochs is None:
        return None
    n = train_size - int(cfg.data.val_size)
    devices = t.devices if isinstance(t.devices, int) and t.devices > 0 else 1
    batches = n // (int(cfg.data.batch_size) * devices * int(t.num_nodes or 1))
    limit = t.limit_train_batches
    if limit is not None:
        batches = min(batches, int(limit)) if isinstance(limit, int) or limit > 1 else math.floor(batches * limit)
    steps = int(t.max_epochs) * batches
    return min(steps, int(t.max_steps)) if t.max_steps not in (None, -1) else steps


def gpu_here() -> bool:
    """Whether Lightning's ``gpu`` accelerator (CUDA or Apple MPS) can run on this machine."""
    from pytorch_lightning.accelerators import CUDAAccelerator, MPSAccelerator

    return bool(CUDAAccelerator.is_available() or MPSAccelerator.is_available())


@contextmanager
def quiet() -> Iterator[None]:
    """Lightning's start-up messages and warnings off (a dry run prints only its plan)."""
    loggers = [logging.getLogger(n) for n in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@dataclass
class StepTime:
    """A dry run's measurement of one row: the median of ``steps`` timed steps, and the conditions."""

    seconds: float  # median seconds per training step (loading, transforms and the step)
    cpu_seconds: float  # median CPU seconds of this process per step (all its threads)
    device: str
    steps: int  # timed steps, after the warm-up ones
    threads: int  # torch intra-op threads the step ran with
    load: tuple[float, float]  # the machine's 1-minute load average before and after
    cpus: int  # CPUs this process may use (affinity)
    span: float = 0.0  # seconds the timed steps took together

    def note(self) -> str:
        before, after = self.load
        cpu = f", CPU time {self.cpu_seconds:.3f} s/step" if self.device.startswith("cpu") else ""
        return (f"measured on {self.device}: median of {self.steps} steps, {self.threads} threads{cpu}, "
                f"load {before:.1f}->{after:.1f} on {self.cpus} CPUs")


def measure_step_seconds(row: Row, opts: Options, seed: int, steps: int = 12, warmup: int = 3,
                         parallel: int = 1, min_seconds: float = 4.0, max_steps: int = 400) -> StepTime:
    """Seconds per training step of ``row`` on this machine: real steps of its own ``fit`` in a
    scratch directory, with the threads its run will have (``parallel`` runs at a time share the
    CPUs, ``lightning_snn.threads``); the median of the steps after ``warmup`` ones (compilation,
    allocator, caches), timed batch end to batch end as an epoch spends them. At least ``steps``
    are timed, and more until they span ``min_seconds`` (at most ``max_steps``): a dozen steps of a
    few milliseconds each move with the CPU's clock and the scheduler, seconds of them do not."""
    import os

    import pytorch_lightning as pl
    import torch

    from lightning_snn.cli import main
    from lightning_snn.suite.callbacks import RunStats
    from lightning_snn.suite.execute import _device
    from lightning_snn.threads import CPUS_ENV, intra_op_threads

    if steps < 1 or warmup < 1:
        raise ValueError(f"steps {steps}, warmup {warmup} (valid: both >= 1)")
    saved_env = os.environ.get(CPUS_ENV)
    if parallel > 1:
        os.environ[CPUS_ENV] = str(max(1, intra_op_threads()[0] // parallel))
    load_before = os.getloadavg()[0]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run = RunSpec("measure", row, seed)
            args = fit_args(run, Options(root=Path(tmp), extra=opts.extra), 0)
            args += [f"--trainer.max_steps={warmup + max_steps + 1}", "--trainer.limit_val_batches=0",
                     "--test_after_fit=null", "--trainer.enable_model_summary=false",
                     "--trainer.callbacks+=lightning_snn.suite.callbacks.StopWhenTimed",
                     f"--trainer.callbacks.warmup={warmup}", f"--trainer.callbacks.steps={steps}",
                     f"--trainer.callbacks.seconds={min_seconds}"]
            pl.seed_everything(seed, verbose=False)
            with quiet():
                cli = main(args, save_config_kwargs={"overwrite": True})
            threads = torch.get_num_threads()
    finally:
        if parallel > 1:
            if saved_env is None:
                os.environ.pop(CPUS_ENV, None)
            else:
                os.environ[CPUS_ENV] = saved_env
    stats = next(c for c in cli.trainer.callbacks if isinstance(c, RunStats))
    timed = stats.loop_seconds[warmup:]  # loop_seconds starts after the first step
    if not timed:
        raise SuiteError(f"row {row.name!r}: could not time a step after {warmup} warm-up steps "
                         f"({stats.steps} training batches)")
    return StepTime(statistics.median(timed), statistics.median(stats.loop_cpu_seconds[warmup:]),
                    _device(cli.trainer)[0], len(timed), threads,
                    (load_before, os.getloadavg()[0]), len(os.sched_getaffinity(0)), sum(timed))
