"""Spatial learning through time (SLTT, Meng et al. ICCV 2023): BPTT without its temporal routes.

The per-step loop is :class:`lightning_snn.strategies.online.OnlineStrategy`'s: at every time step
t the network runs one step from a membrane detached from the past,

    h[t] = lambda * sg(v[t-1]) + I[t],    s[t] = H(h[t] - Vth),    v[t] = h[t] - Vth s[t],

and the step's loss L[t] = l(o[t], y) / T is back-propagated at once, through the layers at step t
only. The error at a neuron is delta[t] = (dL[t]/ds[t]) g'(h[t] - Vth) (the spatial part of BPTT's
error; the part arriving from h[t+1] through the leak and the reset is dropped) and a layer's weight
gradient is dW = sum_t delta[t] s_pre[t]^T, the *instantaneous* presynaptic spikes (OTTT uses a
trace of them instead). Only one step's graph is alive at a time: memory is constant in T. The
T per-step gradients accumulate into one optimiser step per batch (as ``ottt_a``; under DDP one
all-reduce per batch). When the leak tends to 0 no temporal route is left and SLTT equals BPTT
under the same per-step loss; with T = 1 they are equal for every leak.

SLTT-K (``K``): each batch draws K distinct steps uniformly, ``torch.randperm(T)[:K]`` on the
global torch generator (``seed_everything`` makes the draw reproducible, and equal on all DDP ranks
seeded alike). Only those steps back-propagate; the others run forward under ``torch.no_grad`` and
still update the membranes (and batch-norm statistics). The loss of a selected step is still
divided by T, not K, as in the official ``train_SLTTK.py``.
"""

from __future__ import annotations

import torch

from lightning_snn.strategies.base import STRATEGIES
from lightning_snn.strategies.online import OnlineStrategy


@STRATEGIES.register("sltt")
class SLTT(OnlineStrategy):
    """SLTT: per-step backward with a detached membrane, one optimiser step per batch.

    Args:
        T: time steps.
        K: back-propagate only K random time steps of each batch (SLTT-K), an integer in 1..T;
            ``None`` (the default): every step (plain SLTT).
    """

    def __init__(self, T: int, K: int | None = None) -> None:
        super().__init__(T)
        if K is not None and (isinstance(K, bool) or not isinstance(K, int) or not 1 <= K <= T):
            raise ValueError(
                f"strategy 'sltt': K (the number of time steps that back-propagate, SLTT-K) must "
                f"be an integer in 1..T={T}, or null for every step; got {K!r}"
            )
        self.K = K

    def backward_steps(self, T: int) -> list[int]:
        """Every step, or K distinct steps drawn uniformly (global torch RNG), in order."""
        if self.K is None or self.K >= T:  # (T is the configured T: ``encode`` checks it)
            return list(range(T))
        return sorted(torch.randperm(T)[: self.K].tolist())
