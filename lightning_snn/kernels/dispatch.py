"""Which back end runs a neuron layer: ``model.neuron.backend``."""

from __future__ import annotations

from torch import Tensor

from lightning_snn.kernels.ops import interpreted, triton_available

BACKENDS = ("auto", "torch", "triton")


def use_kernels(backend: str, x: Tensor) -> bool:
    """Whether a layer with ``backend`` runs the fused op on ``x`` (else the torch loop).

    ``auto``: the Triton kernels on CUDA tensors when Triton imports, the torch loop otherwise;
    ``torch``: always the torch loop (the reference); ``triton``: the kernels, on CUDA or under
    Triton's CPU interpreter, and a clear error where they cannot run.
    """
    if backend == "torch":
        return False
    if backend == "auto":
        return x.is_cuda and triton_available()
    if backend != "triton":
        raise ValueError(f"unknown neuron backend {backend!r}; valid choices: {list(BACKENDS)}")
    if not triton_available():
        raise RuntimeError("model.neuron.backend='triton' but triton does not import; "
                           "use backend 'auto' or 'torch'")
    if x.is_cuda or (x.device.type == "cpu" and interpreted()):
        return True
    raise RuntimeError(
        f"model.neuron.backend='triton' cannot run on a {x.device.type} tensor: the kernels need "
        "CUDA, or TRITON_INTERPRET=1 set before triton is first imported (CPU interpreter, slow); "
        "use backend 'auto' or 'torch'")
