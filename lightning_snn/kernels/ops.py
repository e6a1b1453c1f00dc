"""The multi-step neuron as torch custom ops, so ``torch.compile`` sees one node per neuron layer
(forward and backward) instead of a loop unrolled T times.

``lightning_snn::lif_multistep`` (forward) and ``lightning_snn::lif_multistep_backward`` run

- the Triton kernels (``neuron_triton``) on CUDA tensors, and on CPU tensors when the kernels
  were built under Triton's interpreter (``TRITON_INTERPRET=1`` set before triton was imported);
- otherwise (CPU without the interpreter, or no Triton) the same math as a torch loop over T
  (``neuron_torch``).

What the backward needs is saved, nothing more: ``h [T, ...]`` for fp32 / fp64 input; for fp16 /
bf16 input the input itself (the backward kernel re-runs the forward into an fp32 scratch, so the
saved tensor has the input's size and the state stays fp32).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_snn.kernels import neuron_torch
from lightning_snn.kernels.common import INPUT_DTYPES, SURROGATE_IDS, state_dtype, surrogate_constants

try:
    from lightning_snn.kernels import neuron_triton
except ImportError:  # no Triton: the torch loop runs the op everywhere
    neuron_triton = None  # type: ignore[assignment]

BLOCK = 1024  # neurons per program
NUM_WARPS = 4


def triton_available() -> bool:
    """Whether Triton imports (the kernels exist)."""
    return neuron_triton is not None


def interpreted() -> bool:
    """Whether the kernels run under Triton's CPU interpreter."""
    return neuron_triton is not None and neuron_triton.interpreted()


def kernels_run_on(x: Tensor) -> bool:
    """Whether the op runs the Triton kernels (not the torch loop) for tensors like ``x``."""
    return neuron_triton is not None and (x.is_cuda or (x.device.type == "cpu" and interpreted()))


def _layout(x: Tensor) -> tuple[Tensor, int]:
    """``x`` and the element stride between its time steps: any ``[T, ...]`` whose step ``x[t]``
    is one packed block is read in place (a direct-encoded input has stride 0 in time); anything
    else is made contiguous once."""
    if not x[0].is_contiguous():
        x = x.contiguous()
    return x, (x.stride(0) if x.shape[0] > 1 else 0)


