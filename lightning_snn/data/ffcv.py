"""FFCV back end: write any map-style image data set to a ``.beton`` file and load it fast.

Writing: ``write_beton`` (or ``python -m lightning_snn.data.write_beton``) stores RGB images with
``RGBImageField`` (raw or JPEG, optionally downscaled to ``max_resolution``) and single-channel
images exactly as ``uint8`` arrays, plus the integer label. Files are written to a temporary name
and moved into place, so an interrupted write never leaves a file that looks complete, and an
existing file is never overwritten unless asked.

Every written file gets an identity file ``<file>.json`` beside it (data set, split, fields,
image shape, write mode, content fingerprint; see ``beton_identity``), which the data module checks
before training.

Loading: ``ffcv_loader`` builds an FFCV ``Loader`` with the standard pipelines (CIFAR: translate
by up to 4 px = pad-4 random crop, flip; ImageNet: random-resized crop + flip for training,
centre crop with ratio 224/256 for evaluation; normalisation on the batch), ``distributed=True``
under DDP (each rank reads its own shard; Lightning does not add a sampler to FFCV loaders).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from lightning_snn.atomic import check_destination, no_space, remove_stale_temps, temp_path
from lightning_snn.data.beton_identity import write_identity
from lightning_snn.errors import DataFileError, UsageError

Pipeline = Literal["cifar", "imagenet", "gray"]


class BetonError(UsageError):
    """A ``.beton`` file that is missing, truncated or not an FFCV file."""


def _require_ffcv() -> None:
    try:
        import ffcv  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ImportError(
            "the FFCV back end needs the `ffcv` package and its system libraries: run "
            "`bash scripts/setup.sh` (Debian: pkg-config libturbojpeg0-dev libopencv-dev, then "
            "`pip install ffcv`), or use `data.backend: torchvision` (or `auto`)."
        ) from e


@functools.cache
def ffcv_available() -> bool:
    """Whether ``ffcv`` and the system libraries its extension links are installed, found without
    importing it: ``import ffcv`` JIT-compiles its decoders with numba (seconds), a cost only a run
    that reads ``.beton`` files should pay."""
    import ctypes
    import importlib.machinery
    import importlib.util

    try:
        package = importlib.util.find_spec("ffcv")  # a top-level spec: nothing of ffcv runs
    except (ImportError, ValueError):  # ValueError: sys.modules["ffcv"] set to None (blocked)
        return False
    if package is None or not package.submodule_search_locations:
        return False
    native = importlib.machinery.PathFinder.find_spec("_libffcv", list(package.submodule_search_locations))
    if native is None or native.origin is None:
        return False
    try:
        ctypes.CDLL(native.origin)  # resolves libturbojpeg & co. as the import would
    except OSError:
        return False
    return True


def _as_hwc_uint8(image: Any) -> np.ndarray:
    """PIL image, ``HWC``/``HW`` array or ``CHW`` tensor -> ``HWC`` (or ``HW``) uint8 array."""
    if isinstance(image, Tensor):
        arr = image.detach().cpu()
        if arr.is_floating_point():
            arr = (arr.clamp(0, 1) * 255).round()
        arr = arr.to(torch.uint8).numpy()
        return arr[0] if arr.shape[0] == 1 else np.ascontiguousarray(arr.transpose(1, 2, 0))
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {arr.dtype}")
    return arr


class _Adapter:
    """Map-style view that yields ``(image, label)`` in the form FFCV's fields expect.

    FFCV's writer processes hang when one of them raises, so a sample that cannot be read is
    recorded in ``error_file`` and replaced by a placeholder; ``write_beton`` then fails.
    """

    def __init__(self, dataset: Any, gray: bool, error_file: Path) -> None:
        self.dataset, self.gray, self.error_file = dataset, gray, error_file
        self.placeholder: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, i: int) -> tuple[np.ndarray, int]:
        image, label = self.dataset[i]
        arr = _as_hwc_uint8(image)
        if self.gray:
            if arr.ndim == 3:
                raise ValueError(f"sample {i} has {arr.shape[-1]} channels; a gray field needs one")
        elif arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        return np.ascontiguousarray(arr), int(label)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        try:
            return self.read(i)
        except Exception as e:
            with open(self.error_file, "a") as f:
                f.write(f"sample {i}: {type(e).__name__}: {e}\n")
            return self.placeholder, 0


def _worker(work_fn: Any, errors: Any, *args: Any) -> None:
    """An FFCV writer process that reports why it died (e.g. ``ENOSPC`` writing a page) to its
    parent, which raises it in one line: no traceback of its own on stderr."""
    try:
        work_fn(*args)
    except BaseException as e:
        errors.put((getattr(e, "errno", None), f"{type(e).__name__}: {e}"))
        errors.close()
        errors.join_thread()
        sys.exit(1)


def _supervised_writer() -> type:
    """FFCV's ``DatasetWriter`` whose parent notices a dead worker.

    FFCV's parent waits for a sample counter to reach the data set length and then for every
    worker's allocation list; a worker that dies (a full disk, a killed process) leaves both waits
    hanging forever. This version polls the workers while it waits, stops the others when one
    fails, frees the shared metadata and raises ``OSError`` with the worker's error.
    """
    from multiprocessing import Process, Queue, Value
    import ctypes
    import queue as queue_mod
    import time

    from ffcv.memory_allocator import MemoryAllocator
    from ffcv.writer import DatasetWriter

    class SupervisedWriter(DatasetWriter):
        def _write_common(self, num_samples: int, queue_content: Any, work_fn: Any,
                          extra_worker_args: tuple) -> None:
            self.num_samples = num_samples
            self.prepare()
            work: Queue = Queue()
            for todo in queue_content:
                work.put(todo)
            for _ in range(self.num_workers):
                work.put(None)
            allocations: Queue = Queue()
            errors: Queue = Queue()
            done = Value(ctypes.c_uint64, 0)
            allocator = MemoryAllocator(self.fname, self.data_region_start, self.page_size)
            args = (work, self.metadata_sm, self.metadata_type, self.fields, allocator, done,
                    allocations, *extra_worker_args)
            procs = [Process(target=_worker, args=(work_fn, errors, *args)) for _ in range(self.num_workers)]

            def check() -> None:
                failed = [p for p in procs if p.exitcode not in (None, 0)]
                if failed:
                    try:
                        code, reason = errors.get(timeout=1.0)
                    except queue_mod.Empty:
                        code, reason = None, f"exit code {failed[0].exitcode}"
                    what = f"an FFCV writer process failed writing {self.fname}: {reason}"
                    raise OSError(code, what) if code else OSError(what)

            try:
                for p in procs:
                    p.start()
                while done.value < self.num_samples:
                    check()
                    time.sleep(0.05)
                collected: list = []
                for _ in procs:  # the last page is written after the count is complete
                    while True:
                        try:
                            collected.extend(allocations.get(timeout=0.2))
                            break
                        except queue_mod.Empty:
                            check()
                for p in procs:
                    p.join()
                check()
                self.finalize(collected)
            finally:
                for p in procs:
                    if p.is_alive():
                        p.terminate()
                        p.join()
                self.metadata_sm.close()
                self.metadata_sm.unlink()

    return SupervisedWriter


def write_beton(
    dataset: Any,
    path: str | os.PathLike,
    *,
    gray: bool = False,
    write_mode: Literal["raw", "jpg", "smart", "proportion"] = "raw",
    max_resolution: int | None = None,
    jpeg_quality: int = 90,
    num_workers: int = 2,
    overwrite: bool = False,
    name: str | None = None,
    split: str | None = None,
    source: str | None = None,
) -> Path:
    """Write ``dataset`` (items ``(image, label)``) to ``path`` and its identity to ``<path>.json``
    (see ``beton_identity``); returns the path.

    Args:
        gray: store single-channel images exactly as ``uint8`` ``[H, W]`` arrays (MNIST-like).
        write_mode: RGB storage: ``raw`` pixels, ``jpg``, or FFCV's ``smart``/``proportion`` mix.
        max_resolution: downscale RGB images so the longer side is at most this (ImageNet: 256-512).
        jpeg_quality: JPEG quality for compressed images.
        name, split: the registered data set and split the file holds (recorded in its identity).
        source: where the images come from when ``name`` is not a registered data set.
    """
    _require_ffcv()
    from ffcv.fields import IntField, NDArrayField, RGBImageField

    path = Path(path)
    check_destination(path, overwrite)
    if len(dataset) == 0:
        raise ValueError("cannot write an empty data set")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, ("partial", "errors"))  # left by writers that were killed
    tmp = temp_path(path, "partial")
    errors = tmp.with_suffix(".errors")
    adapted = _Adapter(dataset, gray, errors)
    first = adapted.read(0)[0]
    adapted.placeholder = np.zeros_like(first)
    if gray:
        image_field = NDArrayField(np.dtype("uint8"), first.shape)
    else:
        image_field = RGBImageField(
            write_mode=write_mode, max_resolution=max_resolution, jpeg_quality=jpeg_quality
        )
    try:
        writer = _supervised_writer()(str(tmp), {"image": image_field, "label": IntField()},
                                      num_workers=num_workers)
        try:
            writer.from_indexed_dataset(adapted)
        except OSError as e:
            if no_space(e):
                raise OSError(f"no space left on {path.parent} while writing {path.name}; nothing "
                              "was written (valid: a folder with free space)") from None
            raise
        if errors.exists():
            lines = errors.read_text().splitlines()
            raise DataFileError(f"{len(lines)} sample(s) could not be read, {path} not written: {lines[0]}")
        try:  # FFCV ignores short writes: the finished file must be complete before it is used
            check_beton(tmp)
        except BetonError as e:
            raise OSError(f"writing {path} failed: {e}") from e
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        errors.unlink(missing_ok=True)
    write_identity(path, dataset=name, split=split, source=source,
                   write_mode="raw" if gray else write_mode, max_resolution=None if gray else max_resolution,
                   jpeg_quality=jpeg_quality)
    return path


def _pointer_columns(reader: Any) -> list[tuple[str, str | None, Any]]:
    """``(metadata column, sub-field or None, handler)`` of every field that stores its data in
    the data region (one allocation per sample each); scalar fields (int, float) store none."""
    from ffcv.fields import BytesField, NDArrayField, RGBImageField

    out: list[tuple[str, str | None, Any]] = []
    for column, handler in zip(reader.metadata.dtype.names, reader.handlers.values()):
        if isinstance(handler, RGBImageField):
            out.append((column, "data_ptr", handler))
        elif isinstance(handler, BytesField):  # JSONField too
            out.append((column, "ptr", handler))
        elif isinstance(handler, NDArrayField):  # TorchTensorField too
            out.append((column, None, handler))
    return out


def check_beton(path: str | os.PathLike) -> int:
    """Validate a ``.beton`` file against its own metadata; return its number of samples.

    The layout is ``header | field descriptors | per-sample metadata | data pages | allocation
    table`` (the table, ``(sample_id, ptr, size)`` per allocation, is written last). Checked: the
    header (format version, page size, sample count), that the file ends exactly where the
    allocation table of ``num_samples x (fields with data)`` entries ends (any truncation or
    appended bytes), and that every sample's data pointer in the metadata has its own entry in the
    table, whose range lies inside the data region (a zeroed header, metadata or table). FFCV's
    reader would otherwise map a sample whose entry is missing to another sample's data silently.

    Raises ``FileNotFoundError`` or ``BetonError`` (naming the file and what is wrong).
    """
    _require_ffcv()
    from ffcv.reader import Reader
    from ffcv.types import ALLOC_TABLE_TYPE, CURRENT_VERSION, FieldDescType, HeaderType
    from ffcv.writer import MAX_PAGE_SIZE, MIN_PAGE_SIZE

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FFCV file {path} does not exist")
    size = path.stat().st_size
    fix = "write it again (python -m lightning_snn.data.write_beton ... --overwrite)"

    def bad(what: str) -> BetonError:
        return BetonError(f"{path} is damaged: {what}; {fix}")

    if size < HeaderType.itemsize:
        raise bad(f"{size} bytes, shorter than an FFCV header ({HeaderType.itemsize} bytes)")
    header = np.fromfile(path, dtype=HeaderType, count=1)[0]
    version, page = int(header["version"]), int(header["page_size"])
    n, n_fields, table_ptr = int(header["num_samples"]), int(header["num_fields"]), int(header["alloc_table_ptr"])
    if version != CURRENT_VERSION:
        raise bad(f"header says format version {version}, expected {CURRENT_VERSION} "
                  "(a zeroed header or not an FFCV file)")
    if page & (page - 1) or not MIN_PAGE_SIZE <= page < MAX_PAGE_SIZE:
        raise bad(f"header page size {page} is not a power of 2 in [{MIN_PAGE_SIZE}, {MAX_PAGE_SIZE})")
    if n == 0 or n_fields == 0:
        raise bad(f"header lists {n} samples and {n_fields} fields")
    if HeaderType.itemsize + n_fields * FieldDescType.itemsize > size:
        raise bad(f"{size} bytes, too short for the {n_fields} field descriptors its header lists")
    try:
        reader = Reader(str(path))
    except Exception as e:  # field descriptors unreadable
        raise bad(f"field descriptors unreadable ({type(e).__name__}: {e})") from e
    meta_end = HeaderType.itemsize + n_fields * FieldDescType.itemsize + n * reader.metadata_type.itemsize
    if not meta_end <= table_ptr <= size:
        raise bad(f"allocation table at byte {table_ptr}, outside [{meta_end}, {size}] "
                  f"(metadata of {n} samples ends at {meta_end}; file has {size} bytes)")
    columns = _pointer_columns(reader)
    expected = table_ptr + n * len(columns) * ALLOC_TABLE_TYPE.itemsize
    if size != expected:
        raise bad(f"{size} bytes, but its {n} samples and allocation table end at byte {expected} "
                  f"({'truncated' if size < expected else 'extra bytes at the end'})")
    table = np.fromfile(path, dtype=ALLOC_TABLE_TYPE, count=n * len(columns), offset=table_ptr)
    if not len(columns):
        return n
    sid, ptr, length = (table[k].astype(np.int64) for k in ("sample_id", "ptr", "size"))
    outside = (sid >= n) | (ptr < meta_end) | (ptr + length > table_ptr)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise bad(f"{int(outside.sum())} allocation entries point outside the data region "
                  f"[{meta_end}, {table_ptr}) or past sample {n - 1}, e.g. entry {i}: sample "
                  f"{int(sid[i])}, bytes {int(ptr[i])}+{int(length[i])}")
    order = np.argsort(ptr, kind="stable")
    sorted_ptr = ptr[order]
    if len(sorted_ptr) > 1 and (np.diff(sorted_ptr) < length[order][:-1]).any():
        raise bad("allocation entries overlap")
    for column, sub, handler in columns:
        want = reader.metadata[column]
        want = (want[sub] if sub else want).astype(np.int64)
        at = np.searchsorted(sorted_ptr, want).clip(0, len(sorted_ptr) - 1)
        entry = order[at]
        missing = (sorted_ptr[at] != want) | (sid[entry] != np.arange(n))
        if missing.any():
            i = int(np.flatnonzero(missing)[0])
            raise bad(f"{int(missing.sum())} of {n} samples have no allocation entry for field "
                      f"{reader.field_names[reader.metadata.dtype.names.index(column)]!r} at the "
                      f"address their metadata gives, e.g. sample {i} (byte {int(want[i])})")
        element = getattr(handler, "element_size", None)
        if sub is None and element is not None and (length[entry] != element).any():
            raise bad(f"allocation sizes differ from the field's {element} bytes per sample")
    return n


class NormalizeBatch(nn.Module):
    """uint8 ``[B, C, H, W]`` (or ``[B, H, W]`` gray) -> float, normalised by mean/std in [0, 1] units."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return (x.float() - self.mean) / self.std


