"""The multi-step neuron op in plain torch: the same math as the Triton kernels, vectorised over
the neurons with a Python loop over T. It runs the op wherever the kernels cannot (a CPU tensor
without Triton's interpreter, or no Triton at all) and documents the kernels' arithmetic.

Forward and backward are written out (no autograd graph); see ``neuron_triton`` for the equations.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_snn.kernels.common import ATAN, RECTANGLE, SIGMOID, TRIANGLE, state_dtype


def _rows(x: Tensor) -> list[Tensor]:
    return [x[t].reshape(-1) for t in range(x.shape[0])]


def surrogate_grad(u: Tensor, kind: int, c0: float, c1: float) -> Tensor:
    """Surrogate derivative at ``u = h - Vth`` with the kernels' constants (``surrogate_constants``)."""
    if kind == SIGMOID:
        sig = torch.sigmoid(c0 * u)
        return c0 * sig * (1.0 - sig)
    if kind == ATAN:
        return c0 / (1.0 + (c1 * u) ** 2)
    if kind == RECTANGLE:
        return c0 * (u.abs() < c1).to(u.dtype)
    if kind == TRIANGLE:
        return (c0 - c1 * u.abs()).clamp(min=0.0)
    raise ValueError(f"unknown surrogate id {kind}")


def lif_forward(x: Tensor, vth: Tensor, leak: float, fire_scale: float, save_h: bool
                ) -> tuple[Tensor, Tensor]:
    """Spikes ``[T, ...]`` in x's dtype and (``save_h``) the charged potential ``h`` in the state
    dtype, else an empty tensor."""
    acc = state_dtype(x.dtype)
    th = vth.detach().to(acc)
    fire = th * fire_scale
    s_out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    h_out = torch.empty(x.shape if save_h else (0,), dtype=acc, device=x.device)
    s_flat, h_flat = s_out.view(x.shape[0], -1), h_out.view(x.shape[0], -1) if save_h else None
    v = None
    for t, xt in enumerate(_rows(x)):
        xt = xt.to(acc)
        h = xt if v is None else leak * v + xt  # h[t] = lambda v[t-1] + x[t]
        s = ((h - fire) >= 0).to(acc)  # s[t] = H(h[t] - Vf)
        v = h - th * s  # v[t] = h[t] - Vth s[t]
        s_flat[t] = s
        if save_h:
            h_flat[t] = h
    return s_out, h_out


def lif_backward(grad_s: Tensor, saved: Tensor, vth: Tensor, leak: float, kind: int, c0: float,
                 c1: float, detach_reset: bool, recompute: bool, vth_grad: bool
                 ) -> tuple[Tensor, Tensor]:
    """``dL/dx`` (saved's dtype) and ``dL/dVth`` (0-dim, state dtype; zero unless ``vth_grad``).
    ``saved`` is ``h`` or, with ``recompute``, the input ``x`` (the forward is re-run from it)."""
    acc = state_dtype(saved.dtype)
    th = vth.detach().to(acc)
    hs = _rows(lif_forward(saved, vth, leak, 1.0, True)[1]) if recompute else _rows(saved)
    gs_rows = _rows(grad_s)
    gx = torch.empty(grad_s.shape, dtype=saved.dtype, device=saved.device)
    gx_flat = gx.view(grad_s.shape[0], -1)
    gv = torch.zeros_like(hs[0])
    gth = torch.zeros_like(hs[0])
    for t in range(len(hs) - 1, -1, -1):
        gs = gs_rows[t].to(acc)
        u = hs[t] - th
        sg = surrogate_grad(u, kind, c0, c1)
        gh = gv + (gs if detach_reset else gs - th * gv) * sg  # dL/dh[t]
        gx_flat[t] = gh
        if vth_grad:
            gth += -(gh - gv) - gv * (u >= 0).to(acc)
        gv = leak * gh
    return gx, gth.sum()
