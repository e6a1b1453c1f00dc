"""Training-time monitors that read a spiking network without changing what it computes."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from lightning_snn.neurons import SpikingNeuron


class FiringRateMonitor(pl.Callback):
    """Log the mean firing rate of every spiking layer over each validation epoch.

    Spikes are read where the layers emit them: a forward hook on each spiking layer (multi-step
    networks) and a wrapper around its single-step ``step`` (networks whose strategy owns the loop
    over time, e.g. feedback SNNs under IDE). Both only read the output, so the numerics are those of
    an unmonitored run. Scalars ``<prefix>/layer<i>`` go to every logger; with a W&B logger the
    per-neuron rates of each layer are also logged as histograms.

    Args:
        prefix: metric name prefix.
        histograms: also log per-neuron rate histograms when the logger is W&B.
    """

    def __init__(self, prefix: str = "val/rate", histograms: bool = True) -> None:
        self.prefix = prefix
        self.histograms = histograms
        self._handles: list[Any] = []
        self._layers: list[SpikingNeuron] = []
        self._sums: list[Tensor | None] = []
        self._counts: list[int] = []

    # ------------------------------------------------------------------ recording
    def _record(self, i: int, spikes: Tensor, leading: int) -> None:
        """Accumulate layer ``i``'s spikes per neuron over its ``leading`` time/batch axes."""
        # a spike is a nonzero output (DSR emits Vth); counted in int64, exact past float32's 2^24
        per_neuron = (spikes.detach() != 0).sum(dim=tuple(range(leading)), dtype=torch.int64)
        self._sums[i] = per_neuron if self._sums[i] is None else self._sums[i] + per_neuron
        self._counts[i] += math.prod(spikes.shape[:leading])

    def _attach(self, layers: list[SpikingNeuron]) -> None:
        self._layers = layers
        self._sums = [None] * len(layers)
        self._counts = [0] * len(layers)
        for i, layer in enumerate(layers):
            def fwd_hook(_m: Any, _inp: Any, out: Tensor, i: int = i) -> None:
                self._record(i, out, 2)  # [T, B, ...]

            def step(x: Tensor, i: int = i, orig: Any = layer.step) -> Tensor:
                s = orig(x)
                self._record(i, s, 1)  # [B, ...]
                return s

            self._handles.append(layer.register_forward_hook(fwd_hook))
            layer.step = step  # type: ignore[method-assign]  # instance attribute, removed in _detach

    def _detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        for layer in self._layers:
            layer.__dict__.pop("step", None)

    # ------------------------------------------------------------------ Lightning hooks
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._attach(pl_module.net.spiking_layers())

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._handles:
            return
        self._detach()
        rates = [
            (s / c) if s is not None and c else None for s, c in zip(self._sums, self._counts)  # exact count / count
        ]
        for i, r in enumerate(rates):
            if r is not None:
                pl_module.log(f"{self.prefix}/layer{i}", r.mean(), sync_dist=True)
        if self.histograms and trainer.is_global_zero:
            self._log_histograms(trainer, rates)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, err: BaseException) -> None:
        self._detach()

    def _log_histograms(self, trainer: pl.Trainer, rates: list[Tensor | None]) -> None:
        from pytorch_lightning.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                data = {
                    f"{self.prefix}_hist/layer{i}": wandb.Histogram(r.flatten().cpu().numpy())
                    for i, r in enumerate(rates) if r is not None
                }
                logger.experiment.log({**data, "trainer/global_step": trainer.global_step})
