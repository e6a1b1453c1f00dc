"""SLURM submission: sbatch templates rendered from validated options (``python -m lightning_snn.slurm``)."""

from lightning_snn.slurm.submit import JobSpec, render
from lightning_snn.slurm.validate import SubmitError

__all__ = ["JobSpec", "SubmitError", "render"]
