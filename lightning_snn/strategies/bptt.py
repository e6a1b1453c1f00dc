"""Surrogate back-propagation through time: unroll all T steps and keep the whole graph.

Exact gradient of the unrolled network with the Heaviside derivative replaced by a surrogate
(``NeuronConfig.surrogate``); memory grows linearly with T. A ``recurrent`` model (VGG-F) keeps its
feedback state in the graph, so the gradient also flows back through the feedback across steps.
Every neuron kind: the graph runs through the kind's own charge / fire / reset hooks.
"""

from __future__ import annotations

from torch import Tensor

from lightning_snn.models.base import SpikingNet
from lightning_snn.strategies.base import STRATEGIES, GradientStrategy


@STRATEGIES.register("bptt")
class BPTT(GradientStrategy):
    supported_kinds = frozenset({"feedforward", "feedback", "recurrent"})

    def forward(self, model: SpikingNet, x: Tensor) -> Tensor:
        return model(self.encode(x))
