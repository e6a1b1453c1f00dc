"""Spiking neurons: IF / LIF with reset by subtraction and surrogate spike functions.

Convention (one for the whole project): spikes are in {0, 1}, thresholds in potential units, time is
the leading axis of a ``[T, B, ...]`` tensor. With leak ``lambda`` (``lambda = 1`` is IF) and
post-reset potential ``v``::

    h[t] = lambda * v[t-1] + I[t]          (charge)
    s[t] = H(h[t] - Vth)                   (fire)
    v[t] = h[t] - Vth * s[t]               (reset by subtraction)

so ``v[T] = sum_t lambda^(T-t) (I[t] - Vth s[t])``: the lambda-weighted firing rate tracks
``clamp(weighted mean input / Vth, 0, 1)`` (the spike representation IDE and DSR differentiate).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor, nn

from lightning_snn.kernels import BACKENDS, lif_multistep, use_kernels

# --------------------------------------------------------------------------------------------------
# Surrogate spike functions: forward is the Heaviside step, backward a smooth pseudo-derivative.
# Each is parametrised by a sharpness ``alpha`` (larger = narrower); every one integrates to 1.
# --------------------------------------------------------------------------------------------------


def _sigmoid_grad(x: Tensor, alpha: float) -> Tensor:
    # d/dx sigmoid(alpha x) = alpha * sig * (1 - sig)
    sig = torch.sigmoid(alpha * x)
    return alpha * sig * (1.0 - sig)


def _atan_grad(x: Tensor, alpha: float) -> Tensor:
    # d/dx [atan(pi/2 alpha x) / pi + 1/2] = (alpha / 2) / (1 + (pi/2 alpha x)^2)
    return (alpha / 2.0) / (1.0 + (math.pi / 2.0 * alpha * x) ** 2)


def _rectangle_grad(x: Tensor, alpha: float) -> Tensor:
    # box of width 1/alpha and height alpha centred on the threshold
    return alpha * (x.abs() < 0.5 / alpha).to(x.dtype)


SURROGATES: dict[str, Callable[[Tensor, float], Tensor]] = {
    "sigmoid": _sigmoid_grad,
    "atan": _atan_grad,
    "rectangle": _rectangle_grad,
}


class _SpikeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, name: str, alpha: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.name, ctx.alpha = name, alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * SURROGATES[ctx.name](x, ctx.alpha), None, None


def spike(x: Tensor, surrogate: str = "sigmoid", alpha: float = 4.0) -> Tensor:
    """Heaviside step ``H(x)`` (``H(0) = 1``) whose gradient is the named surrogate's derivative."""
    if surrogate not in SURROGATES:
        raise ValueError(f"unknown surrogate {surrogate!r}; valid choices: {sorted(SURROGATES)}")
    return _SpikeFn.apply(x, surrogate, alpha)


# --------------------------------------------------------------------------------------------------
# Neuron configuration and module
# --------------------------------------------------------------------------------------------------


@dataclass
class NeuronConfig:
    """Hyper-parameters shared by every spiking layer of a model.

    Args:
        threshold: firing threshold Vth (> 0); the initial value when trainable.
        leak: membrane leak lambda in (0, 1]; 1 is the IF neuron.
        trainable_threshold: learn one threshold per neuron layer.
        threshold_floor: a trainable threshold is kept at or above this value (> 0).
        surrogate: pseudo-derivative of the spike: ``sigmoid``, ``atan`` or ``rectangle``.
        surrogate_alpha: sharpness of the surrogate (``rectangle`` has width ``1/alpha``).
        detach_reset: cut the gradient through the reset term ``Vth * s[t]``.
        backend: what runs the multi-step dynamics: ``triton`` (fused kernels, one custom op per
            layer: see ``lightning_snn.kernels``), ``torch`` (the loop over T below, the
            reference) or ``auto`` (the kernels on CUDA when Triton imports, else the torch loop).
    """

    threshold: float = 1.0
    leak: float = 1.0
    trainable_threshold: bool = False
    threshold_floor: float = 1e-2
    surrogate: str = "sigmoid"
    surrogate_alpha: float = 4.0
    detach_reset: bool = False
    backend: Literal["auto", "torch", "triton"] = "auto"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown neuron backend {self.backend!r}; valid choices: {list(BACKENDS)}")
        if not self.threshold > 0:
            raise ValueError(f"neuron threshold must be > 0, got {self.threshold}")
        if not 0.0 < self.leak <= 1.0:
            raise ValueError(f"neuron leak must be in (0, 1] (1 = IF), got {self.leak}")
        if not self.threshold_floor > 0:
            raise ValueError(f"threshold_floor must be > 0, got {self.threshold_floor}")
        if self.trainable_threshold and self.threshold < self.threshold_floor:
            raise ValueError(
                f"threshold {self.threshold} is below threshold_floor {self.threshold_floor}"
            )
        if self.surrogate not in SURROGATES:
            raise ValueError(
                f"unknown surrogate {self.surrogate!r}; valid choices: {sorted(SURROGATES)}"
            )
        if not self.surrogate_alpha > 0:
            raise ValueError(f"surrogate_alpha must be > 0, got {self.surrogate_alpha}")


