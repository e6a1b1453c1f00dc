"""Our network run with another library's neuron rule, to show that a remaining mismatch of a
file read by :mod:`lightning_snn.nir.readers` is exactly that rule (and not an error of the file
or of the reader). The state is kept on the layer (``layer.v``) so a model run step by step
continues from it."""

from __future__ import annotations

from torch import Tensor, nn
import torch

from lightning_snn.neurons import LIF, neuron_dynamics, reset_states
from lightning_snn.nir.verify import record_spikes


def norse_if_rule(layer: LIF, x: Tensor) -> Tensor:
    """Norse ``IAFCell``: v += I, spike if v > Vth, then v = 0 (reset to v_reset)."""
    thr = layer.vth().detach()
    v = torch.zeros_like(x[0]) if layer.v is None else layer.v
    out = []
    for t in range(x.shape[0]):
        v = layer.leak * v + x[t]
        z = (v > thr).to(x.dtype)
        v = v * (1 - z)
        out.append(z)
    layer.v = v
    return torch.stack(out)


def ours_with_rule(net: nn.Module, x: Tensor, rule) -> dict[str, Tensor]:
    """Spikes of ``net`` with every spiking layer running ``rule``."""
    reset_states(net)
    try:
        with neuron_dynamics(net, rule):
            return record_spikes(net, x)[1]
    finally:
        reset_states(net)
