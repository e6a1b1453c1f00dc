"""lightning-snn: spiking neural networks trained at scale with pluggable gradient strategies."""

import os as _os

# modules under their former names for one release (lightning_snn.report, .nir_export, .nir_import):
# see lightning_snn/_deprecated/__init__.py
__path__.append(_os.path.join(_os.path.dirname(__file__), "_deprecated"))

__all__ = ["LIF", "NEURONS", "NeuronConfig", "SNNModule", "SpikingNeuron"]
__version__ = "0.1.0"

# The public names load on first use (PEP 562): commands that only read files (`suite status`,
# `suite report`) then start without importing torch and Lightning.
_LAZY = {"SNNModule": "lightning_snn.module", **dict.fromkeys(
    ("LIF", "NEURONS", "NeuronConfig", "SpikingNeuron"), "lightning_snn.neurons")}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'lightning_snn' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
