"""lightning-snn: spiking neural networks trained at scale with pluggable gradient strategies."""

import os as _os

# modules under their former names for one release (lightning_snn.report, .nir_export, .nir_import):
# see lightning_snn/_deprecated/__init__.py
__path__.append(_os.path.join(_os.path.dirname(__file__), "_deprecated"))

from lightning_snn.module import SNNModule
from lightning_snn.neurons import LIF, NEURONS, NeuronConfig, SpikingNeuron

__all__ = ["LIF", "NEURONS", "NeuronConfig", "SNNModule", "SpikingNeuron"]
__version__ = "0.1.0"
