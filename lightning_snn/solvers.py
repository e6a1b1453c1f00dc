"""Solvers for the linear fixed-point problem of the IDE adjoint: ``g = J^T g + v``.

Each takes the map ``G(g) = J^T g + v`` (a vector-Jacobian product plus a constant) and returns the
solution together with a ``SolverInfo``. The whole batch is one unknown vector: with batch
statistics in the equivalent map the Jacobian couples samples, so per-sample solves would be wrong.
Every solver returns its lowest-residual iterate; the residual is ``|G(g) - g| / |v|``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_snn.registry import Registry

Map = Callable[[Tensor], Tensor]


@dataclass
class SolverInfo:
    residual: float  # relative residual of the returned iterate
    iterations: int
    converged: bool


class _Best:
    """Keeps the lowest-residual finite iterate."""

    def __init__(self, scale: float) -> None:
        self.scale, self.x, self.residual = scale, None, float("inf")

    def offer(self, x: Tensor, gx: Tensor) -> float:
        r = float((gx - x).norm()) / self.scale
        if r < self.residual:  # NaN never compares smaller
            self.x, self.residual = x, r
        return r


def fixed_point(G: Map, v: Tensor, max_iter: int = 50, tol: float = 1e-6) -> tuple[Tensor, SolverInfo]:
    """Plain iteration ``g <- J^T g + v`` (the Neumann series); converges when ``rho(J) < 1``."""
    best = _Best(float(v.norm()) + 1e-30)
    x = v
    for k in range(1, max_iter + 1):
        gx = G(x)
        if best.offer(x, gx) <= tol:
            return best.x, SolverInfo(best.residual, k, True)
        x = gx
    return _finish(best, max_iter, tol)


def anderson(
    G: Map, v: Tensor, max_iter: int = 50, tol: float = 1e-6, memory: int = 5, reg: float = 1e-8
) -> tuple[Tensor, SolverInfo]:
    """Anderson acceleration (type II) of the fixed-point iteration with ``memory`` past iterates."""
    best = _Best(float(v.norm()) + 1e-30)
    x = v.flatten()
    xs, fs = [], []  # iterates and their residuals f = G(x) - x
    for k in range(1, max_iter + 1):
        gx = G(x.view_as(v)).flatten()
        if best.offer(x, gx) <= tol:
            return best.x.view_as(v), SolverInfo(best.residual, k, True)
        xs.append(x)
        fs.append(gx - x)
        xs, fs = xs[-memory - 1:], fs[-memory - 1:]
        if len(fs) == 1:
            x = gx
            continue
        # minimise |f_k - dF gamma| over gamma, dF = differences of residuals
        dF = torch.stack([fs[i + 1] - fs[i] for i in range(len(fs) - 1)], 1)
        dX = torch.stack([xs[i + 1] - xs[i] for i in range(len(xs) - 1)], 1)
        A = dF.T @ dF
        A = A + reg * A.diagonal().mean().clamp_min(1e-30) * torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
        gamma = torch.linalg.solve(A, dF.T @ fs[-1])
        x = x + fs[-1] - (dX + dF) @ gamma
    return _finish(best, max_iter, tol, shape=v)


def broyden(G: Map, v: Tensor, max_iter: int = 50, tol: float = 1e-6, memory: int = 30) -> tuple[Tensor, SolverInfo]:
    """Broyden's ("good") method on ``F(g) = G(g) - g = 0`` with a low-rank inverse Jacobian,
    starting from ``g = 0`` with ``B_0 = -I`` as in DEQ-style implicit models."""
    best = _Best(float(v.norm()) + 1e-30)
    x = torch.zeros_like(v).flatten()
    fx = G(x.view_as(v)).flatten() - x
    best.offer(x, fx + x)
    us, vs = [], []  # B^{-1} = -I + sum_i u_i v_i^T

    def inv(y: Tensor) -> Tensor:
        out = -y
        for u_i, v_i in zip(us, vs):
            out = out + u_i * (v_i @ y)
        return out

    def inv_t(y: Tensor) -> Tensor:
        out = -y
        for u_i, v_i in zip(us, vs):
            out = out + v_i * (u_i @ y)
        return out

    for k in range(1, max_iter + 1):
        if best.residual <= tol:
            return best.x.view_as(v), SolverInfo(best.residual, k, True)
        dx = -inv(fx)
        x_new = x + dx
        f_new = G(x_new.view_as(v)).flatten() - x_new
        best.offer(x_new, f_new + x_new)
        df = f_new - fx
        # rank-one update of the inverse: B^{-1} += (dx - B^{-1} df) dx^T B^{-1} / (dx^T B^{-1} df)
        inv_df = inv(df)
        denom = dx @ inv_df
        if denom.abs() > 1e-30:
            us.append((dx - inv_df) / denom)
            vs.append(inv_t(dx))
            us, vs = us[-memory:], vs[-memory:]
        x, fx = x_new, f_new
    return _finish(best, max_iter, tol, shape=v)


def _finish(best: _Best, iters: int, tol: float, shape: Tensor | None = None) -> tuple[Tensor, SolverInfo]:
    if best.x is None:
        raise FloatingPointError(
            "IDE adjoint solver diverged: no finite iterate (the equivalent map is not contractive; "
            "lower the feedback norm_range or raise the threshold)"
        )
    x = best.x if shape is None else best.x.view_as(shape)
    return x, SolverInfo(best.residual, iters, best.residual <= tol)


SOLVERS: Registry[Callable[..., tuple[Tensor, SolverInfo]]] = Registry("solver")
for _name, _fn in (("fixed_point", fixed_point), ("anderson", anderson), ("broyden", broyden)):
    SOLVERS.register(_name)(_fn)
