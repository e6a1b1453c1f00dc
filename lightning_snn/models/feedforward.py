"""Feed-forward SNNs: an MLP and a small conv net for MNIST-sized input, VGG-11 for CIFAR.

Every hidden unit is a spiking neuron; the read-out is a non-spiking linear layer whose per-step
output is averaged over time by the loss (the usual "membrane read-out").
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lightning_snn.layers import TimeDistributed, TraceConv2d, TraceLinear
from lightning_snn.models.base import MODELS, SpikingNet
from lightning_snn.neurons import LIF, NeuronConfig


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
    """Flatten -> [Linear -> BN -> LIF] x len(hidden) -> Linear read-out."""

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
            layers += [TimeDistributed(*ops), LIF(neuron)]
            width = h
        head: list[nn.Module] = [nn.Flatten()] if not hidden else []
        layers.append(TimeDistributed(*head, TraceLinear(width, num_classes)))
        super().__init__(layers)


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [TraceConv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)]


def _conv_stack(
    in_channels: int, cfg: Sequence[int | str], neuron: NeuronConfig | None
) -> tuple[list[nn.Module], int, int]:
    """conv3x3-BN-LIF blocks; ``"M"`` is a 2x2 average pool (spikes -> rates, no max of spikes)."""
    layers: list[nn.Module] = []
    c, pools = in_channels, 0
    for v in cfg:
        if v == "M":
            layers.append(TimeDistributed(nn.AvgPool2d(2)))
            pools += 1
        else:
            layers += [TimeDistributed(*_conv_bn(c, int(v))), LIF(neuron)]
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
            LIF(neuron),
            TimeDistributed(TraceLinear(hidden, num_classes)),
        ]
        super().__init__(layers)


VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


@MODELS.register("vgg11")
class SpikingVGG11(_Sequential):
    """VGG-11 with batch norm and average pooling for 32x32 input, global pool, linear read-out."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        neuron: NeuronConfig | None = None,
        width: float = 1.0,
    ) -> None:
        cfg = [v if v == "M" else max(1, int(v * width)) for v in VGG11]
        layers, c, _ = _conv_stack(input_shape[0], cfg, neuron)
        layers.append(
            TimeDistributed(nn.AdaptiveAvgPool2d(1), nn.Flatten(), TraceLinear(c, num_classes))
        )
        super().__init__(layers)
