"""SNNModule: a spiking network + a gradient strategy + loss, metrics and optimiser set-up."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, Literal, Union

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from lightning_snn.loss import LossConfig, SpikingLoss
from lightning_snn.models import MODELS, SpikingNet, model_class
from lightning_snn.neurons import NeuronConfig
from lightning_snn.nir import importer as _nir_importer  # noqa: F401  (registers the model "nir")
from lightning_snn.strategies import STRATEGIES, GradientStrategy


def _bad(option: str, value: Any, valid: str) -> ValueError:
    return ValueError(f"model.{option} must be {valid}, got {value!r} (valid: {valid})")


# The short optimiser names and the defaults of the flat options they read (``None``: unset).
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
OPTIMIZER_DEFAULTS: dict[str, Any] = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False}
# The flat options the per-step schedules by name read.
SCHEDULE_DEFAULTS: dict[str, Any] = {"gamma": 0.1}

OptimizerChoice = Union[Literal["sgd", "adam", "adamw"], OptimizerCallable]
SchedulerChoice = Union[Literal["cosine", "multistep", "constant"], LRSchedulerCallable]


def _class_name(choice: Any) -> str:
    """``torch.optim.Adam`` for an injected optimiser / schedule (a partial, a class, a function)."""
    if hasattr(choice, "get") and choice.get("class_path"):  # the CLI's config dict
        return str(choice["class_path"])
    # jsonargparse's partial wraps the class as call_without_instantiate_context(instantiator, cls)
    f = next((a for a in getattr(choice, "args", ()) if isinstance(a, type)), getattr(choice, "func", choice))
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', repr(f))}"


def resolve_flat_options(hparams: dict[str, Any]) -> None:
    """Fill the unset flat options that a short optimiser name / named schedule reads with their
    defaults (in place, so checkpoints and configs that spell the defaults out compare equal);
    with an injected class a set flat option is an error (its ``init_args`` hold its settings, and a
    flat value would be silently unused)."""
    groups = [("optimizer", OPTIMIZER_DEFAULTS, "(sgd, adam, adamw)"),
              ("scheduler", SCHEDULE_DEFAULTS, "(cosine, multistep, constant)")]
    for choice_key, defaults, names in groups:
        choice = hparams[choice_key]
        injected = not isinstance(choice, str)
        for key, default in defaults.items():
            if not injected:
                hparams[key] = default if hparams[key] is None else hparams[key]
            elif hparams[key] is not None:
                raise ValueError(
                    f"model.{key} is {hparams[key]!r} but model.{choice_key} is the class "
                    f"{_class_name(choice)}: the flat model.{key} applies to the named {choice_key}s "
                    f"{names} only (valid: set {key} in model.{choice_key}.init_args, or leave "
                    f"model.{key} unset)")
    if not isinstance(hparams["scheduler"], str):
        for key in ("warmup_steps", "milestones"):
            if hparams[key]:  # unset: 0 / ()
                raise ValueError(
                    f"model.{key} is {hparams[key]!r} but model.scheduler is the class "
                    f"{_class_name(hparams['scheduler'])}: model.{key} applies to the named schedules "
                    f"(cosine, multistep, constant) only (valid: leave model.{key} unset)")


def _check_options(*, T: Any, lr: float | None, momentum: float | None, weight_decay: float | None,
                   gamma: float | None, warmup_steps: int, milestones: Sequence[int]) -> None:
    """Numeric options out of range fail here, naming the option, not later inside torch
    (``None``: unused, the injected optimiser / schedule class holds its own settings)."""
    if isinstance(T, bool) or not isinstance(T, int) or T <= 0:
        raise _bad("T", T, "a positive integer")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise _bad("lr", lr, "a finite number > 0")
    if momentum is not None and not 0.0 <= momentum < 1.0:
        raise _bad("momentum", momentum, "in [0, 1)")
    if weight_decay is not None and not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise _bad("weight_decay", weight_decay, "a finite number >= 0")
    if gamma is not None and not (math.isfinite(gamma) and gamma > 0):
        raise _bad("gamma", gamma, "a finite number > 0")
    if warmup_steps < 0:
        raise _bad("warmup_steps", warmup_steps, "an integer >= 0")
    if any(m < 0 for m in milestones):
        raise _bad("milestones", list(milestones), "epochs >= 0")


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")


def _check_injected_optimizer(optimizer: Any) -> None:
    """An injected optimiser's ``init_args`` out of range fail when the model is built, naming
    ``model.optimizer.init_args.<key>`` (not later, inside torch, after the run's folder and
    ``config.yaml`` were written): its ``lr`` is checked as ``model.lr`` is, and the class itself is
    tried once on a one-element parameter for the checks it makes of its own settings."""
    if isinstance(optimizer, str) or not callable(optimizer):
        return
    name = _class_name(optimizer)
    args = dict(getattr(optimizer, "keywords", None) or {})  # jsonargparse's partial: init_args with defaults
    lr = args.get("lr")
    if isinstance(lr, (int, float)) and not isinstance(lr, bool) and not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"model.optimizer.init_args.lr must be a finite number > 0, got {lr!r} "
                         f"({name}) (valid: a finite number > 0)")
    try:
        optimizer([torch.nn.Parameter(torch.zeros(1))])
    except ValueError as e:  # torch's own range checks, e.g. "Invalid beta parameter at index 0: 1.5"
        numbers = set(_NUMBER.findall(str(e)))  # the setting named by the value torch quotes
        keys = [k for k, v in args.items() if numbers & set(_NUMBER.findall(str(v)))]
        where = f"model.optimizer.init_args.{keys[0]} {args[keys[0]]!r}" if len(keys) == 1 else "model.optimizer.init_args"
        raise ValueError(f"{where}: {name} refuses it: {e} (valid: values {name} accepts)") from None
    except Exception:  # noqa: BLE001 - anything else (e.g. a device-only optimiser) is left to the run itself
        pass


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
        loss: the training and evaluation loss (``lightning_snn.loss``): ``per_step`` (mean of
            per-step losses or loss of the time-averaged output; unset: the strategy's) and
            ``mse_weight`` (OTTT's ``loss_lambda``).
        optimizer: the short names ``sgd``, ``adam``, ``adamw`` (set by the flat options below),
            or any optimiser class injected Lightning's way (``class_path`` + ``init_args`` in
            YAML, e.g. ``torch.optim.Adam`` with ``betas``, ``timm.optim.Adan``), which is called
            with the parameters and holds all its settings in ``init_args``.
        lr, momentum, weight_decay, nesterov: settings of a short-named optimiser (unset: 0.1,
            0.9, 5e-4, false; momentum / nesterov: SGD only); with an injected class, leave unset.
        scheduler: per-step schedules by name: ``cosine`` (to 0 over the run), ``multistep``
            (x``gamma`` at ``milestones`` epochs, gamma unset: 0.1) or ``constant``; or any
            learning-rate scheduler class injected like the optimiser (called with the optimiser,
            stepped every epoch, ``ReduceLROnPlateau`` on ``val/loss``).
        warmup_steps: linear learning-rate warm-up over this many optimiser steps (named schedules).
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
        loss: LossConfig | None = None,
        optimizer: OptimizerChoice = "sgd",
        lr: float | None = None,
        momentum: float | None = None,
        weight_decay: float | None = None,
        nesterov: bool | None = None,
        scheduler: SchedulerChoice = "cosine",
        milestones: Sequence[int] = (),
        gamma: float | None = None,
        warmup_steps: int = 0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        _check_options(T=T, lr=lr, momentum=momentum, weight_decay=weight_decay, gamma=gamma,
                       warmup_steps=warmup_steps, milestones=milestones)
        _check_injected_optimizer(optimizer)
        self.save_hyperparameters()
        resolve_flat_options(self.hparams)
        self._choices = {"optimizer": optimizer, "scheduler": scheduler}
        self.neuron = neuron or NeuronConfig()
        # defaults stored as such, so a checkpoint compares equal to a config that spells them out
        if neuron is None:
            self.hparams["neuron"] = dataclasses.asdict(self.neuron)
        if loss is None:
            self.hparams["loss"] = dataclasses.asdict(LossConfig())
        strategy_cls = STRATEGIES.get(strategy)
        # the model mismatch first: network_args / strategy_args left over from another config are
        # secondary (known before building when the model's class is known)
        net_cls = model_class(network)
        if net_cls is not None:
            strategy_cls.check_kind(net_cls.__name__, net_cls.kind)
        self.net: SpikingNet = MODELS.build(
            network,
            option="model.network_args",
            input_shape=tuple(input_shape),
            num_classes=num_classes,
            neuron=self.neuron,
            **(network_args or {}),
        )
        strategy_cls.check_kind(type(self.net).__name__, self.net.kind)
        self.strategy: GradientStrategy = STRATEGIES.build(strategy, option="model.strategy_args", T=T,
                                                           **(strategy_args or {}))
        self.strategy.check_model(self.net)
        self.strategy.prepare_model(self.net)
        if compile:  # stateless layers and each neuron's fused op compiled; T is not unrolled
            self.net.compile()
        # one loss for training and evaluation (an online strategy calls it per step)
        self.loss = SpikingLoss.for_strategy(self.strategy, loss)
        self.automatic_optimization = not self.strategy.online
        # no argument checks in the training loop: they read the labels back to the host each step
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    # ------------------------------------------------------------------ forward and loss
    def forward(self, x: Tensor) -> Tensor:
        """Class scores ``[B, classes]``: the time-averaged output of the strategy's run."""
        return self.strategy.forward(self.net, x).mean(0)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        if self.strategy.online:
            loss, out = self._online_training_step(x, y)
        else:  # Lightning back-propagates the returned loss
            loss, out = self.strategy.train_step(self.net, x, y, self.loss, backward=None)
        # Per-step values stay on the device: Lightning turns progress-bar values into Python
        # numbers after every batch and all-reduces ``sync_dist`` step values at every step, so
        # neither is set here. Loggers read step values every ``trainer.log_every_n_steps``; the
        # epoch accuracy is reduced across ranks once, at epoch end, by the metric itself.
        self.train_acc(out.mean(0).detach(), y)
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=False)
        self.log("train/acc", self.train_acc, on_step=True, on_epoch=True)
        return loss

    def _online_training_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Manual optimisation of an online strategy: the ``backward(loss, last_step)`` it calls
        per time step back-propagates, with the DDP gradient all-reduce only at the last step of an
        accumulating strategy, or steps the optimiser every time (``update_every_step``)."""
        opt = self.optimizers()
        wrapped = self.trainer.model  # the DDP wrapper under DDP, else the module itself
        no_sync = getattr(wrapped, "no_sync", None)
        every_step = self.strategy.update_every_step

        def backward(loss: Tensor, last: bool) -> None:
            if every_step:
                opt.zero_grad()
                self.manual_backward(loss)
                opt.step()
            else:
                with nullcontext() if last or no_sync is None else no_sync():
                    self.manual_backward(loss)

        if not every_step:
            opt.zero_grad()
        loss, out = self.strategy.train_step(self.net, x, y, self.loss, backward)
        if not every_step:
            opt.step()
        self._step_manual_schedulers("step")  # one step per batch, for both kinds of update
        return loss, out

    def _step_manual_schedulers(self, interval: str) -> None:
        """Under manual optimisation Lightning steps no scheduler: step those of ``interval``."""
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == interval:
                if isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    metric = self.trainer.callback_metrics.get(config.monitor or "")
                    if metric is not None:
                        config.scheduler.step(metric)
                else:
                    config.scheduler.step()

    def on_train_epoch_start(self) -> None:
        self.strategy.on_train_epoch_start(self.net, self.current_epoch)

    def on_train_epoch_end(self) -> None:
        if not self.automatic_optimization:
            self._step_manual_schedulers("epoch")

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str, metric: MulticlassAccuracy) -> None:
        x, y = batch
        out = self.strategy.forward(self.net, x)
        metric.update(out.mean(0), y)  # epoch-level only: no per-batch value to compute
        # epoch-level values: accumulated on the device, reduced across ranks once at epoch end
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
        opt_choice, sched_choice = self._injected("optimizer"), self._injected("scheduler")
        if opt_choice is not None:  # an injected class: its init_args are all its settings
            opt = opt_choice(params)
        elif hp.optimizer == "sgd":
            opt = torch.optim.SGD(
                params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay,
                nesterov=hp.nesterov,
            )
        else:
            opt = OPTIMIZERS[hp.optimizer](params, lr=hp.lr, weight_decay=hp.weight_decay)
        if sched_choice is None:  # a named schedule, stepped every optimiser step
            sched = torch.optim.lr_scheduler.LambdaLR(opt, self._lr_factor)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        sched = sched_choice(opt)
        config: dict[str, Any] = {"scheduler": sched, "interval": "epoch"}
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/loss"
        return {"optimizer": opt, "lr_scheduler": config}

    def _injected(self, key: str) -> Any:
        """The injected optimiser / scheduler callable of ``key`` (``None`` for a short name).
        The constructor's argument, not the hyper-parameter: under the CLI the latter is the
        config's ``class_path`` / ``init_args`` dict."""
        choice = self._choices[key]
        return None if isinstance(choice, str) else choice

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
