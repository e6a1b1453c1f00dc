"""torch's intra-op threads set to the CPUs this process may use, not to the machine's cores.

torch starts with one thread per core of the machine. A process that may use fewer (a SLURM task
with ``--cpus-per-task 1``, a Ray trial with ``cpu=1``, one of ``suite run --parallel 2`` runs, a
container's CPU affinity) then oversubscribes its CPUs, and its step time moves several-fold with
the machine's load. Every training process therefore sets its threads to the smallest of:

- its CPU affinity mask (``os.sched_getaffinity``; cgroup CPU sets, ``taskset``),
- ``SLURM_CPUS_PER_TASK`` (a SLURM task),
- the CPUs Ray assigned to the task or actor it runs in,
- ``LSNN_CPUS``: the share a launcher gives each child (``suite run --parallel N``: affinity / N),
- ``OMP_NUM_THREADS`` when it is set (the usual way to cap OpenMP threads),

divided among the processes of one node that share them (DDP ranks on one machine). ``--threads N``
or ``LSNN_NUM_THREADS=N`` override the whole rule.
"""

from __future__ import annotations

import os
import sys

import torch

THREADS_ENV = "LSNN_NUM_THREADS"  # override: threads of every training process
CPUS_ENV = "LSNN_CPUS"  # a launcher's share of CPUs for each of its children


def _positive_int(value: str, name: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{name}={value!r} is not a number of threads (valid: an integer >= 1)")
    return n


def _ray_cpus() -> float | None:
    """The CPUs Ray assigned to the task / actor this code runs in, if it runs in one."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # noqa: BLE001 - the driver, or a Ray without the runtime context API
        return None
    return float(cpus) if cpus else None


def cpu_limits() -> list[tuple[int, str]]:
    """``(CPUs, source)`` of every limit that applies to this process (affinity always)."""
    limits = [(len(os.sched_getaffinity(0)), "CPU affinity")]
    for var in ("SLURM_CPUS_PER_TASK", CPUS_ENV, "OMP_NUM_THREADS"):
        if os.environ.get(var):
            limits.append((_positive_int(os.environ[var], var), var))
    ray_cpus = _ray_cpus()
    if ray_cpus:
        limits.append((max(1, int(ray_cpus)), "Ray's resources"))
    return limits


def intra_op_threads(threads: int | None = None, processes: int = 1) -> tuple[int, str]:
    """The thread count for this process and why: ``threads`` (``--threads``) or
    ``LSNN_NUM_THREADS`` if given, else the smallest CPU limit shared by ``processes``."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads {threads} (valid: an integer >= 1, or unset for the CPUs this "
                             "process may use)")
        return threads, "--threads"
    if os.environ.get(THREADS_ENV):
        return _positive_int(os.environ[THREADS_ENV], THREADS_ENV), THREADS_ENV
    cpus, source = min(cpu_limits())
    if processes > 1:
        return max(1, cpus // processes), f"{source}: {cpus} CPUs shared by {processes} processes"
    return cpus, f"{source}: {cpus} CPUs"


def set_intra_op_threads(threads: int | None = None, processes: int = 1) -> str:
    """Set torch's intra-op threads (see the module docstring); returns the line to log."""
    n, why = intra_op_threads(threads, processes)
    torch.set_num_threads(n)
    return (f"torch intra-op threads: {n} ({why}; override with --threads N or {THREADS_ENV}=N)")
