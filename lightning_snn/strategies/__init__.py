"""Gradient strategies, registered by name in ``STRATEGIES``."""

from lightning_snn.strategies.base import STRATEGIES, Backward, GradientStrategy, plain_backward
from lightning_snn.strategies.online import OnlineStrategy
from lightning_snn.strategies import ann, bptt, dsr, ide, ottt, proxy, sltt, spide  # noqa: F401  (registers the strategies)

__all__ = ["STRATEGIES", "Backward", "GradientStrategy", "OnlineStrategy", "plain_backward"]
