"""The model interface every gradient strategy relies on, and the model registry."""

from __future__ import annotations

import typing
from typing import ClassVar

from torch import Tensor, nn

from lightning_snn.neurons import SpikingNeuron, spiking_layers

if typing.TYPE_CHECKING:
    from lightning_snn.models.init import Initialisation
from lightning_snn.registry import Registry


class SpikingNet(nn.Module):
    """A spiking network written once, run through time by a gradient strategy.

    ``kind`` tells strategies what they can do with it: ``feedforward``, ``feedback`` (an
    equilibrium model, IDE) or ``recurrent`` (a layer at step t reads a later layer at step t-1,
    so it runs step by step, e.g. VGG-F).
    ``forward`` maps an input sequence ``[T, B, ...]`` to per-step outputs ``[T, B, classes]``.
    """

    kind: ClassVar[str] = "feedforward"
    # how the constructor initialised the parameters (``lightning_snn.models.init``); set by
    # ``Initialisation.apply``, so a model that declares none keeps ``None`` and fails the test
    initialisation: Initialisation | None = None

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def spiking_layers(self) -> list[SpikingNeuron]:
        return spiking_layers(self)


MODELS: Registry[SpikingNet] = Registry("model")


def model_class(name: str) -> type[SpikingNet] | None:
    """The class model ``name`` builds (a registered class, or the annotated return type of a
    registered factory) without building it; ``None`` if that is not known (also for the base
    class, whose instances may set their own ``kind``, e.g. an imported NIR graph)."""
    factory = MODELS.get(name)
    if not isinstance(factory, type):
        try:
            factory = typing.get_type_hints(factory).get("return")
        except Exception:  # annotations that do not resolve here
            return None
    ok = isinstance(factory, type) and issubclass(factory, SpikingNet) and factory is not SpikingNet
    return factory if ok else None
