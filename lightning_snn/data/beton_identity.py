"""What a ``.beton`` file holds, recorded when it is written and checked before it is used.

FFCV's format stores field types and per-sample metadata but not which data set or split a file
holds, so an MNIST file named ``fashion_mnist_test.beton`` would train and test silently. Every
file this project writes gets an identity file beside it, ``<file>.json``, written atomically after
the ``.beton`` is in place::

    {"format": "lightning_snn.beton/1", "dataset": "fashion_mnist", "split": "test",
     "source": null, "samples": 10000, "fields": {"image": "NDArrayField", "label": "IntField"},
     "image_shape": [28, 28], "image_dtype": "uint8", "write_mode": "raw",
     "max_resolution": null, "jpeg_quality": 90,
     "fingerprint": {"sha256": "...", "covers": "..."}}

``image_shape`` is ``[H, W]`` for gray arrays and ``[H, W, 3]`` for RGB images (``null`` when the
images differ in size). The fingerprint is cheap and is recomputed from the file at every check:
SHA-256 over every sample's scalar fields (the labels) and the stored bytes of 16 evenly spaced
samples (``covers`` says which), so an identity file left beside another ``.beton`` is caught.

:func:`check_contents` compares a file with what a data module expects: its identity (data set,
split, write mode, fingerprint), its fields and image shape read with FFCV's own reader, and, when
the source data set is at hand, its labels (sample count and class counts). A file written by
another tool has no identity file; it is checked by its fields, shapes and labels, and the returned
note says so.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightning_snn.atomic import write_json
from lightning_snn.errors import UsageError

FORMAT = "lightning_snn.beton/1"
FINGERPRINT_SAMPLES = 16


class BetonMismatchError(UsageError):
    """A ``.beton`` file that holds something else than the data module expects."""


@dataclass(frozen=True)
class Expected:
    """What a data module reads from a ``.beton`` file.

    ``image_shape``: ``[H, W]`` (gray) or ``[H, W, 3]`` (RGB); ``None`` accepts any size.
    ``write_mode`` / ``max_resolution``: how RGB images must have been stored.
    """

    dataset: str
    split: str
    gray: bool
    image_shape: tuple[int, ...] | None = None
    write_mode: str = "raw"
    max_resolution: int | None = None


def identity_path(path: str | os.PathLike) -> Path:
    """The identity file of the ``.beton`` file ``path``: ``<path>.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _reader(path: Path) -> Any:
    from ffcv.reader import Reader

    return Reader(str(path))


def layout(path: str | os.PathLike, reader: Any = None) -> dict[str, Any]:
    """Sample count, field types and image shape of a ``.beton`` file, from FFCV's own reader."""
    from ffcv.fields import NDArrayField, RGBImageField

    reader = reader or _reader(Path(path))
    out: dict[str, Any] = {
        "samples": int(reader.num_samples),
        "fields": {name: type(h).__name__ for name, h in reader.handlers.items()},
        "image_shape": None, "image_dtype": None,
    }
    image = reader.handlers.get("image")
    if isinstance(image, NDArrayField):
        out["image_shape"], out["image_dtype"] = [int(d) for d in image.shape], str(image.dtype)
    elif isinstance(image, RGBImageField):
        meta = reader.metadata[reader.metadata.dtype.names[reader.field_names.index("image")]]
        sizes = np.unique(np.stack([meta["height"], meta["width"]], 1), axis=0)
        if len(sizes) == 1:
            out["image_shape"] = [int(sizes[0][0]), int(sizes[0][1]), 3]
        out["image_dtype"] = "uint8"
    return out


def fingerprint(path: str | os.PathLike, reader: Any = None) -> dict[str, str]:
    """SHA-256 over every sample's scalar fields and the stored bytes of 16 evenly spaced samples."""
    from ffcv.fields import BytesField, NDArrayField, RGBImageField

    path = Path(path)
    reader = reader or _reader(path)
    h = hashlib.sha256()
    scalars = [name for name, hd in reader.handlers.items()
               if not isinstance(hd, (RGBImageField, BytesField, NDArrayField))]
    for name in scalars:
        column = reader.metadata[reader.metadata.dtype.names[reader.field_names.index(name)]]
        h.update(np.ascontiguousarray(column).tobytes())
    n = int(reader.num_samples)
    picked = np.unique(np.linspace(0, n - 1, min(FINGERPRINT_SAMPLES, n)).round().astype(np.int64))
    table = reader.alloc_table
    with open(path, "rb") as f:
        for i in picked:
            rows = np.sort(table[table["sample_id"] == i], order="ptr")
            for row in rows:
                f.seek(int(row["ptr"]))
                h.update(f.read(int(row["size"])))
    shown = ", ".join(map(str, picked[:3])) + (f", ..., {picked[-1]}" if len(picked) > 3 else "")
    return {"sha256": h.hexdigest(),
            "covers": f"field(s) {', '.join(scalars) or '(none)'} of all {n} samples and the stored "
                      f"bytes of {len(picked)} evenly spaced samples ({shown})"}


