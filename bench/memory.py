"""Peak-memory probes for a training step, on CPU and GPU.

``saved_tensor_bytes`` counts the bytes autograd keeps for the backward pass (each storage once):
exact and deterministic on any device, and the part of training memory that depends on T.
On CUDA, ``torch.cuda.max_memory_allocated`` is reported as well.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch


@contextlib.contextmanager
def saved_tensor_bytes() -> Iterator[list[int]]:
    """Yields a one-element list that holds, on exit, the bytes of distinct storages saved for
    backward inside the block."""
    seen: dict[int, int] = {}
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            st = t.untyped_storage()
            seen.setdefault(st.data_ptr(), st.nbytes())
        except (RuntimeError, NotImplementedError):  # e.g. tensors without storage
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total
    total[0] = sum(seen.values())


def cuda_peak(fn: Callable[[], None], device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)
