"""The gradient-strategy interface: a strategy owns time and decides how gradients flow.

Strategies know nothing of Lightning. A *whole-sequence* strategy (BPTT, DSR, IDE) gives
``forward(model, x)`` -- per-step outputs whose autograd graph carries its gradient rule -- and the
caller back-propagates one loss. An *online* strategy (:class:`lightning_snn.strategies.online.
OnlineStrategy`, OTTT) owns the per-step loop and calls a ``backward(loss, last_step)`` callable
handed to it after every step. :meth:`GradientStrategy.train_step` is the one entry point for a
training step of either shape; ``SNNModule`` hands it its loss and, for online strategies, a
``backward`` that owns optimisers, DDP ``no_sync`` and ``manual_backward``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

from torch import Tensor

from lightning_snn.loss import SpikingLoss
from lightning_snn.models.base import SpikingNet
from lightning_snn.neurons import NEURONS, spiking_layers
from lightning_snn.registry import Registry

Backward = Callable[[Tensor, bool], None]
"""``backward(loss, last_step)``: back-propagate ``loss``; ``last_step`` is true for the last
backward of a training step (e.g. the one whose gradients DDP all-reduces)."""


def plain_backward(loss: Tensor, last_step: bool) -> None:
    """Accumulate ``loss``'s gradient into ``.grad`` (the default outside a trainer)."""
    loss.backward()


class GradientStrategy(ABC):
    """Base class. Its registry name is ``name`` (set by ``@STRATEGIES.register``).

    ``supported_kinds``: the model kinds (``SpikingNet.kind``) it can train;
    ``supported_neurons``: the neuron kinds (``NeuronConfig.kind``) it can differentiate;
    ``per_step_loss``: the loss form it can honour (``None``: either; see ``lightning_snn.loss``);
    ``online``: it runs its own per-step backward passes (manual optimisation);
    ``update_every_step``: (online) the optimiser steps at every time step, not once per batch.
    """

    name: ClassVar[str]
    supported_kinds: ClassVar[frozenset[str]]
    supported_neurons: ClassVar[frozenset[str]] = frozenset({"if", "lif", "plif"})
    per_step_loss: ClassVar[bool | None] = None
    online: ClassVar[bool] = False
    update_every_step: ClassVar[bool] = False

    def __init__(self, T: int) -> None:
        if isinstance(T, bool) or not isinstance(T, int) or T <= 0:
            raise ValueError(f"number of time steps T must be a positive integer, got {T!r}")
        self.T = T

    @classmethod
    def check_kind(cls, model_name: str, kind: str) -> None:
        """Fail, naming both, when this strategy cannot train a model of ``kind`` (callable on the
        class, before the model is built)."""
        if kind not in cls.supported_kinds:
            able = [n for n in STRATEGIES.names() if kind in STRATEGIES.get(n).supported_kinds]
            raise ValueError(
                f"strategy {cls.name!r} cannot train model {model_name} (kind {kind!r}); it supports "
                f"{sorted(cls.supported_kinds)}. Strategies for {kind!r} models: {able}"
            )

    def check_model(self, model: SpikingNet) -> None:
        """Fail early, naming both, when this strategy cannot train ``model``."""
        self.check_kind(type(model).__name__, model.kind)
        kinds = sorted({m.kind for m in spiking_layers(model)} - self.supported_neurons)
        if kinds:
            able = [n for n in STRATEGIES.names()
                    if set(kinds) <= STRATEGIES.get(n).supported_neurons]
            raise ValueError(
                f"strategy {self.name!r} cannot train neuron kind {kinds[0]!r} (model "
                f"{type(model).__name__}); it supports neuron kinds "
                f"{sorted(self.supported_neurons & set(NEURONS.names()))}. Strategies for "
                f"{kinds[0]!r} neurons: {able}"
            )

    def encode(self, x: Tensor) -> Tensor:
        """Input -> ``[T, B, ...]``: a static batch is repeated (direct encoding, no copy);
        a ``[B, T, C, H, W]`` event-frame batch is made time-major."""
        if x.dim() == 5:
            if x.shape[1] != self.T:
                raise ValueError(f"event input has {x.shape[1]} frames but T={self.T}")
            return x.transpose(0, 1)
        return x.unsqueeze(0).expand(self.T, *x.shape)

    @abstractmethod
    def forward(self, model: SpikingNet, x: Tensor) -> Tensor:
        """Run ``model`` on input batch ``x``; return outputs ``[T', B, classes]``."""

    def train_step(
        self, model: SpikingNet, x: Tensor, y: Tensor, loss: SpikingLoss | None = None,
        backward: Backward | None = plain_backward,
    ) -> tuple[Tensor, Tensor]:
        """One training step on batch ``(x, y)``: the loss and the per-step outputs.

        A whole-sequence strategy computes ``loss`` of ``forward`` and calls ``backward(loss,
        True)`` once; with ``backward=None`` it returns the loss with its graph instead (for a
        trainer that back-propagates it, Lightning's automatic optimisation). ``loss`` defaults to
        :meth:`SpikingLoss.for_strategy` (cross-entropy).
        """
        loss = loss or SpikingLoss.for_strategy(self)
        out = self.forward(model, x)
        value = loss(out, y)
        if backward is None:
            return value, out
        backward(value, True)
        return value.detach(), out.detach()

    def step_metrics(self) -> dict[str, float]:
        """Diagnostics of the last backward pass (e.g. a solver's residual), logged per step."""
        return {}

    def prepare_model(self, model: SpikingNet) -> None:
        """Add the state this strategy keeps in ``model`` (buffers saved in its checkpoints);
        called once, after :meth:`check_model`. Default: none."""

    def on_train_epoch_start(self, model: SpikingNet, epoch: int) -> None:
        """Called at the start of every training epoch (0-based ``epoch``, also on resume)."""


STRATEGIES: Registry[GradientStrategy] = Registry("strategy", name_attr="name")
