"""The ANN form of a feed-forward network: the first stage of hybrid (ANN -> SNN) training.

The same module and parameters, run once on the static input with every hidden spiking layer
replaced by an activation (a :func:`lightning_snn.neurons.neuron_dynamics` context, so parameter
names and shapes are the SNN's and ``fit --init_from`` carries the trained weights, batch-norm
statistics included, into the SNN run unchanged):

- ``relu``: ``max(x, 0)``, the activation of DSR's ImageNet ANN (``imagenet/`` of qymeng94/DSR:
  a PreAct-ResNet with ReLU, whose post-ReLU activations then calibrate the SNN's thresholds);
- ``clamp``: ``clamp(x, 0, Vth)``, the rate an IF neuron with threshold Vth and reset by
  subtraction reaches (spike count x Vth / T), the map IDE / DSR differentiate.

A network whose output is a spiking layer (the firing rate read as class scores, DSR's
``Linear -> BN -> neuron`` head) has that layer as the identity in the ANN, as an ANN's logits
are. The output is ``[1, B, classes]``: one step, whatever the module's ``T``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_snn.models.base import SpikingNet
from lightning_snn.neurons import SpikingNeuron, neuron_dynamics
from lightning_snn.strategies.base import STRATEGIES, GradientStrategy

ACTIVATIONS = ("relu", "clamp")


def output_layer(model: SpikingNet, x: Tensor) -> SpikingNeuron | None:
    """The spiking layer whose output is the model's output (``None``: a non-spiking read-out),
    found by one pass without a graph on the first sample of ``x``."""
    last: dict[str, object] = {}

    def probe(layer: SpikingNeuron, inp: Tensor) -> Tensor:
        last["layer"], last["out"] = layer, F.relu(inp)
        return last["out"]  # type: ignore[return-value]

    modes = [(m, m.training) for m in model.modules()]
    model.eval()  # one sample: batch norms on their running statistics, which the probe leaves alone
    try:
        with torch.no_grad(), neuron_dynamics(model, probe):
            out = model(x[:1].unsqueeze(0))
    finally:
        for m, training in modes:
            m.training = training
    return last["layer"] if last.get("out") is out else None  # type: ignore[return-value]


@STRATEGIES.register("ann")
class ANN(GradientStrategy):
    """Train (and evaluate) a feed-forward network as an ANN.

    Args:
        T: unused by the ANN's single pass (kept for the interface; configs set 1).
        activation: ``relu`` or ``clamp`` (see the module docstring).
    """

    supported_kinds = frozenset({"feedforward"})

    def __init__(self, T: int = 1, activation: Literal["relu", "clamp"] = "relu") -> None:
        super().__init__(T)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)} "
                             f"(valid: {', '.join(ACTIVATIONS)})")
        self.activation = activation
        self._output: dict[int, SpikingNeuron | None] = {}

    def forward(self, model: SpikingNet, x: Tensor) -> Tensor:
        if x.dim() == 5:
            raise ValueError("the ANN form takes static input (one image per sample), got event frames "
                             "(valid: an image data set)")
        if id(model) not in self._output:
            self._output[id(model)] = output_layer(model, x)
        output = self._output[id(model)]

        def act(layer: SpikingNeuron, inp: Tensor) -> Tensor:
            if layer is output:
                return inp
            if self.activation == "relu":
                return F.relu(inp)
            return torch.minimum(F.relu(inp), layer.vth())

        with neuron_dynamics(model, act):
            return model(x.unsqueeze(0))
