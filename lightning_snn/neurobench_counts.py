"""The spike / energy report's ``neurobench`` counting convention: synaptic operations, activation
sparsity, footprint and connection sparsity as NeuroBench 2.3.0 (``neurobench.metrics``) defines
them, counted on this project's network without NeuroBench installed.

NeuroBench runs a network one time step at a time and hooks every connection layer
(``nn.Linear``, ``nn.Conv1d/2d/3d``). For each call on a batch ``x`` of one step:

- ``spiking`` = every element of ``x`` is 0, 1 or -1 (the whole batch of that step);
- effective operations = sum over outputs of ``layer_bin(x != 0)``, ``layer_bin`` the layer with
  its nonzero weights set to 1 and no bias: the (nonzero input, nonzero weight) pairs that meet
  (a convolution's zero padding meets nothing). They are ACs when ``spiking``, else MACs;
- dense operations = the same with every input and every weight set to 1.

Per sample: the sums over all steps and batches divided by the number of samples. So the input
layer of a static image does its MACs at every one of the T steps, and a layer after an average
pool of spikes (rates such as 0.25) does MACs on the nonzero pooled values.

This project computes a static image's input layer once per batch (the same current every step):
a layer that saw B x T / k sample-steps in a batch stands for k identical calls, and its counts
are multiplied by k. A multi-step layer run on the folded ``[T*B, ...]`` sequence is split back
into its T steps, so the ``spiking`` test is made per step as NeuroBench makes it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

# NeuroBench 2.3.0 neurobench/blocks/layer.py STATELESS_LAYERS: the layers whose operations it counts
CONNECTION_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def footprint_bytes(net: nn.Module) -> int:
    """NeuroBench ``Footprint``: bytes of every parameter and buffer of the network (batch-norm
    running statistics included): sum of ``numel x element_size``."""
    return sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()])


def connection_sparsity(net: nn.Module) -> float:
    """NeuroBench ``ConnectionSparsity``: zero weights / all weights of the connection layers that
    are leaves of the module tree (NeuroBench rounds the ratio to 4 decimals; this is the exact
    ratio). 0.0 for a network without such layers."""
    zeros = total = 0
    for m in net.modules():
        if isinstance(m, CONNECTION_LAYERS) and not list(m.children()):
            zeros += int((m.weight == 0).sum())
            total += m.weight.numel()
    return zeros / total if total else 0.0


def _fan_map(layer: nn.Module, in_shape: tuple[int, ...], all_ones: bool) -> Tensor:
    """Synapses each input element of one sample drives (int64, ``in_shape``): the gradient of
    ``sum(layer_bin(x))`` with respect to ``x = 1``, ``layer_bin`` holding 1 for every nonzero
    weight (every weight when ``all_ones``) and no bias; effective operations of an input are then
    ``(x != 0) . fan``, exactly NeuroBench's ``layer_bin(binary(x)).sum()``."""
    with torch.inference_mode(False), torch.enable_grad():  # evaluation runs under inference mode
        w = layer.weight.detach()
        ones = torch.ones_like(w, dtype=torch.float64) if all_ones else (w != 0).to(torch.float64)
        x = torch.ones(1, *in_shape, dtype=torch.float64, device=w.device, requires_grad=True)
        if isinstance(layer, nn.Linear):
            y = torch.nn.functional.linear(x, ones)
        else:
            conv = next(c for c in (nn.Conv1d, nn.Conv2d, nn.Conv3d) if isinstance(layer, c))
            y = conv._conv_forward(layer, x, ones, None)
        (g,) = torch.autograd.grad(y.sum(), x)
    return g[0].round().to(torch.int64)


class NeuroBenchOps:
    """Effective ACs / MACs and dense operations of every connection layer of ``net`` under
    NeuroBench's rules (module doc), from forward pre-hooks; the numerics are unchanged.

    Call :meth:`start_batch` before and :meth:`end_batch` after each batch. Counts are totals
    over all samples (int64): ``acs``, ``macs``, ``dense`` per layer name (module path, '.' -> '_').
    """

    def __init__(self, net: nn.Module, T: int) -> None:
        self.T = int(T)
        self.layers = {path.removeprefix("nodes.").replace(".", "_"): m
                       for path, m in net.named_modules() if isinstance(m, CONNECTION_LAYERS)}
        self.acs = {n: 0 for n in self.layers}
        self.macs = {n: 0 for n in self.layers}
        self.dense = {n: 0 for n in self.layers}
        self._fans: dict[tuple[str, tuple[int, ...]], tuple[Tensor, int]] = {}
        self._batch: dict[str, list[int]] = {}
        self._hooks: list[Any] = []
        self._B = 0

    def attach(self) -> None:
        for n, m in self.layers.items():
            self._hooks.append(m.register_forward_pre_hook(lambda _m, args, n=n: self._count(n, args[0])))

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def start_batch(self, batch_size: int) -> None:
        self._B = int(batch_size)
        self._batch = {}

    def end_batch(self) -> None:
        """Add the batch's counts; a layer that ran on B x T / k sample-steps (a static image's
        input layer: k = T) stands for k identical calls."""
        want = self._B * self.T
        for n, (ac, mac, dense, seen) in self._batch.items():
            if want % seen:
                raise ValueError(f"layer {n} ran on {seen} sample-steps in a batch of {self._B} x T={self.T}; "
                                 "the neurobench convention needs a feed-forward run (B x T / k sample-steps)")
            k = want // seen
            self.acs[n] += k * ac
            self.macs[n] += k * mac
            self.dense[n] += k * dense
        self._batch = {}

    def _fans_of(self, n: str, in_shape: tuple[int, ...]) -> tuple[Tensor, int]:
        key = (n, in_shape)
        if key not in self._fans:
            layer = self.layers[n]
            self._fans[key] = (_fan_map(layer, in_shape, False), int(_fan_map(layer, in_shape, True).sum()))
        return self._fans[key]

    def _count(self, n: str, x: Tensor) -> None:
        layer = self.layers[n]
        x = x.detach()
        in_shape = tuple(x.shape[-1:]) if isinstance(layer, nn.Linear) else tuple(x.shape[1:])
        rows = x.numel() // max(1, math.prod(in_shape))
        B = self._B or rows
        steps = rows // B if rows % B == 0 else 1  # [T*B, ...] folded sequence: T steps of B
        per = rows // steps
        fan, dense_one = self._fans_of(n, in_shape)
        x = x.reshape(steps, per, *in_shape)
        nz = x != 0
        analogue = (nz & (x != 1) & (x != -1)).reshape(steps, -1).any(1)  # NeuroBench: not spiking
        # effective operations of each step: sum over inputs of (count of nonzero inputs) x fan-out
        eff = (nz.sum(1, dtype=torch.int64) * fan).reshape(steps, -1).sum(1)
        ac, mac = int(eff[~analogue].sum()), int(eff[analogue].sum())
        prev = self._batch.get(n, [0, 0, 0, 0])
        self._batch[n] = [prev[0] + ac, prev[1] + mac, prev[2] + rows * dense_one, prev[3] + rows]
