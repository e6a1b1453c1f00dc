"""What the Triton kernels and their torch twin share: surrogate ids and constants, dtypes."""

from __future__ import annotations

import math

import torch

SIGMOID, ATAN, RECTANGLE, TRIANGLE = 0, 1, 2, 3
SURROGATE_IDS: dict[str, int] = {"sigmoid": SIGMOID, "atan": ATAN, "rectangle": RECTANGLE,
                                 "triangle": TRIANGLE}
INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Membrane state and arithmetic: fp32 for fp16 / bf16 / fp32 input, fp64 for fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def surrogate_constants(kind: int, alpha: float) -> tuple[float, float]:
    """``(c0, c1)`` of the surrogate derivative, computed in double precision on the host the way
    ``lightning_snn.neurons`` computes them (so the kernels round like the torch path):
    sigmoid ``c0 = alpha``; atan ``c0 = alpha / 2, c1 = pi / 2 * alpha``; rectangle
    ``c0 = alpha, c1 = 0.5 / alpha`` (half width of the box); triangle ``c0 = alpha,
    c1 = alpha * alpha`` (``max(0, c0 - c1 |u|)``)."""
    if kind == SIGMOID:
        return alpha, 0.0
    if kind == ATAN:
        return alpha / 2.0, math.pi / 2.0 * alpha
    if kind == RECTANGLE:
        return alpha, 0.5 / alpha
    if kind == TRIANGLE:
        return alpha, alpha * alpha
    raise ValueError(f"unknown surrogate id {kind}; valid: {sorted(SURROGATE_IDS.values())}")
