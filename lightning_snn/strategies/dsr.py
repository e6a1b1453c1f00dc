"""Differentiation on spike representation (DSR): real SNN forward, closed-form clamp backward.

The forward pass is the real spiking network over T steps; stateless layers (conv, BN, linear) run
on the folded ``[T*B, ...]`` view, so batch-norm statistics span all T*B samples. Each spiking
layer fires when its potential reaches ``alpha * Vth`` and subtracts ``Vth`` (``alpha = 0.5``
rounds instead of flooring). No graph is kept through time inside a neuron: its backward is the
derivative of the map from the weighted mean input to the spike representation,

    x_bar = sum_t w_t x[t] / sum_t w_t,   w_t = lambda^(T-t)        (plain mean for IF)
    r     = clamp(x_bar, 0, Vth)          spike_value="threshold"   (the paper: spikes of value Vth)
    r     = clamp(x_bar / Vth, 0, 1)      spike_value="unit"        (project convention: {0, 1})

with the layer's output at every step standing for r, so dL/dr = sum_t dL/do[t] and

    dL/dx[t] = dL/dr * dr/dx_bar * w_t / sum w      (non-zero only where 0 < x_bar < Vth)
    dL/dVth  = dL/dr * dr/dVth                      ("threshold": where x_bar > Vth;
                                                     "unit": -x_bar / Vth^2 where 0 < x_bar < Vth)

For IF this is the official rule; for LIF it is the exact derivative in this project's neuron
convention (no input decay, no 1/dt output scale). Trainable thresholds (``NeuronConfig``) are kept
above ``threshold_floor``. There are no collective operations in the backward: under DDP the
threshold gradient is averaged with every other gradient by DDP itself.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
from torch import Tensor

from lightning_snn.kernels import lif_fire, use_kernels
from lightning_snn.models.base import SpikingNet
from lightning_snn.neurons import LIF, neuron_dynamics
from lightning_snn.strategies.base import STRATEGIES, GradientStrategy

SPIKE_VALUES = ("unit", "threshold")


def time_weights(T: int, leak: float, like: Tensor) -> Tensor:
    """w_t = lambda^(T-t), t = 1..T (all ones for IF)."""
    return leak ** torch.arange(T - 1, -1, -1, dtype=like.dtype, device=like.device)


class DSRSpike(torch.autograd.Function):
    """Spiking layer forward over ``[T, B, ...]``; closed-form spike-representation backward."""

    @staticmethod
    def forward(ctx, x: Tensor, vth: Tensor, leak: float, alpha: float, unit: bool,  # type: ignore[override]
                threshold_grad_scale: float, fused: bool = False) -> Tensor:
        th = vth.detach().to(x.dtype)
        if fused:  # the neuron's forward kernel, firing level alpha * Vth (state in fp32)
            out = lif_fire(x, vth, leak, fire_scale=alpha)
        else:
            v = torch.zeros_like(x[0])
            out = x.new_empty(x.shape)
            for t in range(x.shape[0]):
                h = leak * v + x[t]  # charge
                s = (h >= alpha * th).to(x.dtype)  # fire at alpha * Vth
                v = h - th * s  # reset by subtracting Vth
                out[t] = s
        w = time_weights(x.shape[0], leak, x)
        x_bar = torch.einsum("t,t...->...", w, x) / w.sum()
        ctx.save_for_backward(x_bar, th, w)
        ctx.unit, ctx.scale, ctx.vth_dtype = unit, threshold_grad_scale, vth.dtype
        return out if unit else out * th

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x_bar, th, w = ctx.saved_tensors
        g_r = g.sum(0)  # dL/dr: the representation stands for the output of every step
        inside = ((x_bar > 0) & (x_bar < th)).to(g.dtype)
        if ctx.unit:  # r = clamp(x_bar / Vth, 0, 1)
            g_xbar = g_r * inside / th
            g_vth = -(g_r * inside * x_bar).sum() / th**2
        else:  # r = clamp(x_bar, 0, Vth)
            g_xbar = g_r * inside
            g_vth = (g_r * (x_bar >= th).to(g.dtype)).sum()
        shape = (-1,) + (1,) * g_xbar.dim()
        g_x = g_xbar.unsqueeze(0) * (w / w.sum()).reshape(shape)  # d x_bar / d x[t] = w_t / sum w
        g_vth = None if not ctx.needs_input_grad[1] else (g_vth * ctx.scale).to(ctx.vth_dtype)
        return g_x, g_vth, None, None, None, None, None


def dsr_dynamics(layer: LIF, x: Tensor, alpha: float = 0.5, spike_value: str = "unit",
                 threshold_grad_scale: float = 1.0) -> Tensor:
    """Neuron dynamics for DSR: the real spikes forward (the fused kernel where the layer's
    ``backend`` selects it), the clamp-map derivative backward."""
    return DSRSpike.apply(x, layer.vth(), layer.leak, alpha, spike_value == "unit",
                          threshold_grad_scale, use_kernels(layer.config.backend, x))


@STRATEGIES.register("dsr")
class DSR(GradientStrategy):
    """DSR strategy.

    Args:
        T: time steps.
        alpha: firing-threshold factor: a neuron fires at ``alpha * Vth`` and subtracts ``Vth``.
        spike_value: ``unit`` (spikes in {0, 1}, the project convention) or ``threshold``
            (spikes of value Vth, as in the DSR paper; the threshold then gets its gradient from the
            saturated units).
        threshold_grad_scale: multiplies the threshold gradient (the official ImageNet IF code
            uses 0.001).

    Feed-forward models only: each neuron layer is differentiated as a map of its whole input
    sequence, so a ``recurrent`` model (VGG-F: the first layer at step t depends on the last layer
    at step t-1) is rejected by ``check_model``; train it with ``bptt``, ``ottt_a`` or ``ottt_o``.
    """

    name = "dsr"
    supported_kinds = frozenset({"feedforward"})

    def __init__(self, T: int, alpha: float = 0.5,
                 spike_value: Literal["unit", "threshold"] = "unit",
                 threshold_grad_scale: float = 1.0) -> None:
        super().__init__(T)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if spike_value not in SPIKE_VALUES:
            raise ValueError(f"spike_value must be one of {SPIKE_VALUES}, got {spike_value!r}")
        self.alpha, self.spike_value = alpha, spike_value
        self.threshold_grad_scale = threshold_grad_scale

    def forward(self, model: SpikingNet, x: Tensor) -> Tensor:
        fn = partial(dsr_dynamics, alpha=self.alpha, spike_value=self.spike_value,
                     threshold_grad_scale=self.threshold_grad_scale)
        with neuron_dynamics(model, fn):
            return model(self.encode(x))
