"""The gradient-strategy interface: a strategy owns time and decides how gradients flow.

A strategy runs a model over ``T`` steps and returns its per-step outputs; ``SNNModule`` turns
them into a loss. Strategies that need their own backward passes (per-step updates) set
``automatic_optimization = False`` and override ``training_step``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor

from lightning_snn.models.base import SpikingNet
from lightning_snn.registry import Registry

if TYPE_CHECKING:
    from lightning_snn.module import SNNModule


class GradientStrategy(ABC):
    """Base class. ``supported_kinds`` lists the model kinds (``SpikingNet.kind``) it can train."""

    name: ClassVar[str]
    supported_kinds: ClassVar[frozenset[str]]
    automatic_optimization: ClassVar[bool] = True

    def __init__(self, T: int) -> None:
        if isinstance(T, bool) or not isinstance(T, int) or T <= 0:
            raise ValueError(f"number of time steps T must be a positive integer, got {T!r}")
        self.T = T

    def check_model(self, model: SpikingNet) -> None:
        """Fail early, naming both, when this strategy cannot train ``model``."""
        if model.kind not in self.supported_kinds:
            able = [n for n in STRATEGIES.names() if model.kind in STRATEGIES.get(n).supported_kinds]
            raise ValueError(
                f"strategy {self.name!r} cannot train model {type(model).__name__} "
                f"(kind {model.kind!r}); it supports {sorted(self.supported_kinds)}. "
                f"Strategies for {model.kind!r} models: {able}"
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

    def training_step(self, module: "SNNModule", x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Loss and per-step outputs for one batch (automatic optimisation)."""
        out = self.forward(module.net, x)
        return module.loss(out, y), out

    def step_metrics(self) -> dict[str, float]:
        """Diagnostics of the last backward pass (e.g. a solver's residual), logged per step."""
        return {}


STRATEGIES: Registry[GradientStrategy] = Registry("strategy")
