"""The discrete-time reading of a NIR neuron node that this project's export writes
(:mod:`lightning_snn.nir.export`) and its readers use: ``lambda = 1 - dt / tau``."""

from __future__ import annotations

from typing import Any


def leak_of_tau(tau: float, dt: float, stated: Any = None) -> float:
    """The per-step leak of an LIF node, ``lambda = 1 - dt / tau``: the graph's ``tau`` decides it.
    A leak ``stated`` in the node's metadata (as this export writes) is taken instead only where it
    agrees with it to the float32 rounding of ``tau`` (``1 - dt / tau`` is then off by ~1e-9), so a
    file whose ``tau`` says another leak is read with the leak its ``tau`` says."""
    leak = 1.0 - dt / tau
    # tau rounded to float32 (relative error <= 2^-24) moves 1 - dt / tau by <= (dt / tau) 2^-24:
    # twice that bound, never a different leak
    if stated is not None and abs(float(stated) - leak) <= 2.0**-23 * (dt / tau):
        return float(stated)
    return leak
