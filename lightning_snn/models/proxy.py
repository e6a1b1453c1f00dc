"""The networks of proxy learning (Kheradpisheh et al., IEEE Access 2022): conv-BN-IF blocks with
max pooling on spike maps, bias-free fully connected IF layers, and a spiking output layer whose
spike count is the class score. The same module is the SNN and (with ReLU dynamics, see
``strategies/proxy.py``) the ANN.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from lightning_snn.layers import TimeDistributed, TraceConv2d, TraceLinear
from lightning_snn.models.base import MODELS
from lightning_snn.models.feedforward import _Sequential
from lightning_snn.models.init import PROXY
from lightning_snn.neurons import NeuronConfig, build_neuron


@MODELS.register("proxy_convnet")
class ProxyConvNet(_Sequential):
    """``[conv3x3(no bias)-BN-IF | M]`` x channels -> Flatten -> ``[FC(no bias)-IF]`` x hidden ->
    FC(no bias) -> IF output layer. ``"M"`` is a 2x2 max pool (on spike maps: a logical OR).

    The first conv + BN sees the same image at every step, so it runs once per batch. The synapses
    are trace-aware (plain convolutions / linear maps unless an online strategy asks for traces), so
    OTTT and SLTT train the same network.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        neuron: NeuronConfig | None = None,
        channels: Sequence[int | str] = (128, 128, "M", 128, "M"),
        hidden: Sequence[int] = (2560, 1152, 256),
    ) -> None:
        c, h, w = input_shape
        layers: list[nn.Module] = []
        for v in channels:
            if v == "M":
                layers.append(TimeDistributed(nn.MaxPool2d(2)))
                h, w = h // 2, w // 2
                continue
            layers += [TimeDistributed(TraceConv2d(c, int(v), 3, padding=1, bias=False),
                                       nn.BatchNorm2d(int(v))), build_neuron(neuron)]
            c = int(v)
        width = c * h * w
        for i, n in enumerate([*hidden, num_classes]):
            ops: list[nn.Module] = [nn.Flatten()] if i == 0 else []
            layers += [TimeDistributed(*ops, TraceLinear(width, n, bias=False)), build_neuron(neuron)]
            width = n
        super().__init__(layers)
        PROXY.apply(self)  # SRKH/ProxyLearning Proxy_FashionMnist.ipynb: PyTorch's default


@MODELS.register("proxy_fmnist")
def proxy_fmnist(input_shape: Sequence[int], num_classes: int,
                 neuron: NeuronConfig | None = None) -> ProxyConvNet:
    """The paper's Fashion-MNIST network (notebook ``Proxy_FashionMnist.ipynb``):
    128C3-BN, 128C3-BN, MP2, 128C3-BN, MP2, FC 2560, FC 1152, FC 256, FC 10 (19,599,744 params)."""
    return ProxyConvNet(input_shape, num_classes, neuron)

