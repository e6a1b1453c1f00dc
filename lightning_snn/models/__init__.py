"""Spiking network architectures, registered by name in ``MODELS`` (the model ``nir``, a network
read from a NIR file, is registered by :mod:`lightning_snn.nir.importer`, which the training module
imports)."""

from lightning_snn.models.base import MODELS, SpikingNet, model_class
from lightning_snn.models import deep, feedback, feedforward, proxy, recurrent  # noqa: F401  (registers the models)

__all__ = ["MODELS", "SpikingNet", "model_class"]
