"""FFCV back end: write any map-style image data set to a ``.beton`` file and load it fast.

Writing: ``write_beton`` (or ``python -m lightning_snn.data.write_beton``) stores RGB images with
``RGBImageField`` (raw or JPEG, optionally downscaled to ``max_resolution``) and single-channel
images exactly as ``uint8`` arrays, plus the integer label. Files are written to a temporary name
and moved into place, so an interrupted write never leaves a file that looks complete, and an
existing file is never overwritten unless asked.

Loading: ``ffcv_loader`` builds an FFCV ``Loader`` with the standard pipelines (CIFAR: translate
by up to 4 px = pad-4 random crop, flip; ImageNet: random-resized crop + flip for training,
centre crop with ratio 224/256 for evaluation; normalisation on the batch), ``distributed=True``
under DDP (each rank reads its own shard; Lightning does not add a sampler to FFCV loaders).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

Pipeline = Literal["cifar", "imagenet", "gray"]


class BetonError(ValueError):
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


def ffcv_available() -> bool:
    try:
        _require_ffcv()
    except ImportError:
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
) -> Path:
    """Write ``dataset`` (items ``(image, label)``) to ``path``; returns the path.

    Args:
        gray: store single-channel images exactly as ``uint8`` ``[H, W]`` arrays (MNIST-like).
        write_mode: RGB storage: ``raw`` pixels, ``jpg``, or FFCV's ``smart``/``proportion`` mix.
        max_resolution: downscale RGB images so the longer side is at most this (ImageNet: 256-512).
        jpeg_quality: JPEG quality for compressed images.
    """
    _require_ffcv()
    from ffcv.fields import IntField, NDArrayField, RGBImageField
    from ffcv.writer import DatasetWriter

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    if len(dataset) == 0:
        raise ValueError("cannot write an empty data set")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
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
        writer = DatasetWriter(str(tmp), {"image": image_field, "label": IntField()}, num_workers=num_workers)
        writer.from_indexed_dataset(adapted)
        if errors.exists():
            lines = errors.read_text().splitlines()
            raise RuntimeError(f"{len(lines)} sample(s) could not be read, {path} not written: {lines[0]}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        errors.unlink(missing_ok=True)
    return path


def check_beton(path: str | os.PathLike) -> int:
    """Validate a ``.beton`` file's header and tables against its size; return its length.

    Raises ``FileNotFoundError`` or ``BetonError`` (naming the file) instead of letting a damaged
    file fail later inside compiled loader code.
    """
    _require_ffcv()
    from ffcv.reader import Reader

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FFCV file {path} does not exist")
    size = path.stat().st_size
    try:
        reader = Reader(str(path))
    except Exception as e:  # header, descriptors or tables unreadable
        raise BetonError(f"{path} is not a readable FFCV .beton file ({type(e).__name__}: {e})") from e
    table = reader.alloc_table
    if len(reader.metadata) != reader.num_samples or int(reader.header["alloc_table_ptr"]) > size:
        raise BetonError(f"{path} is truncated: its header lists {reader.num_samples} samples")
    if len(table) and int((table["ptr"] + table["size"]).max()) > size:
        raise BetonError(f"{path} is truncated: sample data runs past the end of the file ({size} bytes)")
    return int(reader.num_samples)


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
