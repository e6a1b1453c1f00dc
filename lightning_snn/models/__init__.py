"""Spiking network architectures, registered by name in ``MODELS``."""

from lightning_snn.models.base import MODELS, SpikingNet
from lightning_snn.models import deep, feedback, feedforward, proxy  # noqa: F401  (registers the models)

__all__ = ["MODELS", "SpikingNet"]