class _Fresh(nn.Module):
    """Copy out of FFCV's reused batch buffer, so a batch stays valid after the next one."""

    def forward(self, x: Tensor) -> Tensor:
        return x.clone()


class FFCVLoader:
    """An FFCV ``Loader`` whose epochs always start outside ``torch.inference_mode``.

    Lightning evaluates under inference mode; FFCV allocates an epoch's batch buffers when the
    epoch starts and fills them in place from its own threads, which inference tensors forbid.
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Any:
        with torch.inference_mode(False):
            return iter(self.loader)


def ffcv_loader(
    path: str | os.PathLike,
    *,
    pipeline: Pipeline,
    train: bool,
    batch_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    num_workers: int = 2,
    indices: list[int] | None = None,
    distributed: bool = False,
    seed: int = 0,
    order: Literal["random", "quasi_random", "sequential"] | None = None,
    os_cache: bool = True,
    drop_last: bool | None = None,
    resolution: int = 224,
    augment: bool = True,
    device: torch.device | str = "cpu",
) -> Any:
    """An FFCV loader over ``path`` yielding ``(images float [B, C, H, W], labels [B])``.

    ``order`` defaults to ``random`` for training and ``sequential`` for evaluation
    (``quasi_random`` is FFCV's order for data sets larger than memory, with ``os_cache=False``).
    """
    _require_ffcv()
    from ffcv.fields.decoders import (
        CenterCropRGBImageDecoder,
        IntDecoder,
        NDArrayDecoder,
        RandomResizedCropRGBImageDecoder,
        SimpleRGBImageDecoder,
    )
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import (
        Convert, RandomHorizontalFlip, RandomTranslate, Squeeze, ToDevice, ToTensor, ToTorchImage,
    )

    check_beton(path)
    augment = train and augment
    if pipeline == "gray":
        image: list[Any] = [NDArrayDecoder(), ToTensor()]
    else:
        if pipeline == "imagenet":
            decoder = (RandomResizedCropRGBImageDecoder((resolution, resolution)) if augment
                       else CenterCropRGBImageDecoder((resolution, resolution), ratio=224 / 256))
            image = [decoder] + ([RandomHorizontalFlip()] if augment else [])
        else:
            image = [SimpleRGBImageDecoder()]
            image += [RandomTranslate(padding=4), RandomHorizontalFlip()] if augment else []
        image += [ToTensor(), ToTorchImage()]
    image += [ToDevice(torch.device(device), non_blocking=True), NormalizeBatch(mean, std).to(device)]
    label = [IntDecoder(), ToTensor(), Squeeze(1), Convert(torch.int64),
             ToDevice(torch.device(device), non_blocking=True), _Fresh()]
    order = order or ("random" if train else "sequential")
    return FFCVLoader(Loader(
        str(path),
        batch_size=batch_size,
        num_workers=num_workers,
        order={"random": OrderOption.RANDOM, "quasi_random": OrderOption.QUASI_RANDOM,
               "sequential": OrderOption.SEQUENTIAL}[order],
        os_cache=os_cache,
        distributed=distributed,
        seed=seed,
        indices=indices,
        drop_last=train if drop_last is None else drop_last,
        pipelines={"image": image, "label": label},
    ))
