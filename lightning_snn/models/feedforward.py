"""Feed-forward SNNs: an MLP and a small conv net for MNIST-sized input, VGG-11 for CIFAR.

Every hidden unit is a spiking neuron; the read-out is a non-spiking linear layer whose per-step
output is averaged over time by the loss (the usual "membrane read-out").
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lightning_snn.layers import TimeDistributed, TraceConv2d, TraceLinear
from lightning_snn.models.base import MODELS, SpikingNet
from lightning_snn.models.init import DSR_VGG, PYTORCH_DEFAULT, SLTT_VGG
from lightning_snn.neurons import NeuronConfig, build_neuron


class _Sequential(SpikingNet):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@MODELS.register("mlp")
class SpikingMLP(_Sequential):
    """Flatten -> [Linear -> BN -> spiking layer] x len(hidden) -> Linear read-out."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        neuron: NeuronConfig | None = None,
        hidden: Sequence[int] = (512,),
        batch_norm: bool = True,
    ) -> None:
        layers: list[nn.Module] = []
        width = _numel(input_shape)
        for i, h in enumerate(hidden):
            ops: list[nn.Module] = [nn.Flatten()] if i == 0 else []
            ops += [TraceLinear(width, h, bias=not batch_norm)]
            ops += [nn.BatchNorm1d(h)] if batch_norm else []
            layers += [TimeDistributed(*ops), build_neuron(neuron)]
            width = h
        head: list[nn.Module] = [nn.Flatten()] if not hidden else []
        layers.append(TimeDistributed(*head, TraceLinear(width, num_classes)))
        super().__init__(layers)
        PYTORCH_DEFAULT.apply(self)  # a project model: no official code


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [TraceConv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)]


def _conv_stack(
    in_channels: int, cfg: Sequence[int | str], neuron: NeuronConfig | None, dropout: float = 0.0
) -> tuple[list[nn.Module], int, int]:
    """conv3x3-BN-spike blocks; ``"M"`` is a 2x2 average pool (spikes -> rates, no max of spikes)."""
    layers: list[nn.Module] = []
    c, pools = in_channels, 0
    for v in cfg:
        if v == "M":
            layers.append(TimeDistributed(nn.AvgPool2d(2)))
            pools += 1
        else:
            layers += [TimeDistributed(*_conv_bn(c, int(v))), build_neuron(neuron)]
            layers += [TimeDistributed(nn.Dropout(dropout))] if dropout > 0 else []
            c = int(v)
    return layers, c, pools


@MODELS.register("convnet")
class SpikingConvNet(_Sequential):
    """Small conv SNN for MNIST-sized images: conv blocks, then a spiking FC layer, then read-out."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        neuron: NeuronConfig | None = None,
        channels: Sequence[int | str] = (32, "M", 64, "M"),
        hidden: int = 256,
    ) -> None:
        c_in, h, w = input_shape
        layers, c, pools = _conv_stack(c_in, channels, neuron)
        flat = c * (h >> pools) * (w >> pools)
        layers += [
            TimeDistributed(nn.Flatten(), TraceLinear(flat, hidden, bias=False), nn.BatchNorm1d(hidden)),
            build_neuron(neuron),
            TimeDistributed(TraceLinear(hidden, num_classes)),
        ]
        super().__init__(layers)
        PYTORCH_DEFAULT.apply(self)  # a project model: no official code


VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


@MODELS.register("vgg11")
class SpikingVGG11(_Sequential):
    """VGG-11 with batch norm and average pooling, global pool, linear read-out (32x32 input).

    ``pool_size`` 7 with ``head="spiking"`` and ``dropout`` 0.1 is DSR's VGG-11 for DVS frames
    (registered as ``vgg11_dvs``): adaptive 7x7 pool, Linear -> BN1d -> spiking layer whose rate
    is the class score.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        neuron: NeuronConfig | None = None,
        width: float = 1.0,
        pool_size: int = 1,
        head: str = "linear",
        dropout: float = 0.0,
    ) -> None:
        cfg = [v if v == "M" else max(1, int(v * width)) for v in VGG11]
        layers, c, _ = _conv_stack(input_shape[0], cfg, neuron, dropout)
        layers.append(TimeDistributed(nn.AdaptiveAvgPool2d(pool_size), nn.Flatten()))
        layers += readout(c * pool_size**2, num_classes, neuron, head)
        super().__init__(layers)
        SLTT_VGG.apply(self)  # qymeng94/SLTT models/spiking_vgg_bn.py (as OTTT's and DSR's VGGs)


@MODELS.register("vgg11_dvs")
def vgg11_dvs(
    input_shape: Sequence[int],
    num_classes: int,
    neuron: NeuronConfig | None = None,
    width: float = 1.0,
) -> SpikingVGG11:
    """DSR's VGG-11 for event frames (e.g. 2x48x48 DVS-CIFAR10): 7x7 pool, spiking head."""
    net = SpikingVGG11(input_shape, num_classes, neuron, width, pool_size=7, head="spiking", dropout=0.1)
    DSR_VGG.apply(net)  # qymeng94/DSR cifar/modules/vgg.py
    return net


def readout(width: int, num_classes: int, neuron: NeuronConfig | None, head: str) -> list[nn.Module]:
    """``linear``: membrane read-out (per-step scores); ``spiking``: Linear -> BN1d -> spiking
    layer, the (weighted) firing rate is the class score (DSR)."""
    if head == "linear":
        return [TimeDistributed(TraceLinear(width, num_classes))]
    if head == "spiking":
        return [TimeDistributed(TraceLinear(width, num_classes), nn.BatchNorm1d(num_classes)), build_neuron(neuron)]
    raise ValueError(f"head must be 'linear' or 'spiking', got {head!r}")
