"""Synaptic layers that know about time.

Stateless ops (conv, linear, batch norm, pooling) run on the folded ``[T*B, ...]`` view of a
``[T, B, ...]`` sequence, so batch-norm statistics of a multi-step forward span all T*B samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TimeDistributed(nn.Sequential):
    """Apply stateless modules to every time step of a ``[T, B, ...]`` tensor at once.

    A direct-encoded input is the same image at every step (an ``expand``-ed tensor with stride 0
    in time); the ops then run once on ``[B, ...]`` and the result is expanded again, which is the
    same value T times cheaper (batch-norm means and biased variances of T copies equal those of
    one copy).
    """

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        T, B = x.shape[:2]
        if T > 1 and x.stride(0) == 0:
            y = super().forward(x[0])
            return y.unsqueeze(0).expand(T, *y.shape)
        y = super().forward(x.reshape(T * B, *x.shape[2:]))
        return y.reshape(T, B, *y.shape[1:])


# --------------------------------------------------------------------------------------------------
# Trace-aware synapses (OTTT). Off by default (``trace_leak is None``): plain nn.Linear / nn.Conv2d,
# same parameters and state-dict keys. With a leak set, each call is one time step: the layer keeps
# the presynaptic trace a[t] = leak * a[t-1] + x[t] (no gradient) and its weight gradient is
# (postsynaptic error) x (trace) instead of (postsynaptic error) x (input).
# --------------------------------------------------------------------------------------------------


class _TraceGrad(torch.autograd.Function):
    """y = op(x; W, b) in the forward; in the backward dL/dx = op^T(g) and dL/dW from the trace.

    The op is linear in ``x``, so the input gradient does not need ``x`` itself: only the trace and
    the weight are saved (no spikes, no batch concatenation of spikes and traces).
    """

    @staticmethod
    def forward(ctx, x: Tensor, trace: Tensor, weight: Tensor, bias: Tensor | None, layer: nn.Module):  # type: ignore[override]
        ctx.layer = layer
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        ctx.has_bias = bias is not None
        ctx.save_for_backward(trace, weight)
        return layer._op(x, weight, bias)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        trace, weight = ctx.saved_tensors
        need_x, _, need_w, need_b, _ = ctx.needs_input_grad
        dt = g.dtype  # under autocast the op ran in lower precision: compute the backward in it
        gx, gw, gb = ctx.layer._op_backward(
            g, trace.to(dt), weight.to(dt), ctx.x_shape, (need_x, need_w, need_b and ctx.has_bias)
        )
        cast = lambda t, d: None if t is None else t.to(d)  # noqa: E731
        return cast(gx, ctx.x_dtype), None, cast(gw, weight.dtype), cast(gb, weight.dtype), None


class TraceSynapse:
    """Mixin of the trace state and the switch between plain and trace-gradient forward."""

    trace_leak: float | None
    trace: Tensor | None
    # False for a synapse whose input is not spikes (NF-ResNet's read-out of the residual stream):
    # OTTT leaves it plain (instantaneous input in its weight gradient), as the official code
    reads_spikes: bool = True

    def _init_trace(self) -> None:
        self.trace_leak = None
        self.trace = None

    def effective_weight(self) -> Tensor:
        """The weight the op uses (overridden by weight-standardised layers)."""
        return self.weight  # type: ignore[attr-defined]

    def reset_trace(self) -> None:
        self.trace = None

    def forward(self, x: Tensor) -> Tensor:
        w = self.effective_weight()
        if self.trace_leak is None:
            return self._op(x, w, self.bias)  # type: ignore[attr-defined]
        xd = x.detach()
        # a[t] = lambda * a[t-1] + x[t], kept out of the graph
        self.trace = xd if self.trace is None else self.trace_leak * self.trace + xd
        if not torch.is_grad_enabled():
            return self._op(x, w, self.bias)  # type: ignore[attr-defined]
        return _TraceGrad.apply(x, self.trace, w, self.bias, self)


class TraceLinear(TraceSynapse, nn.Linear):
    """``nn.Linear`` that can take its weight gradient from a presynaptic trace (OTTT)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_trace()

    def _op(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return F.linear(x, w, b)

    def _op_backward(self, g, trace, w, x_shape, need):  # type: ignore[no-untyped-def]
        g2 = g.reshape(-1, g.shape[-1])
        gx = (g @ w) if need[0] else None  # dL/dx = g W
        gw = g2.t() @ trace.reshape(-1, trace.shape[-1]) if need[1] else None  # dL/dW = g^T a
        gb = g2.sum(0) if need[2] else None
        return gx, gw, gb


class TraceConv2d(TraceSynapse, nn.Conv2d):
    """``nn.Conv2d`` (zero padding) that can take its weight gradient from a presynaptic trace."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError("TraceConv2d supports numeric zero padding only")
        self._init_trace()

    def _op(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def _op_backward(self, g, trace, w, x_shape, need):  # type: ignore[no-untyped-def]
        # one fused call: dL/dx = conv^T(g; W) (independent of x), dL/dW = corr(g, a), dL/db = sum g
        gx, gw, gb = torch.ops.aten.convolution_backward(
            g, trace, w, [w.shape[0]] if need[2] else None, self.stride, self.padding,
            self.dilation, False, [0, 0], self.groups, list(need),
        )
        return gx, gw, gb


class ScaledWSConv2d(TraceConv2d):
    """Conv with scaled weight standardisation (OTTT's VGG(sWS) / VGG-F, OTTT's and SLTT's
    NF-ResNets), used instead of BN::

        W_hat = gain * (W - mean) / sqrt(var * fan_in + eps)

    with the statistics over each output channel's ``fan_in = C_in * k * k`` weights and one
    trainable gain per output channel (initialised to 1).

    Args:
        unbiased: ``True`` (default): ``var`` is the unbiased (N - 1) variance, ``torch.var``'s
            default, as ``ScaledWSConv2d.get_weight`` in the official OTTT-SNN
            (``models/spiking_vgg.py``, ``models/spiking_resnet_imagenet.py``) and SLTT
            (``models/spiking_resnet_imagenet.py``) code; ``False``: the population (N) variance
            of the original NF-ResNets (Brock et al.) and timm, whose effective weights are larger
            by sqrt(N / (N - 1)) (1.9 % at fan-in 27).
        eps: added to ``var * fan_in`` under the square root (1e-4 in both official codes).
    """

    def __init__(self, *args, gain: bool = True, eps: float = 1e-4, unbiased: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1)) if gain else None
        self.eps = eps
        self.unbiased = unbiased

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps}, unbiased={self.unbiased}"

    def effective_weight(self) -> Tensor:
        return _standardise(self.weight, self.gain, self.eps, self.unbiased)


def _standardise(w: Tensor, gain: Tensor | None, eps: float, unbiased: bool = True) -> Tensor:
    # W_hat = gain * (W - mean) / sqrt(var * fan_in + eps), statistics per output unit;
    # var = sum (W - mean)^2 / (N - 1) if unbiased else / N, N = fan_in
    fan_in = w[0].numel()
    dims = tuple(range(1, w.dim()))
    mean = w.mean(dims, keepdim=True)
    var = w.var(dims, keepdim=True, unbiased=unbiased)
    w = (w - mean) * torch.rsqrt(var * fan_in + eps)
    return w if gain is None else w * gain


class Scale(nn.Module):
    """Multiply by a constant (OTTT's 2.74 after each spiking layer of its sWS networks)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}"

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale if self.scale != 1.0 else x