def _grid(n: int) -> tuple[int]:
    return ((n + BLOCK - 1) // BLOCK,)


# ------------------------------------------------------------------------------------- forward
@torch.library.custom_op("lightning_snn::lif_multistep", mutates_args=())
def lif_multistep_op(x: Tensor, vth: Tensor, leak: float, fire_scale: float, surrogate: int,
                     alpha: float, detach_reset: bool, save_h: bool) -> tuple[Tensor, Tensor]:
    """Spikes ``[T, ...]`` (x's dtype) and ``h`` (state dtype; empty unless ``save_h``).
    ``surrogate`` / ``alpha`` / ``detach_reset`` are used by the backward only."""
    if not kernels_run_on(x):
        return neuron_torch.lif_forward(x, vth, leak, fire_scale, save_h)
    x, stride_t = _layout(x)
    T, n = x.shape[0], x[0].numel()
    s = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    h = torch.empty(x.shape if save_h else (0,), dtype=state_dtype(x.dtype), device=x.device)
    if n:
        neuron_triton.lif_forward_kernel[_grid(n)](
            x, s, h, vth.detach(), T, n, stride_t, leak, fire_scale, SAVE_H=save_h, BLOCK=BLOCK,
            num_warps=NUM_WARPS, enable_fp_fusion=False)
    return s, h


@lif_multistep_op.register_fake
def _(x, vth, leak, fire_scale, surrogate, alpha, detach_reset, save_h):
    s = x.new_empty(x.shape)
    return s, x.new_empty(x.shape if save_h else (0,), dtype=state_dtype(x.dtype))


# ------------------------------------------------------------------------------------ backward
@torch.library.custom_op("lightning_snn::lif_multistep_backward", mutates_args=())
def lif_multistep_backward_op(grad_s: Tensor, saved: Tensor, vth: Tensor, leak: float,
                              surrogate: int, alpha: float, detach_reset: bool, recompute: bool,
                              vth_grad: bool) -> tuple[Tensor, Tensor]:
    """``dL/dx`` (saved's dtype, the input's) and ``dL/dVth`` (0-dim, vth's dtype; zero unless
    ``vth_grad``) from ``dL/ds``. ``saved``: ``h``, or the input ``x`` with ``recompute``."""
    c0, c1 = surrogate_constants(surrogate, alpha)
    if not kernels_run_on(saved):
        gx, gth = neuron_torch.lif_backward(grad_s, saved, vth, leak, surrogate, c0, c1,
                                            detach_reset, recompute, vth_grad)
        return gx, gth.to(vth.dtype)
    grad_s = grad_s.contiguous()
    acc = state_dtype(saved.dtype)
    T, n = grad_s.shape[0], grad_s[0].numel()
    if recompute:
        x, stride_t = _layout(saved)
        h = torch.empty(grad_s.shape, dtype=acc, device=grad_s.device)  # scratch
    else:
        x, stride_t, h = saved, 0, saved.contiguous()
    gx = torch.empty(grad_s.shape, dtype=saved.dtype, device=grad_s.device)
    grid = _grid(n)
    partial = torch.zeros(grid[0] if vth_grad else 1, dtype=acc, device=grad_s.device)
    if n:
        neuron_triton.lif_backward_kernel[grid](
            grad_s, h, x, gx, partial, vth.detach(), T, n, stride_t, (T - 1) * n, leak, c0, c1,
            SURROGATE=surrogate, DETACH_RESET=detach_reset, RECOMPUTE=recompute,
            VTH_GRAD=vth_grad, BLOCK=BLOCK, num_warps=NUM_WARPS, enable_fp_fusion=False)
    return gx, partial.sum().to(vth.dtype)


@lif_multistep_backward_op.register_fake
def _(grad_s, saved, vth, leak, surrogate, alpha, detach_reset, recompute, vth_grad):
    return grad_s.new_empty(grad_s.shape, dtype=saved.dtype), vth.new_empty(())


# ------------------------------------------------------------------------------------ autograd
def _setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    x, vth, leak, fire_scale, surrogate, alpha, detach_reset, save_h = inputs
    _, h = output
    ctx.recompute = not save_h
    ctx.args = (leak, fire_scale, surrogate, alpha, detach_reset)
    ctx.save_for_backward(x if ctx.recompute else h, vth)
    ctx.mark_non_differentiable(h)  # saved state, not a result
    ctx.set_materialize_grads(False)  # no zero [T, ...] gradient made up for h in backward


def _backward(ctx, grad_s: Tensor, grad_h: Tensor):  # type: ignore[no-untyped-def]
    if grad_s is None:
        return (None,) * 8
    saved, vth = ctx.saved_tensors
    leak, fire_scale, surrogate, alpha, detach_reset = ctx.args
    if fire_scale != 1.0:
        raise RuntimeError(f"the surrogate backward assumes firing at Vth, got fire_scale={fire_scale}")
    gx, gth = torch.ops.lightning_snn.lif_multistep_backward(
        grad_s, saved, vth, leak, surrogate, alpha, detach_reset, ctx.recompute,
        ctx.needs_input_grad[1])
    return gx, (gth if ctx.needs_input_grad[1] else None), None, None, None, None, None, None


lif_multistep_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------ wrappers
def _check(x: Tensor, vth: Tensor) -> Tensor:
    """The threshold as a 0-dim tensor on x's device, after checking both."""
    if x.dim() < 1 or x.shape[0] == 0 or x.dtype not in INPUT_DTYPES:
        raise ValueError(f"neuron input must be a floating [T, ...] tensor of one of {INPUT_DTYPES}, "
                         f"got {x.dtype} of shape {tuple(x.shape)}")
    if vth.numel() != 1:
        raise ValueError(f"the threshold must be one value per layer, got shape {tuple(vth.shape)}")
    return vth.reshape(()).to(x.device)


def lif_multistep(x: Tensor, vth: Tensor, leak: float, surrogate: str = "sigmoid",
                  alpha: float = 4.0, detach_reset: bool = False) -> Tensor:
    """Spikes of the IF / LIF neuron over ``x [T, ...]`` from rest, differentiable in ``x`` and
    ``vth`` with the named surrogate: the fused equivalent of ``LIF.forward``'s torch loop."""
    if surrogate not in SURROGATE_IDS:
        raise ValueError(f"unknown surrogate {surrogate!r}; valid choices: {sorted(SURROGATE_IDS)}")
    vth = _check(x, vth)
    need_grad = torch.is_grad_enabled() and (x.requires_grad or vth.requires_grad)
    save_h = need_grad and state_dtype(x.dtype) == x.dtype
    s, _ = torch.ops.lightning_snn.lif_multistep(x, vth, float(leak), 1.0,
                                                  SURROGATE_IDS[surrogate], float(alpha),
                                                  bool(detach_reset), save_h)
    return s


def lif_fire(x: Tensor, vth: Tensor, leak: float, fire_scale: float = 1.0) -> Tensor:
    """Spikes only (no gradient): fire at ``fire_scale * Vth``, subtract ``Vth`` (DSR's forward)."""
    vth = _check(x, vth.detach())
    s, _ = torch.ops.lightning_snn.lif_multistep(x.detach(), vth, float(leak),
                                                  float(fire_scale), 0, 1.0, False, False)
    return s
