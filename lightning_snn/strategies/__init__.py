"""Gradient strategies, registered by name in ``STRATEGIES``."""

from lightning_snn.strategies.base import STRATEGIES, GradientStrategy
from lightning_snn.strategies import bptt, dsr, ide, ottt, proxy, spide  # noqa: F401  (registers the strategies)

__all__ = ["STRATEGIES", "GradientStrategy"]
