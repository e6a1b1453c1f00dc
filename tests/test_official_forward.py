"""Our paper models against numbers computed once from the official model files, on identical
weights (fixtures under tests/fixtures/, each with a note of where it came from): the per-step
outputs and every spiking layer's spike count.

OTTT's VGG(sWS) and VGG-F at full depth (cfg 'A', 8 sWS convs) on a tiny 8x8 input: the sWS
weight (N - 1 variance), the x2.74 scale, the LIF charge / soft reset, the pooling and the
VGG-F feedback (upsampled last map into the first layer from step 1) all enter the numbers.
OTTT's NF-ResNet (one block per stage, 16x16 input): the NF blocks and the head; SLTT's bottleneck
NF-ResNet (NF-ResNet-50 / -101) the same way.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lightning_snn.layers import ScaledWSConv2d, TraceLinear
from lightning_snn.models import MODELS
from lightning_snn.neurons import NeuronConfig

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def det(shape, k: int, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
    """Deterministic float64 values (no RNG): offset + scale sin(0.7 i + 1.3 k) cos(0.11 i + 0.5 k)."""
    i = torch.arange(math.prod(shape), dtype=torch.float64)
    return (offset + scale * torch.sin(0.7 * i + 1.3 * k) * torch.cos(0.11 * i + 0.5 * k)).reshape(shape)


def run_counting(net: torch.nn.Module, x: torch.Tensor, T: int) -> tuple[torch.Tensor, list[float]]:
    """Outputs of ``net`` on the static image ``x`` for ``T`` steps, and each spiking layer's
    spike count (summed over steps and batch)."""
    counts = [0.0 for _ in net.spiking_layers()]

    def count(j: int):
        def hook(module, inputs, output) -> None:
            counts[j] += float(output.sum())
        return hook

    hooks = [layer.register_forward_hook(count(j)) for j, layer in enumerate(net.spiking_layers())]
    try:
        with torch.no_grad():
            out = net(x.unsqueeze(0).expand(T, *x.shape))
    finally:
        for h in hooks:
            h.remove()
    return out, counts


@pytest.mark.parametrize("name", ["vgg11_ws", "vgg11f_ws"])
def test_ottt_vgg_forward_equals_the_official_code(name):
    ref = json.loads((FIXTURES / "ottt_vgg_forward.json").read_text())[name]
    # the official neuron: OnlineLIFNode(tau 2): v = v (1 - 1/tau) + x, fire at 1, subtract, sigmoid(4)
    neuron = NeuronConfig(threshold=1.0, leak=0.5, surrogate="sigmoid", surrogate_alpha=4.0, detach_reset=True)
    net = MODELS.get(name)((3, 8, 8), 5, neuron=neuron).double().eval()
    convs = [m for m in net.modules() if isinstance(m, ScaledWSConv2d)]
    (fc,) = [m for m in net.modules() if isinstance(m, TraceLinear)]
    assert len(convs) == 8
    with torch.no_grad():
        for k, c in enumerate(convs):
            c.weight.copy_(det(c.weight.shape, k))
            c.bias.copy_(det(c.bias.shape, 100 + k, 0.3, 0.4))
            c.gain.copy_(det(c.gain.shape, 200 + k, 0.5, 1.5))
        fc.weight.copy_(det(fc.weight.shape, 300, 0.05))
        fc.bias.copy_(det(fc.bias.shape, 301, 0.05))
        if name == "vgg11f_ws":
            net.fb_conv.weight.copy_(det(net.fb_conv.weight.shape, 400, 0.05))
            net.fb_conv.bias.zero_()
    out, counts = run_counting(net, det((2, 3, 8, 8), 500), 4)
    # float64 on both sides: the same ops up to summation order (~1e-15 relative); a different
    # variance convention (N vs N - 1: 1.9 % at the first conv) or a flipped spike moves them far more
    torch.testing.assert_close(out, torch.tensor(ref["outputs"], dtype=torch.float64), rtol=1e-9, atol=1e-9)
    assert counts == ref["spike_counts"]


def check_nf_resnet_forward(name: str, neuron: NeuronConfig, convs_expected: int, fixture: str, key: str) -> None:
    """``name`` with one block per stage on the fixture's det() weights (sWS convs in module order,
    block k's skip gain 0.5 + 0.5 sin(k), the fc), T = 3: outputs and spike counts as the fixture's."""
    ref = json.loads((FIXTURES / fixture).read_text())[key]
    net = MODELS.get(name)((3, 16, 16), 5, neuron=neuron, blocks=(1, 1, 1, 1)).double().eval()
    convs = [m for m in net.modules() if isinstance(m, ScaledWSConv2d)]
    assert len(convs) == convs_expected
    fc = net.head[-1][-1]
    with torch.no_grad():
        for k, c in enumerate(convs):
            c.weight.copy_(det(c.weight.shape, k))
            c.bias.copy_(det(c.bias.shape, 100 + k, 0.3, 0.2))
            c.gain.copy_(det(c.gain.shape, 200 + k, 0.5, 1.5))
        for k, b in enumerate(net.blocks):
            b.skipinit_gain.fill_(0.5 + 0.5 * math.sin(k))
        fc.weight.copy_(det(fc.weight.shape, 300, 0.05))
        fc.bias.copy_(det(fc.bias.shape, 301, 0.05))
    out, counts = run_counting(net, det((2, 3, 16, 16), 500, 6.0), 3)
    torch.testing.assert_close(out, torch.tensor(ref["outputs"], dtype=torch.float64), rtol=1e-9, atol=1e-9)
    assert counts == ref["spike_counts"]


def test_ottt_nf_resnet_forward_equals_the_official_code():
    """OTTT's NF-ResNet with one block per stage (the official class at its widths 64-512): sWS
    stem + average pool, x / beta pre-activation, x2.74 spikes, sWS shortcut of the activated
    input, alpha * skipinit gain, and the head that pools the residual stream into the fc."""
    neuron = NeuronConfig(threshold=1.0, leak=0.5, surrogate="sigmoid", surrogate_alpha=4.0, detach_reset=True)
    check_nf_resnet_forward("nf_resnet34", neuron, 12, "ottt_nf_resnet_forward.json", "nf_resnet")


def test_sltt_nf_resnet_bottleneck_forward_equals_the_official_code():
    """SLTT's NF-ResNet-50 / -101 block (bottleneck: conv1x1 -> conv3x3 with the stride -> conv1x1
    to 4x the width, a spike and x2.74 before each, the shortcut from the first spikes), one block
    per stage at the official widths, against the official class on identical weights."""
    neuron = NeuronConfig(threshold=1.0, leak=1 - 1 / 1.1, surrogate="sigmoid", surrogate_alpha=4.0)
    check_nf_resnet_forward("nf_resnet50", neuron, 17, "sltt_nf_resnet_bottleneck_forward.json",
                            "nf_resnet_bottleneck")
