"""Triton kernels of the multi-step IF / LIF neuron: one launch per layer and direction.

Each program owns ``BLOCK`` neurons of the flattened input ``[T, N]`` and loops over the T steps
inside the kernel with the membrane state in registers (fp32; fp64 for fp64 input). Dynamics
(``lightning_snn.neurons``), with fire level ``Vf = fire_scale * Vth``::

    h[t] = lambda * v[t-1] + x[t]          (charge)
    s[t] = H(h[t] - Vf)                    (fire; fire_scale = 1 for IF / LIF, DSR's alpha)
    v[t] = h[t] - Vth * s[t]               (reset by subtraction)

Backward (fire_scale = 1), ``sg`` the surrogate derivative at ``u[t] = h[t] - Vth``, gv the
gradient reaching v[t] from step t+1 (0 at the last step), ``r = 0`` with ``detach_reset``, else 1::

    dL/dh[t]   = gv + (dL/ds[t] - r * Vth * gv) * sg
    dL/dx[t]   = dL/dh[t],          gv <- lambda * dL/dh[t]   (for step t-1)
    dL/dVth   += -(dL/dh[t] - gv) - gv * s[t]                  (through the fire and the reset)

The threshold gradient is reduced without atomics: one partial sum per program, summed by torch.
The kernels are launched with ``enable_fp_fusion=False`` so ``lambda * v + x`` rounds the way
the torch loop does (no fused multiply-add): the spikes then equal the torch path's bit for bit.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction


@triton.jit
def _surrogate(u, c0, c1, SURROGATE: tl.constexpr):
    # ids and constants: lightning_snn.kernels.common (SIGMOID = 0, ATAN = 1, RECTANGLE = 2,
    # TRIANGLE = 3)
    # sigmoid:   c0 = alpha:            alpha * sig(alpha u) * (1 - sig(alpha u))
    # atan:      c0 = alpha / 2, c1 = pi / 2 * alpha:   c0 / (1 + (c1 u)^2)
    # rectangle: c0 = alpha, c1 = 0.5 / alpha:          c0 * [|u| < c1]
    # triangle:  c0 = alpha, c1 = alpha^2:              max(0, c0 - c1 |u|)
    if SURROGATE == 0:
        sig = tl.sigmoid(c0 * u)
        return c0 * sig * (1.0 - sig)
    elif SURROGATE == 1:
        z = c1 * u
        return c0 / (1.0 + z * z)
    elif SURROGATE == 2:
        return tl.where(tl.abs(u) < c1, c0, 0.0)
    else:
        return tl.maximum(c0 - c1 * tl.abs(u), 0.0)


@triton.jit
def _narrow(x, dtype: tl.constexpr):
    # fp32 -> bf16 rounded to nearest even by hand, as torch's .to() rounds (Triton's CPU
    # interpreter truncates in its own cast): add 0x7FFF + the lowest kept bit, keep the top half
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits += 0x7FFF + ((bits >> 16) & 1)
        rounded = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        return tl.where(x == x, rounded, x.to(tl.bfloat16))  # NaN stays NaN
    else:
        return x.to(dtype)


@triton.jit
def lif_forward_kernel(x_ptr, s_ptr, h_ptr, vth_ptr, T, N, x_stride_t, leak, fire_scale,
                       SAVE_H: tl.constexpr, BLOCK: tl.constexpr):
    """Spikes ``s [T, N]`` (x's dtype) from input ``x`` (row t at ``x_ptr + t * x_stride_t``,
    0 for a direct-encoded input); with ``SAVE_H`` also ``h [T, N]`` in the state dtype."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    acc = h_ptr.dtype.element_ty  # state dtype
    vth = tl.load(vth_ptr).to(acc)
    fire = vth * fire_scale
    v = tl.zeros([BLOCK], dtype=acc)
    xp, sp, hp = x_ptr + offs, s_ptr + offs, h_ptr + offs
    for _ in range(T):
        x = tl.load(xp, mask=mask, other=0.0).to(acc)
        h = leak * v + x
        spk = (h - fire) >= 0.0
        s = spk.to(acc)
        v = h - vth * s
        tl.store(sp, s.to(s_ptr.dtype.element_ty), mask=mask)
        if SAVE_H:
            tl.store(hp, h, mask=mask)
        xp += x_stride_t
        sp += N
        hp += N


@triton.jit
def lif_backward_kernel(gs_ptr, h_ptr, x_ptr, gx_ptr, gvth_ptr, vth_ptr, T, N, x_stride_t, last,
                        leak, c0, c1, SURROGATE: tl.constexpr, DETACH_RESET: tl.constexpr,
                        RECOMPUTE: tl.constexpr, VTH_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    """``dL/dx [T, N]`` from ``dL/ds [T, N]``, reverse in time, and one partial sum of ``dL/dVth``
    per program into ``gvth_ptr[pid]``. With ``RECOMPUTE`` the forward is first re-run from ``x``
    into the scratch ``h_ptr`` (low-precision inputs save ``x`` instead of an fp32 ``h``).
    ``last = (T - 1) * N``, computed on the host in 64 bits."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    acc = h_ptr.dtype.element_ty
    vth = tl.load(vth_ptr).to(acc)
    if RECOMPUTE:
        v = tl.zeros([BLOCK], dtype=acc)
        xp, hp = x_ptr + offs, h_ptr + offs
        for _ in range(T):
            h = leak * v + tl.load(xp, mask=mask, other=0.0).to(acc)
            v = h - vth * ((h - vth) >= 0.0).to(acc)
            tl.store(hp, h, mask=mask)
            xp += x_stride_t
            hp += N
    gp, hp, xp = gs_ptr + last + offs, h_ptr + last + offs, gx_ptr + last + offs
    gv = tl.zeros([BLOCK], dtype=acc)
    gth = tl.zeros([BLOCK], dtype=acc)
    for _ in range(T):
        gs = tl.load(gp, mask=mask, other=0.0).to(acc)
        u = tl.load(hp, mask=mask, other=0.0).to(acc) - vth
        sg = _surrogate(u, c0, c1, SURROGATE)
        if DETACH_RESET:
            gh = gv + gs * sg
        else:
            gh = gv + (gs - vth * gv) * sg
        tl.store(xp, _narrow(gh, gx_ptr.dtype.element_ty), mask=mask)
        if VTH_GRAD:
            s = (u >= 0.0).to(acc)
            gth += tl.where(mask, -(gh - gv) - gv * s, 0.0)
        gv = leak * gh
        gp -= N
        hp -= N
        xp -= N
    if VTH_GRAD:
        tl.store(gvth_ptr + pid, tl.sum(gth, axis=0))


def interpreted() -> bool:
    """True when these kernels run under Triton's CPU interpreter (``TRITON_INTERPRET=1`` was set
    before this module was imported): they then accept CPU tensors."""
    return isinstance(lif_forward_kernel, InterpretedFunction)
