"""Online strategies: one time step at a time, a backward pass per step, constant memory in T.

:class:`OnlineStrategy` owns the per-step loop. At every step t the network runs one step from
state detached from the past (neurons, and any other state carried across steps such as the
feedback delay of a ``recurrent`` model), the step's loss ``L[t] = l(o[t], y) / T`` (the one loss
of ``lightning_snn.loss``) is handed to a ``backward(L[t], last_step)`` callable, so the graph of
one step is freed before the next. Whoever calls it decides what a backward is (``SNNModule``:
manual backward, DDP ``no_sync`` except at the last step, optimiser steps). Batch-norm statistics,
where a model has them, span a single step (B samples).

A subclass only states what differs: ``update_every_step`` (an optimiser step at every time step
rather than once per batch), through :meth:`OnlineStrategy.online_run`, extra per-run set-up
(OTTT's presynaptic traces), and through :meth:`OnlineStrategy.backward_steps`, which steps
back-propagate (SLTT-K: K random ones; the others run forward without a graph).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
import torch
from torch import Tensor, nn

from lightning_snn.loss import SpikingLoss
from lightning_snn.models.base import SpikingNet
from lightning_snn.neurons import SpikingNeuron, detach_states, neuron_dynamics, reset_states
from lightning_snn.strategies.base import Backward, GradientStrategy, plain_backward


def online_step(layer: SpikingNeuron, x: Tensor) -> Tensor:
    """Neuron dynamics of an online run: step from the stored state, detached so no graph spans
    steps: u[t] = lambda * sg(u[t-1]) + I[t]."""
    out = []
    for t in range(x.shape[0]):
        layer.detach_state()
        out.append(layer.step(x[t]))
    return torch.stack(out)


class OnlineStrategy(GradientStrategy):
    """Base of per-step strategies: the loop over time, per-step losses and backward calls.

    ``update_every_step``: the caller's ``backward`` steps the optimiser at every time step
    (``True``) or the gradients of the T steps are accumulated into one step per batch.
    """

    supported_kinds = frozenset({"feedforward", "recurrent"})
    per_step_loss = True
    online = True

    @contextmanager
    def online_run(self, model: nn.Module, training: bool) -> Iterator[None]:
        """Fresh state and per-step neuron dynamics inside (``training``: a run with backward
        passes); state back at rest after."""
        reset_states(model)
        try:
            with neuron_dynamics(model, online_step):
                yield
        finally:
            reset_states(model)

    def backward_steps(self, T: int) -> list[int]:
        """The time steps of one training step that back-propagate, in increasing order (all of
        them here). The others still run forward, under ``torch.no_grad``, and update the state."""
        return list(range(T))

    def forward(self, model: SpikingNet, x: Tensor) -> Tensor:
        """Per-step outputs ``[T, B, classes]``. In eval mode the values of the online run equal
        those of the plain multi-step forward (no state is detached, batch norm uses running
        statistics), which folds time into the batch and is cheaper: that is used instead."""
        xs = self.encode(x)
        if not model.training:
            reset_states(model)
            return model(xs)
        with self.online_run(model, training=False):
            outs = []
            for t in range(xs.shape[0]):
                detach_states(model)  # no graph across steps (a recurrent model's delays too)
                outs.append(model(xs[t : t + 1]))
            return torch.cat(outs)

    def train_step(
        self, model: SpikingNet, x: Tensor, y: Tensor, loss: SpikingLoss | None = None,
        backward: Backward | None = plain_backward,
    ) -> tuple[Tensor, Tensor]:
        """Run T online steps, calling ``backward(L[t], last_step)`` after each step of
        :meth:`backward_steps` (``last_step``: the last of those, where DDP all-reduces).

        Returns the summed loss (detached) and the per-step outputs ``[T, B, classes]``. With the
        default ``backward`` the parameters' ``.grad`` end as the accumulated gradient.
        """
        if backward is None:
            raise ValueError(f"strategy {self.name!r} back-propagates every time step itself: "
                             "it needs a backward(loss, last_step) callable")
        loss = loss or SpikingLoss.for_strategy(self)
        xs = self.encode(x)
        T = xs.shape[0]
        steps = set(self.backward_steps(T))
        last = max(steps)
        outs, total = [], torch.zeros((), device=x.device)
        with self.online_run(model, training=True):
            for t in range(T):
                detach_states(model)  # no graph across steps (a recurrent model's delays too)
                with nullcontext() if t in steps else torch.no_grad():
                    out = model(xs[t : t + 1])[0]
                    step_loss = loss.step(out, y, T)
                if t in steps:
                    backward(step_loss, t == last)
                outs.append(out.detach())
                total = total + step_loss.detach()
        return total, torch.stack(outs)
