"""Online training through time (OTTT): per-step forward and backward, constant memory in T.

At every time step t the network runs one step from neuron state detached from the past (and any
other state carried across steps, e.g. the feedback delay of a ``recurrent`` model such as VGG-F,
whose feedback synapse then takes its gradient from a trace like every other); each
trace-aware synaptic layer keeps a presynaptic trace a[t] = lambda * a[t-1] + s[t] (no gradient);
the instantaneous loss L[t] is back-propagated through the layers at step t only (surrogate
derivative at each neuron), and a layer's weight gradient is the three-factor form
dW += g_I[t] a[t]^T (postsynaptic error x trace, :class:`lightning_snn.layers.TraceLinear`).

``ottt_a`` accumulates the T per-step gradients and takes one optimiser step per batch (under DDP
the gradients are all-reduced once, at the last step); ``ottt_o`` steps the optimiser at every time
step. Batch-norm statistics, where a model has them, span a single step (B samples).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_snn.layers import TraceSynapse
from lightning_snn.models.base import SpikingNet
from lightning_snn.neurons import LIF, detach_states, neuron_dynamics, reset_states
from lightning_snn.strategies.base import STRATEGIES, GradientStrategy

if TYPE_CHECKING:
    from lightning_snn.module import SNNModule


def online_step(layer: LIF, x: Tensor) -> Tensor:
    """Neuron dynamics for OTTT: step from the stored state, detached so no graph spans steps."""
    out = []
    for t in range(x.shape[0]):
        layer.detach_state()  # u[t] = lambda * sg(u[t-1]) + I[t]
        out.append(layer.step(x[t]))
    return torch.stack(out)


def traced_synapses(model: nn.Module, trace_input: bool = False) -> list[tuple[TraceSynapse, float]]:
    """Trace-aware synaptic layers and the leak of their trace.

    A layer's trace uses the leak of the next spiking layer in registration order (its
    postsynaptic neuron: du[t]/dW = sum_tau lambda^(t-tau) s[tau] without reset), or of the
    previous one for a read-out. Layers before the first spiking layer see the analogue input and
    are left plain unless ``trace_input``. A synapse whose postsynaptic neuron comes before it in
    registration order (a feedback synapse into an earlier layer) names it as ``postsynaptic``.
    """
    mods = list(model.modules())
    lifs = [i for i, m in enumerate(mods) if isinstance(m, LIF)]
    if not lifs:
        return []
    out = []
    for i, m in enumerate(mods):
        if not isinstance(m, TraceSynapse):
            continue
        post = getattr(m, "postsynaptic", None)
        if post is not None:  # named by the model: it sees spikes, whatever its position
            out.append((m, post.leak))
            continue
        if i < lifs[0] and not trace_input:
            continue
        nxt = [j for j in lifs if j > i]
        out.append((m, mods[nxt[0] if nxt else lifs[-1]].leak))  # type: ignore[union-attr]
    return out


class OTTT(GradientStrategy):
    """Shared machinery of ``ottt_a`` / ``ottt_o``.

    Args:
        T: time steps.
        loss_lambda: weight of the MSE-to-one-hot term of the per-step loss
            L[t] = ((1 - loss_lambda) CE(o[t], y) + loss_lambda MSE(o[t], onehot(y))) / T.
        trace_input: also give the first synaptic layer (which sees the analogue input) a trace;
            the official models leave it plain.
    """

    supported_kinds = frozenset({"feedforward", "recurrent"})
    automatic_optimization = False
    online_update: ClassVar[bool]

    def __init__(self, T: int, loss_lambda: float = 0.05, trace_input: bool = False) -> None:
        super().__init__(T)
        if not 0.0 <= loss_lambda <= 1.0:
            raise ValueError(f"loss_lambda must be in [0, 1], got {loss_lambda}")
        self.loss_lambda = loss_lambda
        self.trace_input = trace_input

    def check_model(self, model: SpikingNet) -> None:
        super().check_model(model)
        seen_lif, plain = False, []
        for name, m in model.named_modules():
            if isinstance(m, LIF):
                seen_lif = True
            elif seen_lif and isinstance(m, (nn.Linear, nn.Conv2d)) and not isinstance(m, TraceSynapse):
                plain.append(name)
        if plain:
            raise ValueError(
                f"strategy {self.name!r} needs trace-aware synapses after spiking layers "
                f"(lightning_snn.layers.TraceLinear / TraceConv2d); {type(model).__name__} has plain "
                f"layers {plain}"
            )

    @contextmanager
    def online(self, model: nn.Module, traces: bool) -> Iterator[None]:
        """Fresh state, per-step neuron dynamics and (with ``traces``) trace gradients inside."""
        layers = traced_synapses(model, self.trace_input) if traces else []
        reset_states(model)
        for layer, leak in layers:
            layer.reset_trace()
            layer.trace_leak = leak
        try:
            with neuron_dynamics(model, online_step):
                yield
        finally:
            for layer, _ in layers:
                layer.trace_leak = None
                layer.reset_trace()
            reset_states(model)

    def step_loss(self, out: Tensor, y: Tensor) -> Tensor:
        """(1 - loss_lambda) CE(o[t], y) + loss_lambda MSE(o[t], onehot(y)), before the 1/T."""
        loss = F.cross_entropy(out, y)
        if self.loss_lambda > 0:
            onehot = F.one_hot(y, out.shape[-1]).to(out.dtype)
            loss = (1.0 - self.loss_lambda) * loss + self.loss_lambda * F.mse_loss(out, onehot)
        return loss

    def forward(self, model: SpikingNet, x: Tensor) -> Tensor:
        """Per-step outputs ``[T, B, classes]``. In eval mode the values of the online run equal
        those of the plain multi-step forward (no state is detached, batch norm uses running
        statistics), which folds time into the batch and is cheaper: that is used instead."""
        xs = self.encode(x)
        if not model.training:
            reset_states(model)
            return model(xs)
        with self.online(model, traces=False):
            outs = []
            for t in range(xs.shape[0]):
                detach_states(model)  # no graph across steps (a recurrent model's delays too)
                outs.append(model(xs[t : t + 1]))
            return torch.cat(outs)

    def run(
        self,
        model: SpikingNet,
        x: Tensor,
        y: Tensor,
        backward: Callable[[Tensor, bool], None] = lambda loss, last: loss.backward(),
    ) -> tuple[Tensor, Tensor]:
        """Run T online steps, calling ``backward(L[t] / T, is_last_step)`` after each.

        Returns the summed loss (detached) and the per-step outputs ``[T, B, classes]``.
        With the default ``backward`` the parameters' ``.grad`` end as the OTTT_A gradient.
        """
        xs = self.encode(x)
        T = xs.shape[0]
        outs, total = [], torch.zeros((), device=x.device)
        with self.online(model, traces=True):
            for t in range(T):
                detach_states(model)  # no graph across steps (a recurrent model's delays too)
                out = model(xs[t : t + 1])[0]
                loss = self.step_loss(out, y) / T
                backward(loss, t == T - 1)
                outs.append(out.detach())
                total = total + loss.detach()
        return total, torch.stack(outs)

    def training_step(self, module: "SNNModule", x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        opt = module.optimizers()
        scheds = module.lr_schedulers()
        wrapped = module.trainer.model  # the DDP wrapper under DDP, else the module itself
        no_sync = getattr(wrapped, "no_sync", None)

        def backward(loss: Tensor, last: bool) -> None:
            if self.online_update:  # OTTT_O: an optimiser step at every time step
                opt.zero_grad()
                module.manual_backward(loss)
                opt.step()
            else:  # OTTT_A: accumulate; all-reduce only with the last step's backward
                with nullcontext() if last or no_sync is None else no_sync():
                    module.manual_backward(loss)

        if not self.online_update:
            opt.zero_grad()
        loss, outs = self.run(module.net, x, y, backward)
        if not self.online_update:
            opt.step()
        for s in scheds if isinstance(scheds, list) else [scheds] if scheds is not None else []:
            s.step()  # one schedule step per batch, for both variants
        return loss, outs


@STRATEGIES.register("ottt_a")
class OTTTA(OTTT):
    """OTTT_A: accumulate the T per-step gradients, one optimiser step per batch."""

    name = "ottt_a"
    online_update = False


@STRATEGIES.register("ottt_o")
class OTTTO(OTTT):
    """OTTT_O: an optimiser step at every time step."""

    name = "ottt_o"
    online_update = True
