"""Proxy learning: train an IF SNN through a ReLU ANN that shares its weights.

Kheradpisheh, Mirsadeghi, Masquelier, "Spiking neural networks trained via proxy" (IEEE Access
2022). One model is run twice per batch, independently:

* the **SNN**: every spiking layer is an IF neuron (no graph, ``no_grad``), driven for T steps by
  the direct-encoded input; its output is the spike count of the output layer (a model ending in
  a spiking layer) or the time mean of a linear read-out;
* the **ANN**: the same module, same parameters, one pass on the static input with every hidden
  spiking layer acting as ReLU and the output spiking layer as the identity (the ANN's last layer
  is a plain linear layer). The swap is a :func:`neuron_dynamics` context, so the ANN is not a
  copy and the weights are shared by construction.

The ANN's output *value* is replaced by the SNN's and the error is back-propagated through the
ANN's graph::

    y = y_ann + (c_snn - y_ann).detach()      value c_snn, gradient J_ann^T dL/dy

The loss is the module's (``lightning_snn.loss``) on the output ``[1, B, classes]``: the paper's,
``mean((c - onehot(y))^2)`` over B x classes (one spike for the true class, none for the others),
is ``model.loss.mse_weight: 1.0``; the default is the cross-entropy of the output.

Batch norm, as in the notebook: the two networks share each batch norm's affine parameters
(gamma, beta) but keep separate running statistics. The module's own buffers are the SNN's (the
network that is evaluated; its training pass folds the T*B spike maps of all steps into one batch,
or with ``bn_per_step: true``, the notebook's, normalises each step's batch on its own); the ANN's
are the extra buffers ``ann_running_mean`` / ``ann_running_var`` / ``ann_num_batches_tracked`` of
the same module, swapped in for the ANN's pass. With ``freeze_bn_epoch: 1`` (the notebook) every
batch norm of both networks runs in evaluation mode from the second epoch on, also while training:
the running statistics stay at their values after the first epoch, gamma and beta keep training,
and the backward sees a fixed affine map.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_snn.models.base import SpikingNet
from lightning_snn.neurons import SpikingNeuron, neuron_dynamics
from lightning_snn.strategies.base import STRATEGIES, GradientStrategy

RESETS = ("hard", "subtract")
# a batch norm's running statistics; the ANN's copy of each is the buffer ``ann_<name>``
BN_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch norms of ``model`` that track running statistics."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def add_ann_statistics(model: nn.Module) -> None:
    """Give every batch norm of ``model`` the ANN's own running statistics, freshly initialised
    (mean 0, variance 1, no batches), as buffers saved with the model; existing ones are kept."""
    for bn in batch_norms(model):
        if not hasattr(bn, "ann_running_mean"):
            bn.register_buffer("ann_running_mean", torch.zeros_like(bn.running_mean))
            bn.register_buffer("ann_running_var", torch.ones_like(bn.running_var))
            bn.register_buffer("ann_num_batches_tracked", torch.zeros_like(bn.num_batches_tracked))


def _swap_statistics(bns: list[nn.modules.batchnorm._BatchNorm]) -> None:
    for bn in bns:
        b = bn._buffers
        for name in BN_STATISTICS:
            b[name], b[f"ann_{name}"] = b[f"ann_{name}"], b[name]


@contextmanager
def frozen_batch_norms(model: nn.Module) -> Iterator[None]:
    """Every batch norm of ``model`` in evaluation mode (normalise with the running statistics,
    leave them unchanged), whatever the model's mode; the modes are restored on exit."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    modes = [bn.training for bn in bns]
    for bn in bns:
        bn.eval()
    try:
        yield
    finally:
        for bn, mode in zip(bns, modes):
            bn.train(mode)


def if_dynamics(layer: SpikingNeuron, x: Tensor, reset: str = "hard") -> Tensor:
    """IF neuron over ``[T, B, ...]``: ``v += x[t]``, fire at ``v >= Vth``, then reset to 0
    (``hard``, spikingjelly's IFNode) or subtract Vth (``subtract``). Spikes in {0, 1}, no graph."""
    vth = layer.vth().detach().to(x.dtype)
    v = torch.zeros_like(x[0])
    out = x.new_empty(x.shape)
    for t in range(x.shape[0]):
        v = v + x[t]
        s = (v >= vth).to(x.dtype)
        v = v * (1.0 - s) if reset == "hard" else v - vth * s
        out[t] = s
    return out


