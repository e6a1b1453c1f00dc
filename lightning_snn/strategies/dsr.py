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

The forward composes the neuron kind's charge and reset hooks (fire at ``alpha * Vth``), the
backward is the vector-Jacobian product of the kind's declared spike representation
(``SpikingNeuron.rate_weights`` / ``rate_map``), whose derivative is the closed form above; kinds
without one (PLIF, learnable leak) are rejected.

Two rules (``rule``):

* ``exact`` (default): the above, the exact derivative of the clamp map in this project's neuron
  convention (no input decay, no 1/dt output scale). For IF it is also the official rule.
* ``official``: the official DSR code's LIF (``cifar/modules/neuron.py``) with
  ``beta = exp(-dt/tau)`` (the layer's leak must equal it), forward and backward as coded there::

      m <- beta m + (1 - beta) x[t];  s = Vth 1[m >= alpha Vth];  m <- m - s;  o[t] = s / dt
      r_in = sum_t w_t x[t] / sum w,   w_t = beta^(T-t),   G = sum_t w_t g[t] / sum w
      dL/dx[t] = G / tau * 1[0 < r_in < Vth tau / dt]        (the same for every t)
      dL/dVth  = dt * T * sum(G where r_in > Vth tau / dt)   (a dt^2 shrink of eq. 14, kept on
                                                              purpose by the authors)

  i.e. input scale 1/tau (exact: (1 - beta)/dt), window edge Vth tau/dt (exact: Vth/(1 - beta)),
  a uniform spread over steps, and the output gradient weighted by w_t again. IF layers follow the
  IF rule above (spikes of value Vth), so ``official`` needs ``spike_value: threshold``.

Read-out: when the model's output is a LIF layer's spikes (a spiking head), the class score is the
weighted firing rate ``sum_t w_t o[t] / sum w`` (``forward`` returns it as one step), as in the
official code; for IF it is the plain mean. Trainable thresholds (``NeuronConfig``) are kept
above ``threshold_floor``. There are no collective operations in the backward: under DDP the
threshold gradient is averaged with every other gradient by DDP itself.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

import torch
from torch import Tensor

from lightning_snn.kernels import lif_fire, use_kernels
from lightning_snn.models.base import SpikingNet
from lightning_snn.neurons import SpikingNeuron, neuron_dynamics, weighted_rate
from lightning_snn.strategies.base import STRATEGIES, GradientStrategy

SPIKE_VALUES = ("unit", "threshold")
RULES = ("exact", "official")


class DSRSpike(torch.autograd.Function):
    """Spiking layer forward over ``[T, B, ...]``; spike-representation backward."""

    @staticmethod
    def forward(ctx, x: Tensor, vth: Tensor, layer: SpikingNeuron, alpha: float, unit: bool,  # type: ignore[override]
                threshold_grad_scale: float, fused: bool = False) -> Tensor:
        th = vth.detach().to(x.dtype)
        if fused:  # the neuron's forward kernel, firing level alpha * Vth (state in fp32)
            out = lif_fire(x, vth, layer.leak_value(), fire_scale=alpha)
        else:
            v: Tensor | None = None
            out = x.new_empty(x.shape)
            for t in range(x.shape[0]):
                h = layer.charge(v, x[t])
                s = layer.fire(h, alpha * th)  # fire at alpha * Vth
                v = layer.reset(h, s, th)  # subtract Vth
                out[t] = s
        w = layer.rate_weights(x.shape[0], x)
        x_bar = torch.einsum("t,t...->...", w, x) / w.sum()
        ctx.save_for_backward(x_bar, th, w)
        ctx.layer, ctx.unit, ctx.scale, ctx.vth_dtype = layer, unit, threshold_grad_scale, vth.dtype
        return out if unit else out * th

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x_bar, th, w = ctx.saved_tensors
        g_r = g.sum(0)  # dL/dr: the representation stands for the output of every step
        with torch.enable_grad():  # the vector-Jacobian product of the neuron's declared map
            xb, thg = x_bar.detach().requires_grad_(), th.detach().requires_grad_()
            r = ctx.layer.rate_map(xb, thg)  # clamp(x_bar / Vth, 0, 1)
            if not ctx.unit:
                r = r * thg  # clamp(x_bar, 0, Vth): spikes of value Vth
            g_xbar, g_vth = torch.autograd.grad(r, (xb, thg), g_r)
        shape = (-1,) + (1,) * g_xbar.dim()
        g_x = g_xbar.unsqueeze(0) * (w / w.sum()).reshape(shape)  # d x_bar / d x[t] = w_t / sum w
        g_vth = None if not ctx.needs_input_grad[1] else (g_vth * ctx.scale).to(ctx.vth_dtype)
        return g_x, g_vth, None, None, None, None, None


class OfficialLIFSpike(torch.autograd.Function):
    """The official DSR LIF neuron over ``[T, B, ...]`` and its backward (module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, vth: Tensor, beta: float, alpha: float, tau: float, dt: float,  # type: ignore[override]
                threshold_grad_scale: float) -> Tensor:
        th = vth.detach().to(x.dtype)
        m = torch.zeros_like(x[0])
        out = x.new_empty(x.shape)
        for t in range(x.shape[0]):
            m = beta * m + (1.0 - beta) * x[t]
            s = th * (m >= alpha * th).to(x.dtype)
            m = m - s
            out[t] = s / dt
        w = beta ** torch.arange(x.shape[0] - 1, -1, -1, dtype=x.dtype, device=x.device)  # beta^(T-t)
        r_in = torch.einsum("t,t...->...", w, x) / w.sum()
        ctx.save_for_backward(r_in, th, w)
        ctx.tau, ctx.dt, ctx.scale, ctx.vth_dtype = tau, dt, threshold_grad_scale, vth.dtype
        return out

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        r_in, th, w = ctx.saved_tensors
        T = g.shape[0]
        G = torch.einsum("t,t...->...", w, g) / w.sum()  # weighted output gradient
        edge = th * ctx.tau / ctx.dt
        g_x = (G / ctx.tau * ((r_in > 0) & (r_in < edge)).to(g.dtype)).unsqueeze(0).expand_as(g)
        g_vth = None
        if ctx.needs_input_grad[1]:
            g_vth = (ctx.dt * T * (G * (r_in > edge).to(g.dtype)).sum() * ctx.scale).to(ctx.vth_dtype)
        return g_x.contiguous(), g_vth, None, None, None, None, None


def dsr_dynamics(layer: SpikingNeuron, x: Tensor, alpha: float = 0.5, spike_value: str = "unit",
                 threshold_grad_scale: float = 1.0, rule: str = "exact", tau: float = 1.0,
                 dt: float | None = None) -> Tensor:
    """Neuron dynamics for DSR: the real spikes forward, the clamp-map derivative backward
    (``rule="official"``: the official LIF neuron and rule for leaky layers)."""
    leak = layer.leak_value()
    if rule == "official" and leak < 1.0:
        dt = -tau * math.log(leak) if dt is None else dt
        return OfficialLIFSpike.apply(x, layer.vth(), leak, alpha, tau, dt, threshold_grad_scale)
    fused = layer.fused and use_kernels(layer.config.backend, x)  # the kernel where backend selects it
    return DSRSpike.apply(x, layer.vth(), layer, alpha, spike_value == "unit", threshold_grad_scale,
                          fused)


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
        rule: ``exact`` (the clamp-map derivative of this project's neuron) or ``official`` (the
            official DSR LIF neuron and backward; needs ``spike_value: threshold``).
        tau, dt: the official LIF's time constant and step (``beta = exp(-dt/tau)`` must equal
            the leak of every leaky layer); used by ``rule: official`` only.

    Feed-forward models only: each neuron layer is differentiated as a map of its whole input
    sequence, so a ``recurrent`` model (VGG-F: the first layer at step t depends on the last layer
    at step t-1) is rejected by ``check_model``; train it with ``bptt``, ``ottt_a`` or ``ottt_o``.
    Neuron kinds with a declared spike representation only (``if``, ``lif``).
    """

    supported_kinds = frozenset({"feedforward"})
    supported_neurons = frozenset({"if", "lif"})  # kinds that declare a spike representation

    def __init__(self, T: int, alpha: float = 0.5,
                 spike_value: Literal["unit", "threshold"] = "unit",
                 threshold_grad_scale: float = 1.0, rule: Literal["exact", "official"] = "exact",
                 tau: float = 1.0, dt: float = 0.05) -> None:
        super().__init__(T)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if spike_value not in SPIKE_VALUES:
            raise ValueError(f"spike_value must be one of {SPIKE_VALUES}, got {spike_value!r}")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if rule == "official" and spike_value != "threshold":
            raise ValueError("rule 'official' emits spikes of value Vth (IF) or Vth/dt (LIF): "
                             f"set spike_value: threshold (got {spike_value!r})")
        if not (tau > 0 and dt > 0):
            raise ValueError(f"tau and dt must be > 0, got tau={tau}, dt={dt}")
        self.alpha, self.spike_value, self.rule, self.tau, self.dt = alpha, spike_value, rule, tau, dt
        self.threshold_grad_scale = threshold_grad_scale

    def check_model(self, model: SpikingNet) -> None:
        super().check_model(model)
        if self.rule != "official":
            return
        beta = math.exp(-self.dt / self.tau)
        for layer in model.spiking_layers():
            leak = layer.leak_value()
            if leak < 1.0 and abs(leak - beta) > 1e-9:
                raise ValueError(
                    f"rule 'official' needs leak = exp(-dt/tau) = {beta!r} (dt={self.dt}, "
                    f"tau={self.tau}) for leaky layers, got leak {leak!r}")

    def forward(self, model: SpikingNet, x: Tensor) -> Tensor:
        """Per-step outputs ``[T, B, classes]``; with a leaky spiking head, its weighted firing
        rate as one step ``[1, B, classes]``."""
        fn = partial(dsr_dynamics, alpha=self.alpha, spike_value=self.spike_value,
                     threshold_grad_scale=self.threshold_grad_scale, rule=self.rule,
                     tau=self.tau, dt=self.dt)
        last: dict[str, object] = {}

        def run(layer: SpikingNeuron, inp: Tensor) -> Tensor:
            last["layer"], last["out"] = layer, fn(layer, inp)
            return last["out"]  # type: ignore[return-value]

        with neuron_dynamics(model, run):
            out = model(self.encode(x))
        head = last.get("layer")
        if last.get("out") is out and isinstance(head, SpikingNeuron) and head.leak_value() < 1.0:
            return weighted_rate(out, head.leak_value()).unsqueeze(0)
        return out
