"""IDE: implicit differentiation on the equilibrium state of a feedback SNN.

Forward: simulate the SNN for T steps without a graph and take its weighted firing rate ``a*``.
Backward: with ``J = df/da`` at ``a*``, solve the adjoint ``g = J^T g + dL/da`` and back-propagate
``g`` through one evaluation of the equivalent map ``f(a*, x)``, so ``dL/dtheta = g^T df/dtheta``.
Memory does not depend on T: only the graph of ``f`` (and of the input current) is kept. ``f`` is
built from the neuron kind's declared spike representation (``SpikingNeuron.rate_map``), so kinds
without one (PLIF) are rejected.

Batch norm: the simulation uses the running statistics; the one differentiable evaluation of
``f`` uses the batch statistics of the rates and updates the running ones, exactly once per
training step; the adjoint's vector-Jacobian products use batch statistics without updating.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import Tensor

from lightning_snn.models.feedback import FeedbackContext, FeedbackSNN
from lightning_snn.solvers import SOLVERS, SolverInfo
from lightning_snn.strategies.base import STRATEGIES, GradientStrategy

TOL_MODES = ("relative", "absolute")


@STRATEGIES.register("ide")
class IDE(GradientStrategy):
    """Args:
        T: simulation time steps.
        solver: ``broyden``, ``anderson`` or ``fixed_point`` for the adjoint equation.
        max_iter: iteration cap of the solver.
        tol: the solver's stopping tolerance, read according to ``tol_mode``.
        tol_mode: ``relative``: stop at ``|J^T g + v - g| <= tol * |v|``; ``absolute``: stop at
            ``|J^T g + v - g| <= tol * sqrt(numel(v))`` (the official IDE code's
            ``eps = 2e-10 * sqrt(B * d)`` is ``tol: 2e-10, tol_mode: absolute``; it is practically
            never reached, so the solver runs its ``max_iter`` iterations).

    ``step_metrics`` reports the solver's iterations and its relative and absolute residuals.
    """

    supported_kinds = frozenset({"feedback"})
    supported_neurons = frozenset({"if", "lif"})  # kinds that declare a spike representation

    def __init__(self, T: int, solver: str = "broyden", max_iter: int = 30, tol: float = 1e-5,
                 tol_mode: Literal["relative", "absolute"] = "relative") -> None:
        super().__init__(T)
        if tol_mode not in TOL_MODES:
            raise ValueError(f"tol_mode must be one of {TOL_MODES}, got {tol_mode!r}")
        self.solve = SOLVERS.get(solver)
        if max_iter <= 0:
            raise ValueError(f"max_iter must be > 0, got {max_iter}")
        if not tol > 0:
            raise ValueError(f"tol must be > 0, got {tol}")
        self.solver, self.max_iter, self.tol, self.tol_mode = solver, max_iter, tol, tol_mode
        self.last_info: SolverInfo | None = None
        self.last_scale = 1.0  # |v| of the last solve: absolute residual = relative * |v|

    def forward(self, model: FeedbackSNN, x: Tensor) -> Tensor:
        ctx = model.prepare(self.encode(x))
        with torch.no_grad():
            a_star = model.simulate(ctx, bn="running")
        if not torch.is_grad_enabled():
            return model.readout(a_star).unsqueeze(0)
        return model.readout(self.implicit(model, ctx, a_star)).unsqueeze(0)

    def implicit(self, model: FeedbackSNN, ctx: FeedbackContext, a_star: Tensor) -> Tensor:
        """``a*`` in value, with the implicit gradient attached through one evaluation of ``f``."""
        z = model.equilibrium_map(a_star, ctx, bn="update")
        a0 = a_star.detach().requires_grad_()
        f0 = model.equilibrium_map(a0, ctx, bn="batch", detach=True)

        def adjoint(grad: Tensor) -> Tensor:
            def G(g: Tensor) -> Tensor:  # J^T g + dL/da
                (vjp,) = torch.autograd.grad(f0, a0, g, retain_graph=True)
                return vjp + grad

            scale = float(grad.norm()) + 1e-30
            tol = self.tol if self.tol_mode == "relative" else self.tol * grad.numel() ** 0.5 / scale
            g, info = self.solve(G, grad, max_iter=self.max_iter, tol=tol)
            self.last_info, self.last_scale = info, scale
            if not info.converged and self.tol_mode == "relative":
                # an absolute tolerance as small as the official one is not meant to be reached
                warnings.warn(
                    f"IDE adjoint solver {self.solver!r} did not reach tol={self.tol:g}: relative "
                    f"residual {info.residual:.3g} after {info.iterations} iterations",
                    RuntimeWarning, stacklevel=2,
                )
            return g

        z.register_hook(adjoint)
        return a_star.detach() + (z - z.detach())

    def step_metrics(self) -> dict[str, float]:
        info, self.last_info = self.last_info, None
        if info is None:
            return {}
        return {"ide/residual": info.residual, "ide/abs_residual": info.residual * self.last_scale,
                "ide/iterations": float(info.iterations)}