class Stateful:
    """Mixin of modules that carry state from one time step to the next: spiking neurons, and the
    delays of models whose layers feed back across time steps. The state belongs to the strategy
    that owns time: :func:`reset_states` puts it back at rest for every batch, and a strategy that
    keeps no graph across steps (OTTT) cuts it from the past between steps with :func:`detach_states`.
    """

    def reset_state(self) -> None:
        raise NotImplementedError

    def detach_state(self) -> None:
        raise NotImplementedError


class LIF(Stateful, nn.Module):
    """Leaky integrate-and-fire layer (IF when ``leak == 1``) with reset by subtraction.

    ``forward`` is multi-step: it takes the input current ``[T, B, ...]`` and returns spikes of the
    same shape, starting from rest, so no state survives between calls. ``step`` is the single-step
    form for strategies that own the loop over time (OTTT); they call ``reset_state`` per batch.

    A strategy that needs other dynamics in the same model (OTTT's online steps, DSR's closed-form
    backward) sets ``dynamics`` -- a function ``(layer, x [T, B, ...]) -> spikes`` -- for the
    duration of its run with :func:`neuron_dynamics`; ``None`` is the plain multi-step forward.
    """

    def __init__(self, config: NeuronConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or NeuronConfig()
        th = torch.tensor(float(config.threshold))
        if config.trainable_threshold:
            self.threshold = nn.Parameter(th)
        else:
            self.register_buffer("threshold", th, persistent=False)
        self.v: Tensor | None = None  # post-reset potential between single steps
        self.dynamics: Callable[[LIF, Tensor], Tensor] | None = None

    @property
    def leak(self) -> float:
        return self.config.leak

    def extra_repr(self) -> str:
        c = self.config
        kind = "IF" if c.leak == 1.0 else f"LIF(leak={c.leak})"
        return f"{kind}, threshold={float(self.threshold):.4g}, trainable={c.trainable_threshold}"

    def vth(self) -> Tensor:
        """The firing threshold, a trainable one first clamped to its floor."""
        return self._vth()

    def _vth(self) -> Tensor:
        if self.config.trainable_threshold:
            # keep the learnt threshold above its floor; through ``.data`` so the projection does
            # not bump the version of a tensor that earlier steps of the same graph saved (a
            # step-by-step forward calls this every step; after the first call it changes nothing)
            self.threshold.data.clamp_(min=self.config.threshold_floor)
        return self.threshold

    def _fire(self, h: Tensor, vth: Tensor) -> tuple[Tensor, Tensor]:
        c = self.config
        s = spike(h - vth, c.surrogate, c.surrogate_alpha)
        reset = vth * (s.detach() if c.detach_reset else s)
        return s, h - reset

    def forward(self, x: Tensor) -> Tensor:
        if self.dynamics is not None:
            return self.dynamics(self, x)
        vth = self._vth()
        c = self.config
        if use_kernels(c.backend, x):  # one fused op: the same dynamics and gradients
            return lif_multistep(x, vth, c.leak, c.surrogate, c.surrogate_alpha, c.detach_reset)
        v = torch.zeros_like(x[0])
        out = []
        for t in range(x.shape[0]):
            s, v = self._fire(self.leak * v + x[t], vth)
            out.append(s)
        return torch.stack(out)

    def step(self, x: Tensor) -> Tensor:
        """One time step from the stored state (rest after ``reset_state``)."""
        vth = self._vth()
        h = x if self.v is None else self.leak * self.v + x
        s, self.v = self._fire(h, vth)
        return s

    def reset_state(self) -> None:
        self.v = None

    def detach_state(self) -> None:
        if self.v is not None:
            self.v = self.v.detach()


def reset_states(module: nn.Module) -> None:
    """Put every spiking layer (and every other :class:`Stateful` module) of ``module`` at rest."""
    for m in module.modules():
        if isinstance(m, Stateful):
            m.reset_state()


def detach_states(module: nn.Module) -> None:
    """Cut the state of every :class:`Stateful` module of ``module`` from the graph of the past."""
    for m in module.modules():
        if isinstance(m, Stateful):
            m.detach_state()


@contextmanager
def neuron_dynamics(module: nn.Module, dynamics: Callable[[LIF, Tensor], Tensor]) -> Iterator[None]:
    """Run every spiking layer of ``module`` with ``dynamics`` inside the block, then restore."""
    layers = [m for m in module.modules() if isinstance(m, LIF)]
    before = [m.dynamics for m in layers]
    for m in layers:
        m.dynamics = dynamics
    try:
        yield
    finally:
        for m, d in zip(layers, before):
            m.dynamics = d


def weighted_rate(spikes: Tensor, leak: float) -> Tensor:
    """Weighted firing rate ``a = sum_t lambda^(T-t) s[t] / sum_t lambda^(T-t)`` over axis 0."""
    T = spikes.shape[0]
    if leak == 1.0:
        return spikes.mean(0)
    w = leak ** torch.arange(T - 1, -1, -1, dtype=spikes.dtype, device=spikes.device)
    return torch.einsum("t,t...->...", w, spikes) / w.sum()
