"""Data modules and the data-set registry."""

from lightning_snn.data.vision import DATASETS, VisionDataModule

__all__ = ["DATASETS", "VisionDataModule"]
