"""Surrogate back-propagation through time: unroll all T steps and keep the whole graph.

Exact gradient of the unrolled network with the Heaviside derivative replaced by a surrogate
(``NeuronConfig.surrogate``); memory grows linearly with T.
"""

from __future__ import annotations

from torch import Tensor

from lightning_snn.models.base import SpikingNet
from lightning_snn.strategies.base import STRATEGIES, GradientStrategy


@STRATEGIES.register("bptt")
class BPTT(GradientStrategy):
    name = "bptt"
    supported_kinds = frozenset({"feedforward", "feedback"})

    def forward(self, model: SpikingNet, x: Tensor) -> Tensor:
        return model(self.encode(x))
