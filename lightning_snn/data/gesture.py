"""DVS128 Gesture (Amir et al., CVPR 2017) from its released recordings, as SpikingJelly reads it.

The release (``DvsGesture.tar.gz``) holds per trial ``userNN_<lighting>.aedat`` (AEDAT 3.1: an ASCII
header, then event packets) and ``userNN_<lighting>_labels.csv`` (``class, startTime_usec,
endTime_usec`` per gesture), and the official split ``trials_to_train.txt`` / ``trials_to_test.txt``
(users 1-23 train, 24-29 test). One sample is one labelled gesture: the trial's polarity events with
``start <= t < end``, class ``1..11`` -> ``0..10`` (SpikingJelly's ``DVS128Gesture``, which the
official OTTT / SLTT scripts feed). The data module bins a sample into T frames of equal event count
(``split_by='number'``) at 128x128, two polarities.

The header is read with tonic's ``read_aedat_header_from_file``. The packets are decoded here:
tonic's ``get_aer_events_from_file`` takes every packet for polarity events (the release also holds
special-event packets) and its ``read_dvs_ibm`` fails on tonic 1.7's three-value header reader.
A polarity event is ``(data, timestamp)`` little-endian ``uint32``: ``x = data >> 17 & 0x7FFF``,
``y = data >> 2 & 0x7FFF``, ``p = data >> 1 & 1``; time ``timestamp | tsOverflow << 31`` (as
SpikingJelly's ``load_aedat_v3``).

Decoding a trial takes a while (a few MB of events): each worker keeps its last trials decoded.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from lightning_snn.data.events import EVENTS, EventFileError

FOLDER = "DvsGesture"
NUM_CLASSES = 11
_PACKET = np.dtype([("type", "<u2"), ("source", "<u2"), ("size", "<u4"), ("ts_offset", "<u4"),
                    ("ts_overflow", "<u4"), ("capacity", "<u4"), ("number", "<u4"), ("valid", "<u4")])
_POLARITY = 1  # AEDAT 3.1 event type of polarity events


def _data_start(path: Path) -> int:
    """Where the packets of an AEDAT 3.x file begin (tonic's header reader)."""
    from tonic.io import read_aedat_header_from_file

    try:
        version, start, _ = read_aedat_header_from_file(str(path))
    except (ValueError, IndexError, UnboundLocalError) as e:
        raise EventFileError(f"{path}: no AEDAT header ({type(e).__name__}: {e})") from e
    if not 3 <= version < 4:
        raise EventFileError(f"{path}: AEDAT version {version}, expected 3.x (the DVS128 Gesture release)")
    return start


def packets(path: str | Path, data: bytes | None = None) -> list[tuple[np.void, int]]:
    """``(packet header, offset of its events)`` of every packet, checking that each is whole: a
    truncated file is an :class:`EventFileError` naming it. Without ``data`` only the headers are
    read (a cheap check of a whole file)."""
    path = Path(path)
    start = _data_start(path)
    total = path.stat().st_size if data is None else len(data)
    out = []
    with path.open("rb") as f:
        pos = start
        while pos < total:
            if pos + _PACKET.itemsize > total:
                raise EventFileError(f"{path}: truncated packet header at byte {pos} (the file ends after "
                                     f"{total} bytes; re-extract DvsGesture.tar.gz)")
            if data is None:
                f.seek(pos)
                head = np.frombuffer(f.read(_PACKET.itemsize), _PACKET, 1)[0]
            else:
                head = np.frombuffer(data, _PACKET, 1, pos)[0]
            size, n = int(head["size"]), int(head["capacity"])
            end = pos + _PACKET.itemsize + size * n
            if end > total:
                raise EventFileError(f"{path}: truncated packet at byte {pos}: {n} events of {size} bytes "
                                     f"announced, {total - pos - _PACKET.itemsize} bytes left (re-extract "
                                     "DvsGesture.tar.gz)")
            out.append((head, pos + _PACKET.itemsize))
            pos = end
    return out


def read_aedat3(path: str | Path) -> np.ndarray:
    """All polarity events of an AEDAT 3.1 recording, ``x, y, t [us], p``, in file order."""
    data = Path(path).read_bytes()
    chunks = []
    for head, pos in packets(path, data):
        size, n = int(head["size"]), int(head["capacity"])
        if int(head["type"]) == _POLARITY:
            if size != 8:
                raise EventFileError(f"{path}: polarity events of {size} bytes (expected 8)")
            words = np.frombuffer(data, "<u4", 2 * n, pos).reshape(n, 2).astype(np.int64)
            ev = np.empty(n, dtype=EVENTS)
            ev["x"] = (words[:, 0] >> 17) & 0x7FFF
            ev["y"] = (words[:, 0] >> 2) & 0x7FFF
            ev["p"] = (words[:, 0] >> 1) & 1
            ev["t"] = words[:, 1] | (int(head["ts_overflow"]) << 31)
            chunks.append(ev)
    return np.concatenate(chunks) if chunks else np.empty(0, dtype=EVENTS)


def write_aedat3(path: str | Path, events: np.ndarray, packet_size: int = 4096,
                 special: bool = True) -> None:
    """Write events (``x, y < 128``, ``t < 2^31``) as an AEDAT 3.1 file of the release's layout:
    the ASCII header, then polarity packets of ``packet_size`` events (valid bit set), and with
    ``special`` one special-event packet first (which readers must skip)."""
    out = [b"#!AER-DAT3.1\r\n", b"#Format: RAW\r\n", b"#Source 1: DVS128\r\n",
           b"#Start-Time: 2017-01-01 00:00:00 (TZ+0000)\r\n", b"#!END-HEADER\r\n"]

    def packet(kind: int, payload: np.ndarray, n: int) -> bytes:
        head = np.zeros(1, _PACKET)
        head[0] = (kind, 1, 8, 4, 0, n, n, n)
        return head.tobytes() + payload.astype("<u4").tobytes()

    if special:  # a timestamp-reset special event: (type 0 data word, timestamp)
        out.append(packet(0, np.array([[2 << 1 | 1, 0]]), 1))
    for i in range(0, len(events), packet_size):
        ev = events[i : i + packet_size]
        data = (ev["x"].astype(np.int64) << 17) | (ev["y"].astype(np.int64) << 2) | (ev["p"].astype(np.int64) << 1) | 1
        out.append(packet(_POLARITY, np.stack([data, ev["t"]], axis=1), len(ev)))
    Path(path).write_bytes(b"".join(out))


@functools.lru_cache(maxsize=4)
def _trial(path: str) -> tuple[np.ndarray, np.ndarray]:
    """A trial's events and their times (sorted by time, as a search index)."""
    ev = read_aedat3(path)
    order = np.argsort(ev["t"], kind="stable")
    ev = ev[order]
    return ev, ev["t"]


def _labels(csv_path: Path) -> list[tuple[int, int, int]]:
    """``(class 0..10, start, end)`` rows of a trial's labels file."""
    if not csv_path.is_file():
        raise RuntimeError(f"DVS128 Gesture labels {csv_path} are missing (every userNN_<lighting>.aedat "
                           "has a _labels.csv beside it; re-extract DvsGesture.tar.gz)")
    rows = []
    with csv_path.open(newline="") as f:
        for i, rec in enumerate(csv.reader(f)):
            if not rec or not rec[0].strip().isdigit():  # the header line
                continue
            try:
                label, start, end = (int(v) for v in rec[:3])
            except ValueError as e:
                raise RuntimeError(f"{csv_path} line {i + 1}: {rec!r} is not 'class, start, end' (integers)") from e
            if not 1 <= label <= NUM_CLASSES:
                raise RuntimeError(f"{csv_path} line {i + 1}: class {label} (valid: 1..{NUM_CLASSES})")
            rows.append((label - 1, start, end))
    return rows


class DVS128Gesture(Dataset):
    """Labelled gestures of the official train or test trials (see module doc)."""

    def __init__(self, root: str, train: bool, transform: Callable | None = None) -> None:
        top = Path(root) / FOLDER
        split = top / ("trials_to_train.txt" if train else "trials_to_test.txt")
        if not split.is_file():
            raise RuntimeError(f"DVS128 Gesture split file {split} is missing (the release's "
                               "trials_to_train.txt / trials_to_test.txt; re-extract DvsGesture.tar.gz)")
        names = [ln.strip() for ln in split.read_text().splitlines() if ln.strip()]
        self.samples: list[tuple[str, int, int]] = []
        self.targets: list[int] = []
        for name in names:
            aedat = top / name
            if not aedat.is_file():
                raise RuntimeError(f"DVS128 Gesture recording {aedat} (listed in {split.name}) is missing")
            packets(aedat)  # a truncated recording fails here, before any training
            for label, start, end in _labels(aedat.with_name(aedat.stem + "_labels.csv")):
                self.samples.append((str(aedat), start, end))
                self.targets.append(label)
        if not self.samples:
            raise RuntimeError(f"no DVS128 Gesture samples in {split}")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def events(self, index: int) -> np.ndarray:
        path, start, end = self.samples[index]
        ev, t = _trial(path)
        return ev[np.searchsorted(t, start, "left") : np.searchsorted(t, end, "left")]

    def __getitem__(self, index: int):  # type: ignore[no-untyped-def]
        ev = self.events(index)
        return (self.transform(ev) if self.transform else ev), self.targets[index]


def dvs128_gesture(root: str, train: bool, download: bool, transform: Callable | None) -> Dataset:
    """The registry's reader: ``<root>/DvsGesture`` as the release extracts."""
    if download:
        raise ValueError("DVS128 Gesture cannot be downloaded automatically (IBM's licence page): get "
                         "DvsGesture.tar.gz from research.ibm.com/dvsgesture and extract it under data.root")
    return DVS128Gesture(root, train, transform)
