"""Spiking neurons: a registry of kinds (IF, LIF, PLIF) with reset by subtraction, and surrogate
spike functions.

Convention (one for the whole project): spikes are in {0, 1}, thresholds in potential units, time is
the leading axis of a ``[T, B, ...]`` tensor. With leak ``lambda`` (``lambda = 1`` is IF) and
post-reset potential ``v``::

    h[t] = lambda * v[t-1] + I[t]          (charge)
    s[t] = H(h[t] - Vth)                   (fire)
    v[t] = h[t] - Vth * s[t]               (reset by subtraction)

so ``v[T] = sum_t lambda^(T-t) (I[t] - Vth s[t])``: the lambda-weighted firing rate tracks
``clamp(weighted mean input / Vth, 0, 1)`` (the spike representation IDE and DSR differentiate).
Each kind in ``NEURONS`` states its own charge / fire / reset hooks (PLIF: a learnt lambda) and
whether it has such a representation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, ClassVar, Literal

import torch
from torch import Tensor, nn

from lightning_snn.kernels import BACKENDS, lif_multistep, use_kernels
from lightning_snn.registry import Registry

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


def _triangle_grad(x: Tensor, alpha: float) -> Tensor:
    # triangle of half-width 1/alpha and height alpha: max(0, alpha - alpha^2 |x|), the derivative
    # of SpikingJelly's PiecewiseQuadratic (SLTT's `triangle`; alpha = 1: max(0, 1 - |x|))
    return (alpha - (alpha * alpha) * x.abs()).clamp(min=0.0)


SURROGATES: dict[str, Callable[[Tensor, float], Tensor]] = {
    "sigmoid": _sigmoid_grad,
    "atan": _atan_grad,
    "rectangle": _rectangle_grad,
    "triangle": _triangle_grad,
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
# Neuron configuration, the neuron kinds (a registry) and their common base
# --------------------------------------------------------------------------------------------------


@dataclass
class NeuronConfig:
    """Hyper-parameters shared by every spiking layer of a model.

    Args:
        kind: neuron kind in ``NEURONS``: ``lif`` (``leak = 1`` is IF, the default), ``if``
            (leak fixed to 1) or ``plif`` (learnable leak, initialised to ``leak``).
        threshold: firing threshold Vth (> 0); the initial value when trainable.
        leak: membrane leak lambda in (0, 1]; 1 is the IF neuron.
        trainable_threshold: learn one threshold per neuron layer.
        threshold_floor: a trainable threshold is kept at or above this value (> 0).
        surrogate: pseudo-derivative of the spike: ``sigmoid``, ``atan``, ``rectangle`` or
            ``triangle``.
        surrogate_alpha: sharpness of the surrogate (``rectangle`` has width ``1/alpha``,
            ``triangle`` half-width ``1/alpha`` and height ``alpha``).
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
    kind: str = "lif"
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
        NEURONS.get(self.kind).check_config(self)  # unknown kind: lists the valid ones


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


Dynamics = Callable[["SpikingNeuron", Tensor], Tensor]


