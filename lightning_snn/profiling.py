"""Device-independent measures of what a training step costs: peak tensor memory and host syncs.

``TensorMemoryTracker`` counts the bytes of every storage that tensor operations allocate inside a
block and frees them when the storage dies (storages keep their Python object for as long as any
tensor, view or autograd-saved copy uses them), so its peak is the peak of live tensor memory
allocated by the block. It is exact and deterministic on CPU, where no caching allocator reports
one, and measures the same thing on CUDA.

``HostSyncCounter`` counts the tensor methods that copy a value to the host (``item``,
``tolist``, ``__bool__``, ...): on a GPU each is a device synchronisation, on CPU they cost
nothing, so counting them is the honest proxy for a lean training step.
"""

from __future__ import annotations

import weakref
from collections import Counter
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TensorMemoryTracker(TorchDispatchMode):
    """Inside ``with TensorMemoryTracker() as m:``, ``m.peak`` is the largest number of bytes held at
    once by storages allocated in the block, ``m.current`` those still alive.

    Only the fresh results of operators count (a view or an in-place result aliases an existing
    storage, named in the operator's schema), each storage once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.current -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        flat, _ = tree_flatten(out)
        for i, t in enumerate(flat):
            if not isinstance(t, torch.Tensor):
                continue
            if i < len(returns) and returns[i].alias_info is not None:
                continue  # a view or an in-place result: no new storage
            st = t.untyped_storage()
            key = id(st)
            if key in self._seen:
                continue
            nbytes = st.nbytes()
            self._seen.add(key)
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            weakref.finalize(st, self._free, key, nbytes)
        return out


HOST_SYNC_METHODS = frozenset(
    {"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "__format__"}
)


class HostSyncCounter(TorchFunctionMode):
    """Counts calls of tensor methods that bring a value to the host (``counts[name]``), plus
    ``.to()`` a CPU device of a tensor that lives elsewhere (``counts["to(cpu)"]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in HOST_SYNC_METHODS:
            self.counts[name] += 1
        elif name == "to" and args and isinstance(args[0], torch.Tensor) and args[0].device.type != "cpu":
            target = [a for a in (*args[1:], *(kwargs or {}).values())
                      if isinstance(a, (str, torch.device))]
            if any(torch.device(a).type == "cpu" for a in target):
                self.counts["to(cpu)"] += 1
        return func(*args, **(kwargs or {}))


def is_out_of_memory(exc: BaseException) -> bool:
    """``exc`` is an out-of-memory error (torch's CUDA one, a backend's ``RuntimeError``, or the
    host's ``MemoryError``)."""
    text = str(exc).lower()
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def memory_peak_text(exc: BaseException, device: torch.device) -> str:
    """What the failed run tried: the allocation that failed (from torch's message), the peak of
    tensor memory on a CUDA device (of its total) or the process's peak resident memory on CPU."""
    import re

    tried = re.search(r"[Tt]ried to allocate ([\d.]+ [KMGT]?i?B)", str(exc))
    host = re.search(r"tried to allocate (\d+) bytes", str(exc))  # the CPU allocator's wording
    parts = [f"tried to allocate {tried.group(1)} more"] if tried else []
    parts += [f"tried to allocate {_gib(int(host.group(1)))} more"] if host and not tried else []
    if device.type == "cuda" and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(device).total_memory
        parts.append(f"peak {_gib(torch.cuda.max_memory_allocated(device))} allocated of {_gib(total)} "
                     f"on {device}")
    else:
        import resource

        parts.append(f"peak {_gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)} resident "
                     f"on {device.type}")
    return ", ".join(parts)
