"""Spiking network architectures, registered by name in ``MODELS``."""

from lightning_snn.models.base import MODELS, SpikingNet, model_class
from lightning_snn.models import deep, feedback, feedforward, proxy, recurrent  # noqa: F401  (registers the models)

__all__ = ["MODELS", "SpikingNet", "model_class"]
from lightning_snn import nir_import  # noqa: E402,F401  (registers "nir": a model read from a NIR file)
