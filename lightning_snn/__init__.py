"""lightning-snn: spiking neural networks trained at scale with pluggable gradient strategies."""

from lightning_snn.module import SNNModule
from lightning_snn.neurons import LIF, NeuronConfig

__all__ = ["LIF", "NeuronConfig", "SNNModule"]
__version__ = "0.1.0"
