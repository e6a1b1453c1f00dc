"""Synaptic layers that know about time.

Stateless ops (conv, linear, batch norm, pooling) run on the folded ``[T*B, ...]`` view of a
``[T, B, ...]`` sequence, so batch-norm statistics of a multi-step forward span all T*B samples.
"""

from __future__ import annotations

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
