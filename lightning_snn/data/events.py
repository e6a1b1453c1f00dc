"""Event-camera data sets (N-MNIST, CIFAR10-DVS) as sequences of T frames ``[T, 2, H, W]``.

Recordings are read from class folders with tonic's readers (N-MNIST's ATIS ``.bin``,
CIFAR10-DVS's ``.aedat4``) or, for CIFAR10-DVS's original release, the AER-DAT 2 ``.aedat``
files that SpikingJelly-based code (OTTT, DSR) reads. ``download=True`` fetches them with tonic.
Each sample's events are binned into ``T`` frames of per-pixel event counts
by equal time (N-MNIST) or equal event count (CIFAR10-DVS, SpikingJelly's ``split_by='number'``),
optionally clipped to binary spikes and resized; the data module feeds frame ``t`` at step ``t``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

EVENTS = np.dtype([("x", np.int64), ("y", np.int64), ("t", np.int64), ("p", np.int64)])
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


class EventFileError(ValueError):
    """An event file that cannot be decoded (truncated or not of the expected format)."""


# ------------------------------------------------------------------------------- N-MNIST
def read_nmnist(path: str | Path) -> np.ndarray:
    """Events of one N-MNIST ``.bin`` file (5-byte ATIS records), ``x, y, t [us], p``."""
    from tonic.io import read_mnist_file

    size = Path(path).stat().st_size
    if size % 5:
        raise EventFileError(f"{path}: {size} bytes is not a whole number of 5-byte N-MNIST events "
                             "(truncated or not an N-MNIST .bin file)")
    return read_mnist_file(str(path), dtype=EVENTS)


def write_nmnist(path: str | Path, events: np.ndarray) -> None:
    """Write events (``x, y < 256``, ``t < 2^23`` us, ``p`` in {0, 1}) in N-MNIST's ``.bin``
    format: per event x, y, then polarity in bit 23 and time in bits 0-22, big-endian."""
    t, p = events["t"].astype(np.uint32), events["p"].astype(np.uint32)
    if len(events) and (t.max() >= 1 << 23 or events["x"].max() > 255 or events["y"].max() > 239):
        raise ValueError("N-MNIST events need t < 2^23 us, x < 256 and y < 240")
    word = (p << 23) | t
    raw = np.stack([events["x"], events["y"], word >> 16, (word >> 8) & 255, word & 255], axis=1)
    Path(path).write_bytes(raw.astype(np.uint8).tobytes())


def nmnist(root: str, train: bool, download: bool, transform: Callable | None) -> Dataset:
    """N-MNIST as tonic lays it out: ``<root>/NMNIST/{Train,Test}/<digit>/*.bin``."""
    if download:
        import tonic

        tonic.datasets.NMNIST(save_to=root, train=train)  # downloads and extracts if missing
    split = Path(root) / "NMNIST" / ("Train" if train else "Test")
    files = sorted(split.glob("[0-9]/*.bin"))
    return EventFolder(files, [int(f.parent.name) for f in files], read_nmnist, transform, split)


# ---------------------------------------------------------------------------- CIFAR10-DVS
# AER-DAT 2 address word of the DVS128 sensor CIFAR10-DVS was recorded with: bit 31 marks
# non-DVS events, y in bits 8-14, x in bits 1-7, polarity in bit 0.
_AER_TYPE, _AER_Y, _AER_X, _AER_P = 1 << 31, 0x7F00, 0xFE, 0x1


def read_aedat2(path: str | Path) -> np.ndarray:
    """Events of an AER-DAT 2 recording (``#`` header lines, then big-endian (address, time)
    pairs), in SpikingJelly's orientation for CIFAR10-DVS (x = 127 - y_raw, y = 127 - x_raw,
    p = 1 - p_raw)."""
    data = Path(path).read_bytes()
    start = 0
    while data.startswith(b"#", start):
        end = data.find(b"\n", start)
        if end < 0:
            raise EventFileError(f"{path}: header line without end (not an AER-DAT file?)")
        start = end + 1
    if (len(data) - start) % 8:
        raise EventFileError(f"{path}: {len(data) - start} data bytes is not a whole number of "
                             "8-byte AER-DAT 2 events (truncated file?)")
    words = np.frombuffer(data, dtype=">u4", offset=start).reshape(-1, 2).astype(np.int64)
    words = words[(words[:, 0] & _AER_TYPE) == 0]
    addr = words[:, 0]
    out = np.empty(len(words), dtype=EVENTS)
    out["x"] = 127 - ((addr & _AER_Y) >> 8)
    out["y"] = 127 - ((addr & _AER_X) >> 1)
    out["t"] = words[:, 1]
    out["p"] = 1 - (addr & _AER_P)
    return out


def write_aedat2(path: str | Path, events: np.ndarray) -> None:
    """Write events in the layout ``read_aedat2`` reads (the inverse of its orientation)."""
    addr = ((127 - events["x"]) << 8) | ((127 - events["y"]) << 1) | (1 - events["p"])
    words = np.stack([addr, events["t"]], axis=1).astype(">u4")
    Path(path).write_bytes(b"#!AER-DAT2.0\r\n# CIFAR10-DVS layout\r\n" + words.tobytes())


def read_cifar10_dvs(path: str | Path) -> np.ndarray:
    """One CIFAR10-DVS recording: ``.aedat4`` (tonic's release) or ``.aedat`` (AER-DAT 2)."""
    if Path(path).suffix != ".aedat4":
        return read_aedat2(path)
    from tonic.io import read_aedat4

    try:
        raw = read_aedat4(str(path))
    except Exception as e:  # the decoder raises its own types on a damaged file
        raise EventFileError(f"{path}: cannot decode AEDAT4 file: {e}") from e
    out = np.empty(len(raw), dtype=EVENTS)
    for name in ("x", "y", "p"):
        out[name] = raw[name]
    out["t"] = raw["t"].astype(np.int64)
    return out


def cifar10_dvs(root: str, train: bool, download: bool, transform: Callable | None,
                train_fraction: float = 0.9) -> Dataset:
    """CIFAR10-DVS, ``<root>/CIFAR10DVS/<class>/*.aedat4|*.aedat``; the first 90% of each class's
    sorted recordings train, the rest test (the 9:1 per-class split of the papers' code)."""
    if download:
        import tonic

        tonic.datasets.CIFAR10DVS(save_to=root)  # downloads and extracts if missing
    top = Path(root) / "CIFAR10DVS"
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(CIFAR10_CLASSES):
        rec = sorted(p for p in (top / name).glob("*.aedat*") if p.suffix in (".aedat", ".aedat4"))
        cut = int(len(rec) * train_fraction)
        part = rec[:cut] if train else rec[cut:]
        files += part
        labels += [label] * len(part)
    return EventFolder(files, labels, read_cifar10_dvs, transform, top)


# ------------------------------------------------------------------------------- common
class EventFolder(Dataset):
    """Labelled event recordings, one file each, decoded and transformed on access."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int],
                 reader: Callable[[Path], np.ndarray], transform: Callable | None, where: Path) -> None:
        if not files:
            raise RuntimeError(f"no event recordings found under {where}")
        self.files, self.targets = list(files), list(labels)
        self.reader, self.transform = reader, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[np.ndarray | Tensor, int]:
        events = self.reader(self.files[index])
        return (self.transform(events) if self.transform else events), self.targets[index]


@dataclass(frozen=True)
class EventFormat:
    """How one event data set's recordings become frames.

    ``sensor_size`` is tonic's ``(W, H, polarities)``; ``split_by`` bins by equal ``time`` or
    equal event ``number``; ``size`` resizes frames (bilinear); ``augment`` are tensor transforms
    applied to the whole ``[T, 2, H, W]`` clip (one crop / flip for all frames)."""

    sensor_size: tuple[int, int, int]
    split_by: Literal["time", "number"] = "time"
    binary: bool = False
    size: int | None = None
    augment: list[Callable] = field(default_factory=list)

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        w, h, p = self.sensor_size
        return (p, self.size, self.size) if self.size else (p, h, w)


def bin_events(events: np.ndarray, sensor_size: tuple[int, int, int], frames: int,
               split_by: Literal["time", "number"]) -> np.ndarray:
    """Per-pixel event counts in ``frames`` bins, ``[T, P, H, W]`` (SpikingJelly's integration):
    ``time`` bins span ``(t_N - t_1) // T`` each, ``number`` bins hold ``N // T`` events each, and
    the last bin also takes the remainder, so every event is counted once."""
    w, h, p = sensor_size
    n = len(events)
    if split_by == "number":
        b = np.arange(n) // max(n // frames, 1)
    else:
        t = events["t"] - events["t"][0] if n else events["t"]
        width = int(t[-1]) // frames if n else 0
        b = t // width if width > 0 else np.zeros(n, dtype=np.int64)
    b = np.minimum(b, frames - 1)
    flat = ((b * p + events["p"]) * h + events["y"]) * w + events["x"]
    return np.bincount(flat, minlength=frames * p * h * w).reshape(frames, p, h, w)


class ToFrames:
    """Events -> float frames ``[T, P, H, W]`` (event counts, or 0/1 spikes), resized and
    augmented as the data set's ``EventFormat`` says."""

    def __init__(self, fmt: EventFormat, frames: int, augment: bool) -> None:
        if frames <= 0:
            raise ValueError(f"number of frames must be > 0, got {frames}")
        self.fmt, self.frames, self.augment = fmt, frames, augment

    def __call__(self, events: np.ndarray) -> Tensor:
        counts = bin_events(events, self.fmt.sensor_size, self.frames, self.fmt.split_by)
        x = torch.from_numpy(counts.astype(np.float32))
        if self.fmt.binary:
            x = x.clamp_(max=1.0)
        if self.fmt.size:
            x = F.interpolate(x, size=(self.fmt.size, self.fmt.size), mode="bilinear", antialias=True)
        for tf in self.fmt.augment if self.augment else ():
            x = tf(x)
        return x
