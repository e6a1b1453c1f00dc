"""Synthetic inputs of a real data set's shapes, for measurements that do not need the data (the
``memory`` suite: memory and time of a training step). No files are read.

``synthetic_images``: seeded random 8-bit images of a data set's size, fed through that data set's
usual transforms (crop, flip, normalisation). ``synthetic_events``: seeded random event recordings
(uniform over the sensor and the recording's duration) of a sensor's size, binned into frames by
the event data set's own path. Labels cycle through the classes. Sample ``i`` of a split is the same
on every call.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_snn.data.events import EVENTS

TRAIN_SIZE, TEST_SIZE = 512, 64


class SyntheticImages(Dataset):
    """``size`` random ``uint8`` images of shape ``(C, H, W)`` with labels ``i % classes``."""

    def __init__(self, shape: tuple[int, int, int], classes: int, train: bool,
                 transform: Callable | None = None) -> None:
        self.shape, self.classes, self.train, self.transform = shape, classes, train, transform
        self.targets = [i % classes for i in range(TRAIN_SIZE if train else TEST_SIZE)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        g = torch.Generator().manual_seed(2 * i + int(self.train))
        x = torch.randint(0, 256, self.shape, generator=g, dtype=torch.uint8)
        return (self.transform(x) if self.transform else x), self.targets[i]


class SyntheticEvents(Dataset):
    """``size`` random recordings of ``events`` events on a ``(W, H, P)`` sensor over 1 s."""

    def __init__(self, sensor_size: tuple[int, int, int], classes: int, train: bool,
                 transform: Callable | None = None, events: int = 20_000) -> None:
        self.sensor_size, self.classes, self.train = sensor_size, classes, train
        self.transform, self.events = transform, events
        self.targets = [i % classes for i in range(TRAIN_SIZE if train else TEST_SIZE)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        rng = np.random.default_rng(2 * i + int(self.train))
        w, h, p = self.sensor_size
        ev = np.empty(self.events, dtype=EVENTS)
        ev["x"], ev["y"] = rng.integers(0, w, self.events), rng.integers(0, h, self.events)
        ev["p"] = rng.integers(0, p, self.events)
        ev["t"] = np.sort(rng.integers(0, 1_000_000, self.events))
        return (self.transform(ev) if self.transform else ev), self.targets[i]


def synthetic_images(shape: tuple[int, int, int], classes: int) -> Callable[..., Dataset]:
    """A registry reader ``(root, train, download, transform)`` of :class:`SyntheticImages`."""
    def reader(root: str, train: bool, download: bool, transform: Callable | None) -> Dataset:
        return SyntheticImages(shape, classes, train, transform)
    return reader


def synthetic_events(sensor_size: tuple[int, int, int], classes: int) -> Callable[..., Dataset]:
    """A registry reader ``(root, train, download, transform)`` of :class:`SyntheticEvents`."""
    def reader(root: str, train: bool, download: bool, transform: Callable | None) -> Dataset:
        return SyntheticEvents(sensor_size, classes, train, transform)
    return reader
