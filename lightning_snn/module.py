"""SNNModule: a spiking network + a gradient strategy + loss, metrics and optimiser set-up."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from lightning_snn.models import MODELS, SpikingNet
from lightning_snn.neurons import NeuronConfig
from lightning_snn.strategies import STRATEGIES, GradientStrategy


class SNNModule(pl.LightningModule):
    """Train a registered spiking network with a registered gradient strategy.

    Args:
        network: model name in ``lightning_snn.models.MODELS`` (e.g. ``mlp``, ``convnet``, ``vgg11``).
        num_classes: classes of the data set (linked from the data module by the CLI).
        input_shape: ``(C, H, W)`` of one input (linked from the data module by the CLI).
        network_args: extra constructor arguments of the network.
        neuron: spiking-neuron hyper-parameters shared by all layers.
        strategy: gradient strategy name in ``lightning_snn.strategies.STRATEGIES``.
        strategy_args: extra constructor arguments of the strategy.
        T: time steps per sample.
        per_step_loss: mean of the per-step losses instead of the loss of the time-averaged output.
        optimizer: ``sgd``, ``adam`` or ``adamw``.
        lr, momentum, weight_decay, nesterov: optimiser settings (momentum/nesterov: SGD only).
        scheduler: ``cosine`` (to 0 over the run), ``multistep`` (x``gamma`` at ``milestones``
            epochs) or ``constant``; stepped every optimiser step.
        warmup_steps: linear learning-rate warm-up over this many optimiser steps.
        compile: compile the network with ``torch.compile`` (in place: parameter names and
            checkpoints are unchanged). Stateless layers run on the folded ``[T*B, ...]`` tensor and
            each neuron layer on the fused back end (``neuron.backend``) is one custom-op node, so
            the graph and the compile time do not grow with T; the ``torch`` loop is unrolled.
    """

    def __init__(
        self,
        network: str,
        num_classes: int,
        input_shape: Sequence[int],
        network_args: dict[str, Any] | None = None,
        neuron: NeuronConfig | None = None,
        strategy: str = "bptt",
        strategy_args: dict[str, Any] | None = None,
        T: int = 4,
        per_step_loss: bool = False,
        optimizer: Literal["sgd", "adam", "adamw"] = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        nesterov: bool = False,
        scheduler: Literal["cosine", "multistep", "constant"] = "cosine",
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        warmup_steps: int = 0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.neuron = neuron or NeuronConfig()
        self.strategy: GradientStrategy = STRATEGIES.build(strategy, T=T, **(strategy_args or {}))
        self.net: SpikingNet = MODELS.build(
            network,
            input_shape=tuple(input_shape),
            num_classes=num_classes,
            neuron=self.neuron,
            **(network_args or {}),
        )
        self.strategy.check_model(self.net)
        if compile:
            self.net.compile()
        self.automatic_optimization = self.strategy.automatic_optimization
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    # ------------------------------------------------------------------ forward and loss
    def forward(self, x: Tensor) -> Tensor:
        """Class scores ``[B, classes]``: the time-averaged output of the strategy's run."""
        return self.strategy.forward(self.net, x).mean(0)

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        """Cross-entropy of the time-averaged output, or the mean of per-step cross-entropies."""
        if self.hparams.per_step_loss:
            T = out.shape[0]
            return F.cross_entropy(out.flatten(0, 1), y.repeat(T))
        return F.cross_entropy(out.mean(0), y)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss, out = self.strategy.training_step(self, x, y)
        self.train_acc(out.mean(0).detach(), y)
        self.log("train/loss", loss.detach(), prog_bar=True, sync_dist=True)
        self.log("train/acc", self.train_acc, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str, metric: MulticlassAccuracy) -> None:
        x, y = batch
        out = self.strategy.forward(self.net, x)
        metric(out.mean(0), y)
        self.log(f"{stage}/loss", self.loss(out, y), prog_bar=True, sync_dist=True)
        self.log(f"{stage}/acc", metric, prog_bar=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).argmax(-1)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        for name, value in self.strategy.step_metrics().items():
            self.log(f"train/{name}", value)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = self.parameters()
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(
                params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay,
                nesterov=hp.nesterov,
            )
        elif hp.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self._lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _lr_factor(self, step: int) -> float:
        hp = self.hparams
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = min(1.0, (step + 1) / hp.warmup_steps) if hp.warmup_steps > 0 else 1.0
        if hp.scheduler == "cosine":
            return warm * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        if hp.scheduler == "multistep":
            epoch = step * max(1, self.trainer.max_epochs or 1) // total
            return warm * hp.gamma ** sum(epoch >= m for m in hp.milestones)
        return warm
