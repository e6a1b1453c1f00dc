"""lightning-snn: spiking neural networks trained at scale with pluggable gradient strategies."""

from lightning_snn.module import SNNModule
from lightning_snn.neurons import LIF, NEURONS, NeuronConfig, SpikingNeuron

__all__ = ["LIF", "NEURONS", "NeuronConfig", "SNNModule", "SpikingNeuron"]
__version__ = "0.1.0"