@contextmanager
def per_step_batch_norms(model: nn.Module, T: int, batch: int) -> Iterator[None]:
    """Batch norms of ``model`` in training mode normalise each time step's ``batch`` rows of a
    folded ``[T*batch, ...]`` input on their own, one running-statistic update per step (the
    notebook's SNN calls each batch norm once per step); a static ``[batch, ...]`` input (the
    direct-encoded first layer, run once) is unchanged."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def stepwise(bn: nn.modules.batchnorm._BatchNorm) -> Callable[[Tensor], Tensor]:
        plain = type(bn).forward

        def forward(z: Tensor) -> Tensor:
            if not bn.training or T == 1 or z.shape[0] != T * batch:
                return plain(bn, z)
            return torch.cat([plain(bn, zt) for zt in z.chunk(T)])  # time-major fold: step t's rows

        return forward

    for bn in bns:
        bn.forward = stepwise(bn)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for bn in bns:
            del bn.forward


@contextmanager
def as_relu_network(model: nn.Module, output: SpikingNeuron | None = None) -> Iterator[None]:
    """Run ``model`` as its ReLU twin: spiking layers are ReLU, the ``output`` spiking layer (the
    one whose spikes are the model's output, if any) is the identity, and batch norms read and
    update the ANN's running statistics (:func:`add_ann_statistics`), not the SNN's."""
    add_ann_statistics(model)
    bns = batch_norms(model)

    def relu(layer: SpikingNeuron, x: Tensor) -> Tensor:
        return x if layer is output else F.relu(x)

    _swap_statistics(bns)
    try:
        with neuron_dynamics(model, relu):
            yield
    finally:
        _swap_statistics(bns)


@STRATEGIES.register("proxy")
class Proxy(GradientStrategy):
    """Proxy learning for feed-forward models.

    Args:
        T: SNN time steps (the paper's Fashion-MNIST notebook: 15).
        reset: ``hard`` (reset to 0 after a spike, the paper's spikingjelly IF node) or
            ``subtract`` (the project's reset by subtraction).
        freeze_bn_epoch: from this (0-based) training epoch on, every batch norm of both
            networks runs in evaluation mode while training (running statistics frozen, affine
            parameters still trained); the notebook: 1. ``None``: never.
        bn_per_step: the SNN's batch norms normalise each time step's batch on its own (the
            notebook: one call, one running-statistic update per step) instead of the T*B maps of
            all steps at once.
    """

    name = "proxy"
    supported_kinds = frozenset({"feedforward"})
    supported_neurons = frozenset({"if", "lif"})  # IF (leak 1) paired with ReLU

    def __init__(self, T: int, reset: Literal["hard", "subtract"] = "hard",
                 freeze_bn_epoch: int | None = None, bn_per_step: bool = False) -> None:
        super().__init__(T)
        if reset not in RESETS:
            raise ValueError(f"proxy reset must be one of {RESETS}, got {reset!r}")
        if freeze_bn_epoch is not None and (isinstance(freeze_bn_epoch, bool)
                                            or not isinstance(freeze_bn_epoch, int) or freeze_bn_epoch < 0):
            raise ValueError(f"proxy freeze_bn_epoch must be an epoch >= 0 or null, got {freeze_bn_epoch!r} "
                             "(valid: 1 freezes batch norm after the first epoch as the notebook; null: never)")
        self.reset = reset
        self.freeze_bn_epoch = freeze_bn_epoch
        self.bn_per_step = bn_per_step
        self.bn_frozen = False

    def prepare_model(self, model: SpikingNet) -> None:
        """The ANN's running statistics, saved in the model's checkpoints."""
        add_ann_statistics(model)

    def on_train_epoch_start(self, model: SpikingNet, epoch: int) -> None:
        self.bn_frozen = self.freeze_bn_epoch is not None and epoch >= self.freeze_bn_epoch

    def check_model(self, model: SpikingNet) -> None:
        super().check_model(model)
        if any(m.leak_value() != 1.0 for m in model.spiking_layers()):
            raise ValueError("proxy learning pairs IF neurons with ReLU: set model.neuron.leak to 1.0")
        # the ReLU twin has no threshold, so the ANN's gradient gives a learnt Vth nothing
        trained = [n for n, m in model.named_modules()
                   if isinstance(m, SpikingNeuron) and m.config.trainable_threshold]
        if trained:
            raise ValueError(
                f"proxy learning cannot train thresholds (the ReLU twin has none), but layer(s) "
                f"{trained} have trainable ones: set model.neuron.trainable_threshold to false")

    def snn(self, model: SpikingNet, x: Tensor) -> tuple[Tensor, SpikingNeuron | None]:
        """The SNN's output ``[B, classes]`` (no graph): the spike counts of the output layer
        when the model ends in a spiking layer (returned too), else the time mean of its
        read-out."""
        last: dict[str, object] = {}

        def run(layer: SpikingNeuron, inp: Tensor) -> Tensor:
            last["layer"], last["out"] = layer, if_dynamics(layer, inp, self.reset)
            return last["out"]  # type: ignore[return-value]

        steps = per_step_batch_norms(model, self.T, x.shape[0]) if self.bn_per_step else nullcontext()
        with torch.no_grad(), neuron_dynamics(model, run), steps:
            out = model(self.encode(x))
        if last.get("out") is out:  # the output is a spiking layer's spikes: count them
            return out.sum(0), last["layer"]  # type: ignore[return-value]
        return out.mean(0), None

    def ann(self, model: SpikingNet, x: Tensor, output: SpikingNeuron | None = None) -> Tensor:
        """The ReLU twin's output ``[B, classes]`` (with graph): one pass on the static input,
        ``output`` (the spiking output layer) acting as the identity."""
        if x.dim() == 5:
            raise ValueError("proxy learning takes static input (direct encoding), got event frames")
        with as_relu_network(model, output):
            return model(x.unsqueeze(0))[0]

    def forward(self, model: SpikingNet, x: Tensor) -> Tensor:
        """``[1, B, classes]``: the SNN's output in value, the ANN's gradient when training."""
        with frozen_batch_norms(model) if self.bn_frozen else nullcontext():
            c, output = self.snn(model, x)
            if not torch.is_grad_enabled():
                return c.unsqueeze(0)
            y_ann = self.ann(model, x, output)
        return (y_ann + (c - y_ann).detach()).unsqueeze(0)
