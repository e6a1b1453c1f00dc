"""Memory and time of a training step, for the ``memory`` suite (SLTT's Table 1, OTTT's memory claim).

:class:`StepCost` (a Lightning callback a suite row adds with
``--trainer.callbacks+=lightning_snn.suite.memory.StepCost``) skips ``warmup_steps`` training steps
(allocator and optimiser state set-up), measures the peak memory of the next ``memory_steps`` and
times the steps after those:

- peak memory of a step: the most tensor memory allocated during the step (forward, backward and
  optimiser step) above what was allocated when it began. On CUDA the device allocator's
  ``max_memory_allocated`` minus ``memory_allocated`` at the step's start; elsewhere the peak of the
  live storages the step's operators allocate (:class:`lightning_snn.profiling.TensorMemoryTracker`,
  exact on CPU, where no allocator reports one). Parameters and optimiser state held across steps
  are not in it; a step's gradients, activations and temporaries are.
- time per step: the mean wall time of the timed steps (device synchronised), without the tracker
  (whose per-operator bookkeeping would slow the step).

The suite's result keeps ``step_memory_gb``, ``step_memory_kind`` and ``step_s``; a row whose
reference metric is ``step_memory_gb`` reports that as its value.
"""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch

from lightning_snn.profiling import TensorMemoryTracker

METRICS = ("step_memory_gb", "step_s")


class StepCost(pl.Callback):
    """Peak step memory and time per training step (see module doc)."""

    def __init__(self, warmup_steps: int = 1, memory_steps: int = 1) -> None:
        if warmup_steps < 0 or memory_steps < 1:
            raise ValueError(f"StepCost needs warmup_steps >= 0 and memory_steps >= 1, got {warmup_steps}, "
                             f"{memory_steps}")
        self.warmup_steps, self.memory_steps = warmup_steps, memory_steps
        self.step, self.peak_bytes, self.times = 0, 0, []
        self.kind: str | None = None
        self._tracker: TensorMemoryTracker | None = None
        self._base, self._t0 = 0, 0.0

    def _phase(self) -> str:
        if self.step < self.warmup_steps:
            return "warmup"
        return "memory" if self.step < self.warmup_steps + self.memory_steps else "time"

    @staticmethod
    def _sync(device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        dev = pl_module.device
        phase = self._phase()
        self._sync(dev)
        if phase == "memory":
            if dev.type == "cuda":
                self._base = torch.cuda.memory_allocated(dev)
                torch.cuda.reset_peak_memory_stats(dev)
                self.kind = "device allocator (max_memory_allocated above the step's start)"
            else:
                self._tracker = TensorMemoryTracker()
                self._tracker.__enter__()
                self.kind = "tensor storages allocated in the step (TensorMemoryTracker)"
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        dev = pl_module.device
        phase = self._phase()
        self._sync(dev)
        dt = time.perf_counter() - self._t0
        if phase == "memory":
            if self._tracker is not None:
                self._tracker.__exit__(None, None, None)
                peak, self._tracker = self._tracker.peak, None
            else:
                peak = torch.cuda.max_memory_allocated(dev) - self._base
            self.peak_bytes = max(self.peak_bytes, int(peak))
        elif phase == "time":
            self.times.append(dt)
        self.step += 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._tracker is not None:  # training stopped inside a measured step
            self._tracker.__exit__(None, None, None)
            self._tracker = None

    def result(self) -> dict[str, Any]:
        """``step_memory_gb`` (GiB), ``step_memory_kind``, ``step_s`` (``None`` where not measured:
        too few steps trained)."""
        measured = self.step > self.warmup_steps
        return {"step_memory_gb": self.peak_bytes / 2**30 if measured else None,
                "step_memory_kind": self.kind if measured else None,
                "step_s": sum(self.times) / len(self.times) if self.times else None}
