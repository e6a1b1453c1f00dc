"""Data modules and the data-set registry."""

__all__ = ["DATASETS", "VisionDataModule"]


def __getattr__(name: str):
    # on first use (PEP 562): a module of this package run alone (`python -m
    # lightning_snn.data.write_beton`) checks its input before Lightning is imported
    if name not in __all__:
        raise AttributeError(f"module 'lightning_snn.data' has no attribute {name!r}")
    from lightning_snn.data import vision

    return getattr(vision, name)
