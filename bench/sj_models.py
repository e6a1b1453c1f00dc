"""The same spiking network in SpikingJelly 2.0: a lightning-snn network rebuilt with SpikingJelly's
layers, its weights copied.

Every ``TimeDistributed`` stack of stateless ops becomes SpikingJelly's
``layer.SeqToANNContainer`` (the ``[T*B, ...]`` fold its users write), every IF layer a multi-step
``neuron.IFNode(v_reset=None, surrogate_function=surrogate.Sigmoid(alpha))`` (reset by
subtraction: the same neuron, spikes and surrogate gradient), and the trace-aware synapses plain
``nn.Conv2d`` / ``nn.Linear``. Blocks with their own ``forward`` (residual additions) keep it, so
the graph is the same network, layer for layer. SpikingJelly's neurons keep state between calls:
call ``functional.reset_net`` before each forward (``SJNet`` does).

SpikingJelly is a bench-only dependency (``bench/requirements.txt``).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from lightning_snn.layers import TimeDistributed, TraceConv2d, TraceLinear
from lightning_snn.neurons import LIF


def _plain(m: nn.Module) -> nn.Module:
    """A trace-aware synapse as the plain torch layer with the same weights."""
    if type(m) is TraceConv2d:
        new: nn.Module = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                                   m.dilation, m.groups, m.bias is not None)
    elif type(m) is TraceLinear:
        new = nn.Linear(m.in_features, m.out_features, m.bias is not None)
    else:
        return m
    new = new.to(device=m.weight.device, dtype=m.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(m.weight)
        if m.bias is not None:
            new.bias.copy_(m.bias)
    return new


def _if_node(lif: LIF) -> nn.Module:
    from spikingjelly.activation_based import neuron, surrogate

    c = lif.config
    if c.leak != 1.0 or c.trainable_threshold or c.surrogate != "sigmoid":
        raise ValueError(
            "the SpikingJelly twin covers the IF neuron with a fixed threshold and the sigmoid "
            f"surrogate; got leak={c.leak}, trainable_threshold={c.trainable_threshold}, "
            f"surrogate={c.surrogate!r}"
        )
    return neuron.IFNode(v_threshold=float(lif.threshold), v_reset=None,
                         surrogate_function=surrogate.Sigmoid(alpha=c.surrogate_alpha),
                         detach_reset=c.detach_reset, step_mode="m")


def _convert(module: nn.Module) -> nn.Module:
    from spikingjelly.activation_based import layer

    if isinstance(module, LIF):
        return _if_node(module)
    if isinstance(module, TimeDistributed):
        return layer.SeqToANNContainer(*[_convert(m) for m in module])
    if isinstance(module, (TraceConv2d, TraceLinear)):
        return _plain(module)
    for name, child in list(module.named_children()):
        setattr(module, name, _convert(child))
    return module


class SJNet(nn.Module):
    """SpikingJelly twin of a lightning-snn network: ``[T, B, ...] -> [T, B, classes]``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = _convert(copy.deepcopy(net))

    def forward(self, x: Tensor) -> Tensor:
        from spikingjelly.activation_based import functional

        functional.reset_net(self.net)
        return self.net(x)


def to_spikingjelly(net: nn.Module) -> SJNet:
    """``net`` rebuilt with SpikingJelly layers, same weights and buffers (a copy; ``net`` is
    untouched)."""
    return SJNet(net)