def write_identity(path: str | os.PathLike, *, dataset: str | None, split: str | None,
                   source: str | None = None, write_mode: str = "raw", max_resolution: int | None = None,
                   jpeg_quality: int = 90) -> Path:
    """Describe the finished ``.beton`` file ``path`` in its identity file; returns that file."""
    path = Path(path)
    reader = _reader(path)
    identity = {"format": FORMAT, "dataset": dataset, "split": split, "source": source,
                **layout(path, reader), "write_mode": write_mode, "max_resolution": max_resolution,
                "jpeg_quality": jpeg_quality, "fingerprint": fingerprint(path, reader)}
    return write_json(identity_path(path), identity)


def _shape(shape: Any) -> str:
    return "x".join(map(str, shape)) if shape else "varying size"


def _describe(lay: dict[str, Any]) -> str:
    fields = ", ".join(f"{k}: {v}" for k, v in lay["fields"].items())
    image = f"; images {_shape(lay['image_shape'])} {lay['image_dtype']}" if lay["image_dtype"] else ""
    return f"fields {{{fields}}}{image}"


def check_contents(path: str | os.PathLike, expected: Expected,
                   labels: Any = None) -> str:
    """Check that ``path`` holds ``expected``'s data; returns a note on how it was checked.

    ``labels``: the source data set's labels in order (when at hand), compared by count and per
    class. Raises :class:`BetonMismatchError` naming the file, what it holds and what was expected.
    """
    path = Path(path)
    want = f"data set {expected.dataset!r} ({expected.split} split)"
    fix = f"(valid: a file of the {expected.dataset} {expected.split} split: delete {path} to have it written on first use)"
    reader = _reader(path)
    lay = layout(path, reader)
    side = identity_path(path)
    if side.is_file():
        try:
            ident = json.loads(side.read_text())
            problem = None if isinstance(ident, dict) and ident.get("format") == FORMAT else "no format field"
        except (ValueError, OSError) as e:
            problem = str(e)
        if problem:
            raise BetonMismatchError(f"identity file {side} of {path} is unreadable or not in the "
                                     f"format {FORMAT} ({problem}) {fix}")
        held = f"{ident.get('dataset')!r} ({ident.get('split')} split)"
        if ident.get("dataset") is not None and (ident["dataset"], ident.get("split")) != (expected.dataset, expected.split):
            raise BetonMismatchError(f"{path} holds data set {held} (its identity file {side.name} says so), "
                                     f"but {want} is asked for {fix}")
        if ident.get("fingerprint", {}).get("sha256") != fingerprint(path, reader)["sha256"] or any(
                ident.get(k) != lay[k] for k in lay):
            raise BetonMismatchError(f"{path} is not the file its identity file {side.name} describes "
                                     f"(content fingerprint or layout differs: it was replaced after it "
                                     f"was written) {fix}")
        if not expected.gray:  # raw pixels must be raw; jpg accepts FFCV's JPEG mixes too
            lossy = ident.get("write_mode") in ("jpg", "smart", "proportion")
            for key, value, ok in (("write_mode", expected.write_mode, lossy == (expected.write_mode == "jpg")),
                                   ("max_resolution", expected.max_resolution,
                                    ident.get("max_resolution") == expected.max_resolution)):
                if not ok:
                    raise BetonMismatchError(f"{path} was written with {key} {ident.get(key)!r}, but "
                                             f"data.ffcv_{key} is {value!r} {fix}")
        note = (f"{path}: identity checked ({held}, fingerprint of {ident['fingerprint']['covers']})"
                if ident.get("dataset") is not None else
                f"{path}: its identity file names no data set (written from {ident.get('source')}): "
                "checked by its fields and shapes")
    else:
        note = (f"{path} has no identity file {side.name} (written by another tool or an older "
                "version): checked by its fields and shapes" + (" and labels" if labels is not None else "")
                + " only")
    need = "NDArrayField" if expected.gray else "RGBImageField"
    shape_ok = expected.image_shape is None or lay["image_shape"] == list(expected.image_shape)
    if (lay["fields"].get("image") != need or lay["fields"].get("label") != "IntField" or not shape_ok
            or expected.gray and lay["image_dtype"] != "uint8"):
        needs = f"fields {{image: {need}, label: IntField}}; images {_shape(expected.image_shape)} uint8"
        raise BetonMismatchError(f"{path} stores {_describe(lay)}, but {want} needs {needs}: it holds "
                                 f"another data set {fix}")
    if labels is not None:
        _check_labels(path, reader, np.asarray(labels, dtype=np.int64), want, fix)
    return note


def _check_labels(path: Path, reader: Any, labels: np.ndarray, want: str, fix: str) -> None:
    """The file's labels against the source data set's: the same count and the same class counts."""
    held = reader.metadata[reader.metadata.dtype.names[reader.field_names.index("label")]].astype(np.int64)
    if len(held) != len(labels):
        raise BetonMismatchError(f"{path} holds {len(held)} samples, but {want} has {len(labels)} {fix}")
    size = int(max(held.max(initial=0), labels.max(initial=0))) + 1
    a, b = np.bincount(held, minlength=size), np.bincount(labels, minlength=size)
    if (a != b).any():
        c = int(np.flatnonzero(a != b)[0])
        raise BetonMismatchError(f"{path} does not hold {want}: its labels differ (class {c}: {a[c]} "
                                 f"samples in the file, {b[c]} in the data set) {fix}")