class SpikingNeuron(Stateful, nn.Module):
    """Base class of every neuron kind: a spiking layer with reset by subtraction.

    A kind defines the three hooks of one time step, which every strategy composes::

        h = charge(v, x)        s = fire(h, vth)        v = reset(h, s, vth)

    ``forward`` is multi-step: it takes the input current ``[T, B, ...]`` and returns spikes of the
    same shape, starting from rest, so no state survives between calls. ``step`` is the single-step
    form for strategies and models that own the loop over time; they call ``reset_state`` per batch.
    The threshold is read through :meth:`vth` only (it applies the floor of a trainable one).

    A strategy that needs other dynamics in the same model (OTTT's online steps, DSR's closed-form
    backward) sets ``dynamics`` -- a function ``(layer, x [T, B, ...]) -> spikes`` -- for the
    duration of its run with :func:`neuron_dynamics`; ``None`` is the plain multi-step forward.

    Kinds whose weighted firing rate tracks a closed-form map of the input (the *spike
    representation* that DSR and IDE differentiate) set ``has_rate_map`` and implement
    :meth:`rate_weights` and :meth:`rate_map`.
    """

    kind: ClassVar[str]
    has_rate_map: ClassVar[bool] = False
    # the fused multi-step kernels (``NeuronConfig.backend``) implement exactly the LIF hooks with a
    # fixed leak: a kind sets this only when its charge / fire / reset are those
    fused: ClassVar[bool] = False

    def __init__(self, config: NeuronConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or NeuronConfig(kind=self.kind)
        th = torch.tensor(float(config.threshold))
        if config.trainable_threshold:
            self.threshold = nn.Parameter(th)
        else:
            self.register_buffer("threshold", th, persistent=False)
        self.v: Tensor | None = None  # post-reset potential between single steps
        self.dynamics: Dynamics | None = None

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        """Convert like any module, and let a threshold that still holds its configured value
        take that value exactly in the new dtype (``.double()`` of a float32 layer gives 0.3,
        not 0.30000001192)."""
        th = self.threshold
        configured = th.device.type != "meta" and th.is_floating_point() and float(th) == float(
            torch.tensor(self.config.threshold, dtype=th.dtype))
        super()._apply(fn, recurse)
        th = self.threshold
        if configured and th.is_floating_point() and th.device.type != "meta":
            with torch.no_grad():
                th.fill_(self.config.threshold)
        return self

    @classmethod
    def check_config(cls, config: NeuronConfig) -> None:
        """Raise a clear error for settings this kind cannot take."""

    # ------------------------------------------------------------------ the threshold accessor
    def vth(self) -> Tensor:
        """The firing threshold, a trainable one first clamped to its floor."""
        if self.config.trainable_threshold:
            # keep the learnt threshold above its floor; through ``.data`` so the projection does
            # not bump the version of a tensor that earlier steps of the same graph saved (a
            # step-by-step forward calls this every step; after the first call it changes nothing)
            self.threshold.data.clamp_(min=self.config.threshold_floor)
        return self.threshold

    # ------------------------------------------------------------------ hooks of one time step
    @property
    def leak(self) -> float | Tensor:
        """Membrane leak lambda of ``charge`` (a tensor when it is learnt)."""
        raise NotImplementedError

    def leak_value(self) -> float:
        """The current leak as a number (e.g. for OTTT's presynaptic traces)."""
        leak = self.leak
        return float(leak.detach()) if isinstance(leak, Tensor) else float(leak)

    def charge(self, v: Tensor | None, x: Tensor) -> Tensor:
        """h[t] = lambda * v[t-1] + I[t] (from rest when ``v`` is None)."""
        return x if v is None else self.leak * v + x

    def fire(self, h: Tensor, vth: Tensor) -> Tensor:
        """s[t] = H(h[t] - Vth), with the configured surrogate gradient."""
        return spike(h - vth, self.config.surrogate, self.config.surrogate_alpha)

    def reset(self, h: Tensor, s: Tensor, vth: Tensor) -> Tensor:
        """v[t] = h[t] - Vth * s[t] (reset by subtraction; the term detached if configured)."""
        return h - vth * (s.detach() if self.config.detach_reset else s)

    # ------------------------------------------------------------------ spike representation
    def rate_weights(self, T: int, like: Tensor) -> Tensor:
        """w_t = lambda^(T-t), t = 1..T: the weights of the weighted firing rate."""
        raise NotImplementedError(f"neuron kind {self.kind!r} declares no spike representation")

    def rate_map(self, x_bar: Tensor, vth: Tensor) -> Tensor:
        """r = clamp(x_bar / Vth, 0, 1): the weighted rate a constant input x_bar drives."""
        raise NotImplementedError(f"neuron kind {self.kind!r} declares no spike representation")

    # ------------------------------------------------------------------ running
    def extra_repr(self) -> str:
        return (f"kind={self.kind}, threshold={float(self.threshold):.4g}, "
                f"trainable={self.config.trainable_threshold}")

    def forward(self, x: Tensor) -> Tensor:
        if self.dynamics is not None:
            return self.dynamics(self, x)
        vth = self.vth()
        c = self.config
        if self.fused and use_kernels(c.backend, x):  # one fused op: the same dynamics and gradients
            return lif_multistep(x, vth, self.leak_value(), c.surrogate, c.surrogate_alpha,
                                 c.detach_reset)
        v: Tensor | None = None
        out = []
        for t in range(x.shape[0]):
            h = self.charge(v, x[t])
            s = self.fire(h, vth)
            v = self.reset(h, s, vth)
            out.append(s)
        return torch.stack(out)

    def step(self, x: Tensor) -> Tensor:
        """One time step from the stored state (rest after ``reset_state``)."""
        vth = self.vth()
        h = self.charge(self.v, x)
        s = self.fire(h, vth)
        self.v = self.reset(h, s, vth)
        return s

    def reset_state(self) -> None:
        self.v = None

    def detach_state(self) -> None:
        if self.v is not None:
            self.v = self.v.detach()


NEURONS: Registry[SpikingNeuron] = Registry("neuron kind", name_attr="kind")


@NEURONS.register("lif")
class LIF(SpikingNeuron):
    """Leaky integrate-and-fire layer with a fixed leak (IF when ``leak == 1``)."""

    has_rate_map = True
    fused = True

    @property
    def leak(self) -> float:
        return self.config.leak

    def extra_repr(self) -> str:
        c = self.config
        kind = "IF" if c.leak == 1.0 else f"LIF(leak={c.leak})"
        return f"{kind}, threshold={float(self.threshold):.4g}, trainable={c.trainable_threshold}"

    def rate_weights(self, T: int, like: Tensor) -> Tensor:
        return self.config.leak ** torch.arange(T - 1, -1, -1, dtype=like.dtype, device=like.device)

    def rate_map(self, x_bar: Tensor, vth: Tensor) -> Tensor:
        # |v[T]| bounded => sum_t w_t s[t] / sum_t w_t -> clamp(x_bar / Vth, 0, 1); written with
        # ``where`` so the derivative is 1/Vth strictly inside (0, Vth) and 0 at the ends (DSR's rule)
        u = x_bar / vth
        return torch.where((u > 0) & (u < 1), u, (u >= 1).to(u.dtype))


@NEURONS.register("if")
class IF(LIF):
    """Integrate-and-fire: :class:`LIF` with the leak fixed to 1."""

    @classmethod
    def check_config(cls, config: NeuronConfig) -> None:
        if config.leak != 1.0:
            raise ValueError(f"neuron kind 'if' has no leak, got leak={config.leak}; use kind 'lif' "
                             f"or 'plif' for a leaky neuron")


@NEURONS.register("plif")
class PLIF(SpikingNeuron):
    """Parametric LIF (Fang et al. 2021): one learnable leak per layer, ``lambda = sigmoid(w)``,
    ``w`` initialised to ``logit(config.leak)``; charge ``h = lambda v + I`` as :class:`LIF` (the
    project's convention: the input is not scaled by ``1 - lambda``).

    Its leak is learnt, so no fixed spike representation is declared: DSR and IDE, which
    differentiate that map, reject it; BPTT and the online strategies train it.
    """

    def __init__(self, config: NeuronConfig | None = None) -> None:
        super().__init__(config or NeuronConfig(kind="plif", leak=0.5))
        self.check_config(self.config)
        self.w = nn.Parameter(torch.logit(torch.tensor(float(self.config.leak))))

    @classmethod
    def check_config(cls, config: NeuronConfig) -> None:
        if config.backend == "triton":
            raise ValueError("neuron kind 'plif' (learnt leak) runs on the torch back end: the fused "
                             "kernels take a fixed leak (valid: backend 'auto' or 'torch')")
        if not 0.0 < config.leak < 1.0:
            raise ValueError(f"neuron kind 'plif' learns its leak from the initial value leak in "
                             f"(0, 1), got leak={config.leak} (e.g. 0.5: tau = 2)")

    @property
    def leak(self) -> Tensor:
        return torch.sigmoid(self.w)

    def extra_repr(self) -> str:
        return (f"PLIF(leak={self.leak_value():.4g}), threshold={float(self.threshold):.4g}, "
                f"trainable={self.config.trainable_threshold}")


def build_neuron(config: NeuronConfig | None = None) -> SpikingNeuron:
    """A spiking layer of the kind ``config.kind`` (LIF for ``None``)."""
    config = config or NeuronConfig()
    return NEURONS.get(config.kind)(config)


def spiking_layers(module: nn.Module) -> list[SpikingNeuron]:
    """Every spiking layer of ``module``, in registration order."""
    return [m for m in module.modules() if isinstance(m, SpikingNeuron)]


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
def neuron_dynamics(module: nn.Module, dynamics: Dynamics) -> Iterator[None]:
    """Run every spiking layer of ``module`` with ``dynamics`` inside the block, then restore."""
    layers = spiking_layers(module)
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
