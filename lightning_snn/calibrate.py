"""Threshold calibration of DSR's hybrid recipe (qymeng94/DSR, ``imagenet/main.py`` lines 279-291,
``preresnet_cal_Vth.py`` lines 190-195): after the ANN's weights are loaded into the SNN, each
spiking layer's threshold is set to the 99.9th percentile of the post-ReLU activation it receives
in the ANN over 5 validation batches.

The percentile is over every element of the layer's activation in those batches (zeros
included), interpolated linearly between order statistics as ``torch.quantile`` does; only the
largest values of each batch are kept, enough to hold that order statistic, so memory does not
grow with the activation maps (ImageNet's are ~10^8 elements per layer).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_snn.models.base import SpikingNet
from lightning_snn.neurons import SpikingNeuron, neuron_dynamics, spiking_layers


def _top_quantile(tops: list[Tensor], total: int, q: float) -> float:
    """The ``q`` quantile (``torch.quantile``'s linear interpolation) of ``total`` values of which
    ``tops`` holds (at least) the largest ``ceil((1 - q) (total - 1)) + 1``."""
    values = torch.cat(tops).sort(descending=True).values
    pos = (1.0 - q) * (total - 1)  # rank from the top of position q (total - 1) from the bottom
    lo, hi = math.floor(pos), math.ceil(pos)
    a, b = float(values[lo]), float(values[hi])
    return b + (a - b) * (hi - pos)  # between the hi-th and lo-th largest


def calibrate_thresholds(model: SpikingNet, batches: Iterable[Tensor], num_batches: int = 5,
                         percentile: float = 99.9) -> dict[str, float]:
    """Set every spiking layer's threshold to ``percentile`` of its post-ReLU ANN activation over
    ``num_batches`` batches; returns the new thresholds by layer name. IF neurons only (the
    official ImageNet recipe; its LIF variant also scales by the time step, which this project's
    neuron does not have)."""
    layers = spiking_layers(model)
    leaky = [type(m).__name__ for m in layers if m.leak_value() != 1.0]
    if leaky:
        raise ValueError(f"threshold calibration sets IF thresholds (leak 1), but the network has leaky "
                         f"layers ({leaky[0]}) (valid: model.neuron.leak 1.0)")
    if not 0.0 < percentile < 100.0:
        raise ValueError(f"calibration percentile {percentile} (valid: 0 < p < 100)")
    q = percentile / 100.0
    xs = []
    for i, x in enumerate(batches):
        if i >= num_batches:
            break
        xs.append(x)
    if not xs:
        raise ValueError("threshold calibration got no batches (valid: a data module with a validation split)")
    total = {id(m): 0 for m in layers}
    samples = sum(len(x) for x in xs)
    tops: dict[int, list[Tensor]] = {id(m): [] for m in layers}

    def record(layer: SpikingNeuron, inp: Tensor) -> Tensor:
        a = F.relu(inp)
        flat = a.detach().flatten().float()
        tops[id(layer)].append(flat)  # reduced to the batch's top values below
        total[id(layer)] += flat.numel()
        return a

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x in xs:
                with neuron_dynamics(model, record):
                    model(x.unsqueeze(0))
                for m in layers:  # keep the values that can hold the quantile over all the batches
                    last = tops[id(m)][-1]
                    everything = last.numel() // len(x) * samples  # the layer's values in all batches
                    keep = min(last.numel(), math.ceil((1.0 - q) * (everything - 1)) + 2)
                    tops[id(m)][-1] = last.topk(keep).values
    finally:
        model.train(was_training)
    out = {}
    names = {id(m): n for n, m in model.named_modules() if isinstance(m, SpikingNeuron)}
    for m in layers:
        value = _top_quantile(tops[id(m)], total[id(m)], q)
        with torch.no_grad():
            m.threshold.fill_(max(value, m.config.threshold_floor))
        out[names[id(m)]] = float(m.threshold)
    return out
