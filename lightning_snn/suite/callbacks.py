"""The callbacks a suite run trains with: its throughput (``RunStats``, the dry run's step time and
the result's images/s) and the spike / energy report of its final test; and the dry run's stop
once its steps are timed (``StopWhenTimed``)."""

from __future__ import annotations

import sys
import time
from typing import Any

import pytorch_lightning as pl
import torch

from lightning_snn.energy import SpikeEnergyReport
from lightning_snn.errors import one_line


class RunStats(pl.Callback):
    """Training throughput of this start: samples per second over the training batches only
    (``steady_seconds``: the same without the first batch, which includes warm-up and compilation).
    ``loop_seconds`` are the whole training loop's seconds per step, one per step after the first
    (batch end to batch end: loading the batch, its transfer and transforms, the step): what an
    epoch costs per step, the dry run's estimate; ``loop_cpu_seconds`` the CPU time this process
    spent in the same intervals (all its threads), which a loaded machine does not stretch."""

    def __init__(self) -> None:
        self.samples, self.seconds, self.steps, self.steady_seconds, self._t0 = 0, 0.0, 0, 0.0, 0.0
        self.loop_seconds: list[float] = []
        self.loop_cpu_seconds: list[float] = []
        self._last_end: float | None = None
        self._last_cpu = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_end = None  # validation between epochs is not a training step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        now = time.perf_counter()
        dt = now - self._t0
        cpu = time.process_time()
        if self._last_end is not None:
            self.loop_seconds.append(now - self._last_end)
            self.loop_cpu_seconds.append(cpu - self._last_cpu)
        self._last_end, self._last_cpu = now, cpu
        self.seconds += dt
        self.steady_seconds += dt if self.steps else 0.0
        self.steps += 1
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        self.samples += int(x.shape[0]) * trainer.world_size


class SuiteEnergyReport(SpikeEnergyReport):
    """The spike / SOP / energy report of the final test, without failing a finished training run
    when a network's layers cannot be counted (the run's result then has no energy columns)."""

    def _attach(self, pl_module: pl.LightningModule, stage: str = "test") -> None:
        try:
            super()._attach(pl_module, stage)
        except Exception as e:  # noqa: BLE001 - the accuracy is the result; energy is extra
            self._detach()
            print(f"warning: no spike/energy report for this network: {one_line(e)}", file=sys.stderr)


class StopWhenTimed(pl.Callback):
    """Ends the dry run's fit once the ``RunStats`` of the same trainer has timed at least ``steps``
    steps after ``warmup`` ones and those steps span at least ``seconds``."""

    def __init__(self, warmup: int = 3, steps: int = 12, seconds: float = 4.0) -> None:
        self.warmup, self.steps, self.seconds = warmup, steps, seconds

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        stats = next(c for c in trainer.callbacks if isinstance(c, RunStats))
        timed = stats.loop_seconds[self.warmup:]
        if len(timed) >= self.steps and sum(timed) >= self.seconds:
            trainer.should_stop = True
