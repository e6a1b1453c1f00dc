"""Fused multi-step neuron kernels (Triton) as torch custom ops: the fused back end of the IF /
LIF dynamics of ``lightning_snn.neurons`` (``model.neuron.backend``) and of DSR's forward."""

from lightning_snn.kernels.dispatch import BACKENDS, use_kernels
from lightning_snn.kernels.ops import (
    interpreted,
    kernels_run_on,
    lif_fire,
    lif_multistep,
    triton_available,
)

__all__ = ["BACKENDS", "interpreted", "kernels_run_on", "lif_fire", "lif_multistep", "triton_available",
           "use_kernels"]
