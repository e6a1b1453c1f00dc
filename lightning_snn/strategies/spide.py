"""SPIDE: the IDE adjoint computed by a second, spiking phase (Xiao et al., "SPIDE: A Purely
Spike-based Method for Training Feedback Spiking Neural Networks").

Forward: as IDE, the feedback SNN is simulated for T steps without a graph, giving the rate ``a*``
of the last layer. Backward: instead of a numerical solver, each layer ``l`` has backward neurons
with a signed state ``u_l`` (the paper's "ternary neuron couple" merged into one unit, as the
official code does). For T_b steps, with the loss gradient ``g = dL/da*`` injected every step::

    u_L += s * g + J_1^T s_1[t-1]            (feedback: layer 1 reads layer L one step later)
    u_l += J_{l+1}^T s_{l+1}[t]              (l < L, the spikes traverse the layers in reverse)
    s_l  = c * (1[u_l >= Vth_b] - 1[u_l <= -Vth_b]),   c = Vth_b - u_rest_b
    u_l -= s_l                               (reset by subtracting the spike)

where ``J_l^T s = (d I_l / d a_{l-1})^T (m_l * s / Vth)`` is the transposed op of layer ``l`` (a
vector-Jacobian product of its input current ``I_l`` at the forward rate ``a_{l-1}``, ``a_L`` for
layer 1) and ``s = grad_scale``. The mask is the official code's, ``m_l = 1[0 < a_l < 1]``
(strict) on the layer's forward *rate* ``a_l``, not the clamp mask of the map value ``I_l / Vth``:
a neuron silent or saturated in the SNN passes no gradient even where its map value lies inside
(0, 1). The signed rates ``beta_l = sum_t s_l[t] / (T_b * s)`` solve ``beta_L = g + J^T beta_L``
(IDE's adjoint equation, with that mask in J) up to the rate resolution ``c / T_b``: with the
default ``u_rest_b = -Vth_b`` the neurons round (``c = 2 Vth_b``), halving the error of flooring.
A unit's rate saturates at ``c``, so ``grad_scale`` (the official ``scale_factor``, 100-500) must
bring ``|g| * grad_scale`` into range; unlike the official scripts it is divided out again here,
so learning rate and weight decay keep their meaning.

Weights: the two-stage average-rate rule: layer ``l``'s parameters get
``(d I_l / d theta_l)^T (beta_l * m_l / Vth)`` from one vector-Jacobian product through its input
current driven by the forward rates (``dW_l = (beta_l * m_l) a_{l-1}^T / Vth`` for a linear op),
the input layer through the input current. Batch norm as in IDE: the simulation uses running
statistics, the one differentiable evaluation updates them, the backward phase uses batch
statistics.

Forward neurons: ``alpha`` sets where they fire, ``h >= alpha * Vth``, subtracting Vth
(``alpha = 1``: the model's own neurons, flooring). The official code's forward neuron fires at
Vth and subtracts 2 Vth (``u_rest = -Vth``), i.e. this project's threshold ``2 Vth`` with
``alpha = 0.5``, which rounds instead of flooring (rate error <= 1/(2T) instead of 1/T).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lightning_snn.models.feedback import BNMode, FeedbackContext, FeedbackSNN
from lightning_snn.neurons import SpikingNeuron
from lightning_snn.strategies.base import STRATEGIES, GradientStrategy


def firing_at(alpha: float) -> Callable[[SpikingNeuron, Tensor], Tensor]:
    """Single-step neuron dynamics (no graph) firing at ``alpha * Vth`` and subtracting Vth:
    ``h = lambda v + I``, ``s = 1[h >= alpha Vth]``, ``v = h - Vth s``; state kept per layer."""
    state: dict[SpikingNeuron, Tensor] = {}

    def step(layer: SpikingNeuron, i: Tensor) -> Tensor:
        v = state.get(layer)
        h = i if v is None else layer.leak_value() * v + i
        th = layer.vth().detach().to(h.dtype)
        s = (h >= alpha * th).to(h.dtype)
        state[layer] = h - th * s
        return s

    return step


class _SpikingAdjoint(torch.autograd.Function):
    """Value ``a*``; the incoming gradient ``g`` is turned into the layer adjoints ``beta_l``,
    handed to the per-layer graphs ``z_l`` (the inputs after ``a*``)."""

    @staticmethod
    def forward(ctx, a_star: Tensor, solve, *zs: Tensor) -> Tensor:  # type: ignore[override]
        ctx.solve = solve
        return a_star.detach().clone()

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        return (None, None, *ctx.solve(g))


@STRATEGIES.register("spide")
class SPIDE(GradientStrategy):
    """Args:
        T: forward simulation time steps.
        T_b: backward (adjoint) simulation time steps.
        Vth_b: threshold of the signed backward neurons.
        u_rest_b: their reset potential (default ``-Vth_b``: spikes of size ``2 Vth_b``, rounding).
        grad_scale: multiplies the loss gradient injected into the backward neurons (and divides
            the resulting rates), so that ``|g|`` is resolved by rates of resolution ``c / T_b``.
        alpha: forward neurons fire at ``alpha * Vth`` and subtract Vth (0.5: the official
            neuron, see the module docstring; 1: the model's neurons).
    """

    name = "spide"
    supported_kinds = frozenset({"feedback"})
    supported_neurons = frozenset({"if", "lif"})  # kinds that declare a spike representation

    def __init__(self, T: int, T_b: int = 250, Vth_b: float = 0.5, u_rest_b: float | None = None,
                 grad_scale: float = 1.0, alpha: float = 1.0) -> None:
        super().__init__(T)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        if isinstance(T_b, bool) or not isinstance(T_b, int) or T_b <= 0:
            raise ValueError(f"backward time steps T_b must be a positive integer, got {T_b!r}")
        if not Vth_b > 0:
            raise ValueError(f"backward threshold Vth_b must be > 0, got {Vth_b}")
        u_rest_b = -Vth_b if u_rest_b is None else u_rest_b
        if not u_rest_b < Vth_b:
            raise ValueError(f"u_rest_b must be below Vth_b={Vth_b}, got {u_rest_b}")
        if not grad_scale > 0:
            raise ValueError(f"grad_scale must be > 0, got {grad_scale}")
        self.T_b, self.Vth_b, self.u_rest_b, self.grad_scale = T_b, Vth_b, u_rest_b, grad_scale
        self.last_stats: dict[str, float] = {}

    def forward(self, model: FeedbackSNN, x: Tensor) -> Tensor:
        ctx = model.prepare(self.encode(x))
        step = None if self.alpha == 1.0 else firing_at(self.alpha)
        if not torch.is_grad_enabled():
            return model.readout(model.simulate(ctx, bn="running", step=step)).unsqueeze(0)
        with torch.no_grad():
            rates = model.simulate_layers(ctx, bn="running", step=step)
        return model.readout(self.implicit(model, ctx, rates)).unsqueeze(0)

    def implicit(self, model: FeedbackSNN, ctx: FeedbackContext, rates: list[Tensor]) -> Tensor:
        """``a* = a_L`` in value (``rates``: the forward rates ``[a_1, ..., a_L]``); its gradient
        reaches the parameters through the spiking adjoint."""
        L = len(model.neurons)
        ins = [rates[-1].detach()] + [a.detach() for a in rates[:-1]]  # layer inputs: a_L, a_1, ...
        masks = [((a > 0) & (a < 1)).to(a.dtype) for a in rates]  # m_l = 1[0 < a_l < 1]

        def masked(l: int, a: Tensor, bn: BNMode, detach: bool) -> Tensor:
            # layer l's map linearised with the rate mask: m_l * I_l(a) / Vth_l
            vth = model.neurons[l].vth()
            vth = vth.detach() if detach else vth
            return model.layer_current(l, a, ctx, bn, detach) * (masks[l] / vth)

        zs = [masked(l, ins[l], "update", False) for l in range(L)]  # with parameters
        leaves = [a.detach().requires_grad_() for a in ins]
        with torch.enable_grad():
            outs = [masked(l, leaves[l], "batch", True) for l in range(L)]

        def vjp(l: int, s: Tensor) -> Tensor:  # J_l^T s (s: adjoint of layer l's output)
            (out,) = torch.autograd.grad(outs[l], leaves[l], s, retain_graph=True)
            return out

        def solve(g: Tensor) -> list[Tensor]:
            with torch.no_grad():
                return self.spiking_adjoint(g, vjp, [o.shape for o in outs])

        return _SpikingAdjoint.apply(rates[-1], solve, *zs)

    def spiking_adjoint(self, g: Tensor, vjp, shapes: list[torch.Size]) -> list[Tensor]:
        """Run the signed backward neurons for T_b steps; return ``beta_l`` of every layer."""
        L, c = len(shapes), self.Vth_b - self.u_rest_b
        u = [g.new_zeros(s) for s in shapes]
        total = [g.new_zeros(s) for s in shapes]
        s_prev = [g.new_zeros(s) for s in shapes]
        drive = g * self.grad_scale
        for _ in range(self.T_b):
            s_new: list[Tensor | None] = [None] * L
            for l in range(L - 1, -1, -1):
                # the last layer reads layer 1 of the previous step, the others the next layer now
                inp = drive + vjp(0, s_prev[0]) if l == L - 1 else vjp(l + 1, s_new[l + 1])
                u[l] = u[l] + inp
                s = c * ((u[l] >= self.Vth_b).to(g.dtype) - (u[l] <= -self.Vth_b).to(g.dtype))
                u[l] = u[l] - s
                total[l] = total[l] + s
                s_new[l] = s
            s_prev = s_new  # type: ignore[assignment]
        rates = [t / (self.T_b * c) for t in total]  # signed firing rates in [-1, 1]
        self.last_stats = {
            "spide/backward_rate": float(sum(r.abs().mean() for r in rates) / L),
            "spide/saturated": float(sum((r.abs() >= 1).to(g.dtype).mean() for r in rates) / L),
        }
        return [t / (self.T_b * self.grad_scale) for t in total]

    def step_metrics(self) -> dict[str, float]:
        stats, self.last_stats = self.last_stats, {}
        return stats
