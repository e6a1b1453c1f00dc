"""Image-classification data modules over torchvision's real data-set classes.

A data set is named by a string (``DATASETS``); ``VisionDataModule`` gives it train / validation /
test / predict loaders with the usual normalisation and augmentation. Files are read from ``root``
in torchvision's layout (``scripts/fetch_data.sh`` lays out MNIST and Fashion-MNIST offline);
``download=True`` fetches them from their origin for users with internet.
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn, TrainerStatus
from pytorch_lightning.utilities.rank_zero import rank_zero_info
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets
from torchvision.transforms import v2

from lightning_snn.checkpoints import check_data_settings
from lightning_snn.data.beton_identity import Expected, check_contents
from lightning_snn.data.events import EventFormat, ToFrames, cifar10_dvs, nmnist
from lightning_snn.data.gesture import dvs128_gesture
from lightning_snn.data.synthetic import synthetic_events, synthetic_images
from lightning_snn.data.ffcv import Pipeline, check_beton, ffcv_available, ffcv_loader, write_beton
from lightning_snn.data.memory import BatchTransform, MemoryBatch, MemoryLoader, eval_sampler, load_split
from lightning_snn.data.resumable import EpochSampler, ResumableDataLoader
from lightning_snn.errors import DataFileError, UsageError
from lightning_snn.registry import Registry


def named_image_loader(path: str) -> Any:
    """torchvision's PIL loader for class-folder images, naming the file that cannot be decoded
    (PIL's "image file is truncated" does not)."""
    try:
        return datasets.folder.pil_loader(path)
    except (OSError, ValueError, SyntaxError) as e:  # PIL: truncated, unidentified, bad header
        raise DataFileError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


@dataclass(frozen=True)
class DatasetSpec:
    """What a data module needs to know about one data set."""

    cls: Callable[..., Dataset]
    folder: str  # sub-folder of ``root`` torchvision reads
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_augment: list[Callable] = field(default_factory=list)
    ffcv_pipeline: Pipeline = "gray"
    eval_resize: list[Callable] = field(default_factory=list)  # evaluation-time resize / crop
    events: EventFormat | None = None  # event-camera recordings, binned into T frames
    in_memory: bool = False  # small enough for the memory back end (one uint8 tensor per split)
    synthetic: bool = False  # generated per sample, no files: read by torchvision loaders only
    crop_padding: int = 0  # memory back end: the training augmentation of ``train_augment``
    flip: bool = False  # (random crop of the zero-padded image, horizontal flip), on the batch


class _CIFARNoMd5:
    """CIFAR readers that check the files exist instead of their md5 (``verify_md5=False``)."""

    def _check_integrity(self) -> bool:
        base = Path(self.root) / self.base_folder
        return all((base / name).is_file() for name, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class CIFAR10Unverified(_CIFARNoMd5, datasets.CIFAR10):
    pass


class CIFAR100Unverified(_CIFARNoMd5, datasets.CIFAR100):
    pass


def imagenet_folder(root: str, train: bool, download: bool, transform: Callable | None) -> Dataset:
    """ILSVRC-2012 as ``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*.JPEG`` (the usual
    ``ImageFolder`` layout; ``valprep.sh`` sorts the validation images into class folders)."""
    if download:
        raise ValueError("ImageNet cannot be downloaded automatically: get ILSVRC-2012 from "
                         "image-net.org and lay it out as imagenet/train and imagenet/val")
    split = Path(root) / ("train" if train else "val")
    if not split.is_dir():
        raise RuntimeError(f"{split} does not exist (expected ImageFolder class sub-folders)")
    return datasets.ImageFolder(str(split), transform=transform, loader=named_image_loader)


def _event_spec(reader: Callable[..., Dataset], folder: str, fmt: EventFormat) -> DatasetSpec:
    """A 10-class event data set: one input is a frame of ``fmt``'s shape (no normalisation)."""
    return DatasetSpec(reader, folder, fmt.frame_shape, 10, (), (), events=fmt)


_CIFAR_AUG = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

DATASETS: Registry[DatasetSpec] = Registry("dataset")
for _name, _spec in {
    "mnist": DatasetSpec(datasets.MNIST, "MNIST", (1, 28, 28), 10, (0.1307,), (0.3081,), in_memory=True),
    "fashion_mnist": DatasetSpec(
        datasets.FashionMNIST, "FashionMNIST", (1, 28, 28), 10, (0.2860,), (0.3530,), in_memory=True,
    ),
    "cifar10": DatasetSpec(
        datasets.CIFAR10, "cifar-10-batches-py", (3, 32, 32), 10,
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), _CIFAR_AUG, "cifar",
        in_memory=True, crop_padding=4, flip=True,
    ),
    "cifar100": DatasetSpec(
        datasets.CIFAR100, "cifar-100-python", (3, 32, 32), 100,
        (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), _CIFAR_AUG, "cifar",
        in_memory=True, crop_padding=4, flip=True,
    ),
    "imagenet": DatasetSpec(
        lambda root, **kw: imagenet_folder(str(Path(root) / "imagenet"), **kw), "imagenet",
        (3, 224, 224), 1000, *_IMAGENET,
        [v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip()], "imagenet",
        [v2.Resize(256, antialias=True), v2.CenterCrop(224)],
    ),
    # N-MNIST: 34x34 ATIS recordings, frames of equal duration (no augmentation in the papers)
    "nmnist": _event_spec(nmnist, "NMNIST", EventFormat((34, 34, 2))),
    # IDE's N-MNIST input: the same frames clipped to binary spikes
    "nmnist_spikes": _event_spec(nmnist, "NMNIST", EventFormat((34, 34, 2), binary=True)),
    # CIFAR10-DVS: 128x128 DVS recordings, frames of equal event count resized to 48x48, random
    # crop (pad 4) + flip for training (OTTT / DSR / IDE)
    "cifar10_dvs": _event_spec(cifar10_dvs, "CIFAR10DVS", EventFormat(
        (128, 128, 2), "number", size=48,
        augment=[v2.RandomCrop(48, padding=4), v2.RandomHorizontalFlip()],
    )),
    # DVS128 Gesture: the release's AEDAT 3.1 trials, one sample per labelled gesture, official
    # train / test trials, 11 classes; 128x128 frames of equal event count (OTTT / SLTT), no
    # augmentation (lightning_snn.data.gesture)
    "dvs128_gesture": DatasetSpec(dvs128_gesture, "DvsGesture", (2, 128, 128), 11, (), (),
                                  events=EventFormat((128, 128, 2), "number")),
}.items():
    DATASETS.register(_name)(lambda _s=_spec: _s)
# random inputs of a data set's shapes through its own transforms, no files (lightning_snn.data.synthetic;
# the memory suite): ``synthetic_<name>``, read from any existing ``root``
for _name in ("cifar10", "imagenet", "cifar10_dvs", "dvs128_gesture"):
    _real = DATASETS.build(_name)
    _reader = (synthetic_events(_real.events.sensor_size, _real.num_classes) if _real.events
               else synthetic_images(_real.input_shape, _real.num_classes))
    DATASETS.register(f"synthetic_{_name}")(
        lambda _s=replace(_real, cls=_reader, folder=".", in_memory=False, synthetic=True): _s)


# settings that define a training run (besides normalisation and event frames, see run_settings)
RUN_SETTINGS = ("dataset", "val_size", "seed", "batch_size", "augment", "cutout")

BACKENDS = ("auto", "memory", "torchvision", "ffcv")


def sample_order(backend: str) -> str:
    """The order a back end draws training samples in: ``memory`` and ``torchvision`` draw the same
    seeded ``EpochSampler`` over the same indices (a run may resume on either), FFCV its own."""
    return "ffcv" if backend == "ffcv" else "epoch_sampler"


class MemorySplit(Dataset):
    """Item access to (part of) a split held by the memory back end: ``(normalised image, label)``
    without augmentation; ``indices`` are positions in the split, as ``Subset``'s."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: list[int] | None,
                 transform: BatchTransform) -> None:
        self.images, self.labels, self.transform = images, labels, transform
        self.indices = indices
        self.index = torch.tensor(indices, dtype=torch.int64) if indices is not None else None

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = self.indices[i] if self.indices is not None else i
        return self.transform(self.images[j:j + 1])[0], int(self.labels[j])


class VisionDataModule(pl.LightningDataModule):
    """Train / val / test loaders for a registered image data set.

    Args:
        dataset: data-set name (``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``,
            ``imagenet`` = ``<root>/imagenet/{train,val}`` class folders; event data ``nmnist``,
            ``nmnist_spikes`` (binary frames, IDE's input), ``cifar10_dvs`` and ``dvs128_gesture``,
            see ``events`` and ``gesture``).
        root: directory holding the data set in torchvision's layout.
        download: fetch the files from their origin if missing (needs internet).
        batch_size: per-process batch size (under DDP the global batch is ``batch_size * world``).
        eval_batch_size: batch size for validation and test (default: ``batch_size``).
        num_workers: loader worker processes.
        val_size: training images held out for validation; 0 validates on the test split
            (what the papers report).
        augment: random augmentation of training images (crop + flip for CIFAR).
        cutout: with ``augment``, also erase a random rectangle (2-40% of the area, aspect 0.4-2.5,
            probability 0.5, filled with the data set mean) of each training image, the Cutout
            OTTT trains CIFAR with (torchvision back end only).
        verify_md5: check CIFAR files against torchvision's checksums.
        seed: seed of the train/validation split and of FFCV's shuffling.
        backend: ``memory`` (the whole split as one uint8 tensor, batches by index, normalisation
            and augmentation on the batch on the training device; MNIST, Fashion-MNIST,
            CIFAR-10/100), ``torchvision`` (DataLoader, per-sample transforms), ``ffcv``
            (``.beton`` files, written from the torchvision data set on first use) or ``auto``
            (the default: ``memory`` where it applies, else FFCV when it is installed and no
            ``cutout`` is asked, else ``torchvision``; the choice is logged). ``memory`` and
            ``torchvision`` give the same samples in the same order (a run may resume on either).
        beton_dir: where the ``.beton`` files live (default ``<root>/ffcv``).
        ffcv_write_mode: how RGB images are stored: ``raw`` (exact) or ``jpg``.
        ffcv_max_resolution: downscale stored RGB images to at most this side (ImageNet: 256-512).
        ffcv_order: FFCV's training order, ``random`` or ``quasi_random`` (with ``os_cache: false``
            for data larger than memory).
        os_cache: FFCV reads through the OS page cache (else its own quasi-random buffer).
        frames: frames per event recording, fed one per time step (the CLI links it to the
            model's ``T``); unused by image data sets.
    """

    def __init__(
        self,
        dataset: str = "fashion_mnist",
        root: str = "data",
        download: bool = False,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        val_size: int = 0,
        augment: bool = True,
        cutout: bool = False,
        verify_md5: bool = True,
        seed: int = 0,
        backend: Literal["auto", "memory", "torchvision", "ffcv"] = "auto",
        beton_dir: str | None = None,
        ffcv_write_mode: Literal["raw", "jpg"] = "raw",
        ffcv_max_resolution: int | None = None,
        ffcv_order: Literal["random", "quasi_random"] = "random",
        os_cache: bool = True,
        frames: int | None = None,
    ) -> None:
        super().__init__()
        self.spec: DatasetSpec = DATASETS.build(dataset)
        if batch_size <= 0:
            raise ValueError(f"data.batch_size must be > 0, got {batch_size} (valid: an integer >= 1)")
        if eval_batch_size is not None and eval_batch_size <= 0:
            raise ValueError(f"data.eval_batch_size must be > 0 or null (= batch_size), got "
                             f"{eval_batch_size} (valid: an integer >= 1, or null)")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers} "
                             "(valid: 0 = load in the main process, or a number of worker processes)")
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size} (valid: an integer >= 0)")
        if backend not in BACKENDS:
            raise ValueError(f"data.backend {backend!r} is not a back end (valid: {', '.join(BACKENDS)})")
        if backend == "memory" and not self.spec.in_memory:
            fits = ", ".join(n for n in DATASETS.names() if DATASETS.build(n).in_memory)
            raise ValueError(f"data.backend memory does not hold data set {dataset!r} (valid: a data set "
                             f"of {fits}; or data.backend auto, torchvision or ffcv)")
        folder = Path(root).expanduser() / self.spec.folder
        if not download and not folder.is_dir():  # fail before anything is started or written
            raise FileNotFoundError(
                f"data set {dataset!r} not found: {folder} does not exist. Run "
                f"`bash scripts/fetch_data.sh {root}` (MNIST, Fashion-MNIST offline), point "
                f"`data.root` at the data, or set `data.download: true` (needs internet)."
            )
        if self.spec.events is not None:
            if backend == "ffcv":
                raise ValueError(f"data set {dataset!r} is event data, which the ffcv backend does not "
                                 "read: use backend torchvision (or auto)")
            backend = "torchvision"
            if frames is None or frames <= 0:
                raise ValueError(f"data set {dataset!r} is event data: frames must be the number of "
                                 f"time steps T (> 0), got {frames}")
        if cutout and backend == "ffcv":
            raise ValueError("cutout is applied by the torchvision and memory back ends only: set "
                             "data.backend memory, torchvision or auto, or data.cutout false")
        if backend == "ffcv" and not ffcv_available():
            from lightning_snn.data.ffcv import _require_ffcv

            _require_ffcv()  # raises with the install instructions
        if backend == "auto":
            backend, why = self._auto_backend(cutout)
            rank_zero_info(f"data.backend auto: {backend} for {dataset!r} ({why})")
        self.backend = backend
        self.save_hyperparameters()
        self.data_train: Dataset | None = None
        self.data_val: Dataset | None = None
        self.data_test: Dataset | None = None
        self._resume_position: tuple[int, int] | None = None  # (epoch, batches) from a checkpoint
        self._opened: dict[tuple[bool, bool], Dataset] = {}  # (train, augment) -> opened split
        self._noted: set[str] = set()  # how each .beton was checked, said once
        self._tensors: dict[bool, tuple[torch.Tensor, torch.Tensor]] = {}  # memory: train? -> split
        self._index: dict[str, torch.Tensor | None] = {}  # memory: train / val -> positions in the split
        self.batch_transform = BatchTransform(self.spec.mean, self.spec.std,
                                              crop_padding=self.spec.crop_padding if augment else 0,
                                              flip=self.spec.flip and augment, cutout=augment and cutout)

    def _auto_backend(self, cutout: bool) -> tuple[str, str]:
        """The fastest back end that applies to this data set, and why it is the one."""
        if self.spec.synthetic:
            return "torchvision", "synthetic data, generated per sample (nothing to copy or write)"
        if self.spec.in_memory:
            return "memory", "the data set fits in memory: batches by index, transforms on the device"
        if self.spec.events is None and ffcv_available() and not cutout:
            return "ffcv", "too large for the memory back end"
        why = "event data" if self.spec.events is not None else (
            "cutout" if cutout and ffcv_available() else "FFCV is not installed")
        if self.spec.events is None and not ffcv_available():
            warnings.warn("FFCV is not installed: data.backend auto uses torchvision loaders")
        return "torchvision", why

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.spec.input_shape

    def _reader(self) -> Callable[..., Dataset]:
        if self.hparams.verify_md5:
            return self.spec.cls
        return {datasets.CIFAR10: CIFAR10Unverified, datasets.CIFAR100: CIFAR100Unverified}.get(
            self.spec.cls, self.spec.cls
        )

    def _open(self, train: bool, augment: bool, transform: bool = True) -> Dataset:
        hp = self.hparams
        root = Path(hp.root).expanduser()
        if self.spec.events is not None:
            frames = ToFrames(self.spec.events, hp.frames, augment) if transform else None
            return self.spec.cls(str(root), train=train, download=hp.download, transform=frames)
        tf = [v2.ToImage()] + (self.spec.train_augment if augment else self.spec.eval_resize)
        tf += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.spec.mean, self.spec.std)]
        if augment and hp.cutout:  # after normalisation, so a fill of 0 is the data set mean
            tf.append(v2.RandomErasing(p=0.5, scale=(0.02, 0.4), ratio=(0.4, 1 / 0.4), value=0))
        try:
            return self._reader()(str(root), train=train, download=hp.download,
                                  transform=v2.Compose(tf) if transform else None)
        except DataFileError:
            raise
        except (RuntimeError, AssertionError, ValueError, OSError, EOFError, pickle.UnpicklingError) as e:
            # torchvision: "Dataset not found or corrupted", a bare AssertionError for an MNIST
            # file with a bad header, an unpickling error for a damaged CIFAR batch
            bad = self._unreadable_file(train)
            what = f"file {bad} is damaged or not in its format, " if bad else ""
            detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            raise DataFileError(f"cannot read data set {hp.dataset!r} under {root} ({'train' if train else 'test'} "
                                f"split): {what}{detail}") from e

    def _unreadable_file(self, train: bool) -> Path | None:
        """The file of the MNIST / CIFAR family that fails to read on its own, if one does."""
        from torchvision.datasets.mnist import read_image_file, read_label_file

        cls = self._reader()
        base = Path(self.hparams.root).expanduser() / self.spec.folder
        if isinstance(cls, type) and issubclass(cls, datasets.MNIST):
            prefix = "train" if train else "t10k"
            checks = [(base / "raw" / f"{prefix}-images-idx3-ubyte", read_image_file),
                      (base / "raw" / f"{prefix}-labels-idx1-ubyte", read_label_file)]
        elif isinstance(cls, type) and issubclass(cls, datasets.CIFAR10):  # CIFAR-100 too
            names = [n for n, _ in (cls.train_list if train else cls.test_list)] + [cls.meta["filename"]]

            def unpickle(path: str) -> Any:
                with open(path, "rb") as f:
                    return pickle.load(f, encoding="latin1")

            checks = [(base / n, unpickle) for n in names]
        else:
            return None
        for path, read in checks:
            try:
                read(str(path))
            except Exception:
                return path
        return None

    def beton_path(self, train: bool) -> Path:
        hp = self.hparams
        folder = Path(hp.beton_dir) if hp.beton_dir else Path(hp.root).expanduser() / "ffcv"
        mode = "" if self.spec.ffcv_pipeline == "gray" else f"_{hp.ffcv_write_mode}"
        return folder / f"{hp.dataset}_{'train' if train else 'test'}{mode}.beton"

    def prepare_data(self) -> None:
        """Download if asked; for FFCV, write missing ``.beton`` files (one process does this)."""
        if self.hparams.download or self.backend == "ffcv":
            for train in (True, False):
                data = self._open(train=train, augment=False, transform=False)
                path = self.beton_path(train)
                if self.backend == "ffcv" and not path.exists():
                    write_beton(data, path, gray=self.spec.ffcv_pipeline == "gray",
                                write_mode=self.hparams.ffcv_write_mode,
                                max_resolution=self.hparams.ffcv_max_resolution,
                                num_workers=max(1, self.hparams.num_workers),
                                name=self.hparams.dataset, split="train" if train else "test")
                if self.backend == "ffcv":  # the labels of the source data set are at hand here
                    check_beton(path)
                    self._check_beton_contents(train, getattr(data, "targets", None))
        # Lightning calls this before any logger or checkpoint directory is created: a damaged
        # file of any split, or a file of other data, stops the run here, with nothing written.
        self._check_splits(self.trainer.state.fn if self.trainer is not None else None)

    def _check_beton_contents(self, train: bool, labels: Any = None) -> None:
        """The split's ``.beton`` holds this data set's split (``beton_identity.check_contents``)."""
        spec, hp = self.spec, self.hparams
        _, h, w = spec.input_shape
        gray = spec.ffcv_pipeline == "gray"
        shape = (h, w) if gray else (h, w, 3) if spec.ffcv_pipeline == "cifar" and not hp.ffcv_max_resolution else None
        path = self.beton_path(train)
        note = check_contents(path, Expected(hp.dataset, "train" if train else "test", gray, shape,
                                             hp.ffcv_write_mode, hp.ffcv_max_resolution), labels)
        if note not in self._noted:
            self._noted.add(note)
            if "no identity file" in note:
                warnings.warn(note)
            else:
                rank_zero_info(note)

    def _check_splits(self, stage: str | None) -> None:
        """Open (and for FFCV, check) every split ``stage`` uses: fit and validate use the
        training and the test split (the test after fit too), test / predict the test split."""
        splits = (False,) if stage in ("test", "predict") else (True, False)
        if self.backend == "ffcv":
            sizes = {train: check_beton(self.beton_path(train)) for train in (True, False)}
            for train in (True, False):
                self._check_beton_contents(train)
        elif self.backend == "memory":  # the arrays torchvision reads, without its transforms
            for train in splits:
                if train not in self._tensors:
                    self._tensors[train] = load_split(self._open(train=train, augment=False, transform=False))
            sizes = {True: len(self._tensors[True][0])} if True in splits else {}
        else:
            for train in splits:
                key = (train, train and self.hparams.augment)
                if key not in self._opened:
                    self._opened[key] = self._open(train=train, augment=key[1])
            sizes = {True: len(self._opened[(True, self.hparams.augment)])} if True in splits else {}
        if stage == "fit" and self.trainer is not None:  # a fit, not a look at the data
            self._check_trains_something(sizes[True])

    def _check_trains_something(self, n: int) -> None:
        """Fit drops the last partial batch: every process needs one whole training batch, and the
        trainer must not limit training to nothing (Lightning would skip it and still test)."""
        hp, trainer = self.hparams, self.trainer
        if hp.val_size >= n:
            raise ValueError(f"val_size {hp.val_size} >= training set size {n} (valid: 0 to {n - 1})")
        world = trainer.world_size
        per_process = math.ceil((n - hp.val_size) / world)  # DistributedSampler pads to equal shares
        if hp.batch_size > per_process:
            split = f"{n - hp.val_size:,} images of {hp.dataset!r} after val_size {hp.val_size}"
            split += f", {per_process:,} per process of {world}" if world > 1 else ""
            raise UsageError(f"data.batch_size {hp.batch_size} is larger than the training split ({split}): "
                             f"fit would train on 0 batches (valid: data.batch_size <= {per_process})")
        if trainer.limit_train_batches == 0:
            raise UsageError("trainer.limit_train_batches 0: fit would train on nothing (valid: > 0; "
                             "`validate` or `test` evaluate without training)")

    def _split(self, n: int) -> tuple[list[int], list[int]]:
        """Training and validation indices of the training split (``val_size`` held out)."""
        hp = self.hparams
        if hp.val_size >= n:
            raise ValueError(f"val_size {hp.val_size} >= training set size {n}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(hp.seed)).tolist()
        return perm[hp.val_size:], perm[: hp.val_size]

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        self._check_splits(stage)  # every split before anything runs, on every rank
        if self.backend == "ffcv":
            return
        if self.backend == "memory":
            self._setup_memory(stage)
            return
        if stage in ("fit", "validate", None) and self.data_train is None:
            train = self._opened[(True, hp.augment)]
            if hp.val_size:
                train_idx, val_idx = self._split(len(train))
                self.data_train = Subset(train, train_idx)
                self.data_val = Subset(self._open(train=True, augment=False), val_idx)
            else:
                self.data_train = train
        if self.data_test is None:
            self.data_test = self._opened[(False, False)]
            if not hp.val_size:
                self.data_val = self.data_test

    def _setup_memory(self, stage: str | None) -> None:
        """The memory back end's splits: the same training / validation positions as ``_split``."""
        hp, tf = self.hparams, self.batch_transform
        eval_tf = BatchTransform(self.spec.mean, self.spec.std)
        if stage in ("fit", "validate", None) and self.data_train is None:
            images, labels = self._tensors[True]
            if hp.val_size:
                train_idx, val_idx = self._split(len(images))
                self.data_train = MemorySplit(images, labels, train_idx, tf)
                self.data_val = MemorySplit(images, labels, val_idx, eval_tf)
            else:
                self.data_train = MemorySplit(images, labels, None, tf)
        if self.data_test is None:
            self.data_test = MemorySplit(*self._tensors[False], None, eval_tf)
            if not hp.val_size:
                self.data_val = self.data_test

    def _on_device(self) -> bool:
        """A running trainer builds this loader: its batches are finished in ``on_after_batch_transfer``."""
        return self.trainer is not None and self.trainer.state.status == TrainerStatus.RUNNING

    def _memory_loader(self, split: MemorySplit, train: bool) -> MemoryLoader:
        hp, trainer = self.hparams, self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if train:
            sampler: Any = EpochSampler(range(len(split)), world=world, rank=rank, shuffle=True, seed=hp.seed)
            if self._resume_position is not None:  # restored from a checkpoint: continue where it stopped
                epoch, batches = self._resume_position
                sampler.resume_at(epoch, batches * hp.batch_size)
                self._resume_position = None
        else:
            sampler = eval_sampler(len(split), world, rank)
        return MemoryLoader(
            split.images, split.labels, split.index,
            hp.batch_size if train else self._eval_batch_size,
            transform=self.batch_transform if train else BatchTransform(self.spec.mean, self.spec.std),
            augment=train and hp.augment, sampler=sampler, drop_last=train, seed=hp.seed,
            on_device=self._on_device(),
            position=self._train_position if train and trainer is not None else None,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The memory back end's batches, now on the training device: augment and normalise them
        there (``BatchTransform``); other batches pass unchanged."""
        if isinstance(batch, MemoryBatch):
            return self.batch_transform(batch.images, batch.params), batch.labels
        return batch

    def _ffcv(self, split: Literal["train", "val", "test"]) -> Any:
        hp = self.hparams
        from_train = split == "train" or (split == "val" and hp.val_size > 0)
        path = self.beton_path(from_train)
        indices = None
        if from_train and hp.val_size:
            train_idx, val_idx = self._split(check_beton(path))
            indices = train_idx if split == "train" else val_idx
        trainer = self.trainer
        return ffcv_loader(
            path, pipeline=self.spec.ffcv_pipeline, train=split == "train",
            batch_size=hp.batch_size if split == "train" else self._eval_batch_size,
            mean=self.spec.mean, std=self.spec.std, num_workers=max(1, hp.num_workers),
            indices=indices, distributed=bool(trainer and trainer.world_size > 1), seed=hp.seed,
            order=hp.ffcv_order if split == "train" else None, os_cache=hp.os_cache,
            augment=hp.augment,
        )

    @property
    def _eval_batch_size(self) -> int:
        hp = self.hparams
        return hp.batch_size if hp.eval_batch_size is None else hp.eval_batch_size

    def _eval_loader(self, data: Dataset | None) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            data,
            batch_size=self._eval_batch_size,
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> Any:
        """torchvision: shuffled by ``(seed, epoch)``, split across ranks, resumable mid-epoch
        (see ``resumable``). FFCV: shuffled by FFCV with the same seed, its own rank split."""
        if self.backend == "ffcv":
            return self._ffcv("train")
        if self.backend == "memory":
            return self._memory_loader(self.data_train, train=True)
        hp = self.hparams
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochSampler(self.data_train, world=world, rank=rank, shuffle=True, seed=hp.seed)
        if self._resume_position is not None:  # restored from a checkpoint: continue where it stopped
            epoch, batches = self._resume_position
            sampler.resume_at(epoch, batches * hp.batch_size)
            self._resume_position = None
        return ResumableDataLoader(
            self.data_train,
            batch_size=hp.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            position=self._train_position if trainer is not None else None,
        )

    def run_settings(self) -> dict[str, Any]:
        """The data settings that define a training run, whatever the back end: the data set, its
        split (``val_size``, ``seed``), ``batch_size``, augmentation, event frames, normalisation."""
        hp = self.hparams
        out = {k: hp[k] for k in RUN_SETTINGS}
        out["frames"] = hp.frames if self.spec.events is not None else None  # images: unused
        out["mean"], out["std"] = list(self.spec.mean), list(self.spec.std)
        out["sample_order"] = sample_order(self.backend)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: the run's data settings, and where the training loop is, to
        resume mid-epoch exactly."""
        state: dict[str, Any] = {"data": self.run_settings()}
        if self.trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            state["train_position"] = list(self._train_position())
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Called by Lightning on resume, before it builds the train loader. A fit never continues
        on other data: the position counts batches of the checkpoint's size, so it is not recomputed."""
        fitting = self.trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        if fitting and state_dict.get("data"):
            check_data_settings(state_dict["data"], self.run_settings(), "being resumed", "fit")
        if "train_position" in state_dict:
            self._resume_position = tuple(state_dict["train_position"])

    def _train_position(self) -> tuple[int, int]:
        """``(epoch, batches completed in it)`` of the fit loop; a finished epoch is ``(epoch + 1, 0)``."""
        trainer = self.trainer
        epoch = trainer.fit_loop.epoch_progress.current.processed
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= trainer.num_training_batches:
            return epoch + 1, 0
        return epoch, done

    def val_dataloader(self) -> Any:
        if self.backend == "memory":
            return self._memory_loader(self.data_val, train=False)
        return self._ffcv("val") if self.backend == "ffcv" else self._eval_loader(self.data_val)

    def test_dataloader(self) -> Any:
        if self.backend == "memory":
            return self._memory_loader(self.data_test, train=False)
        return self._ffcv("test") if self.backend == "ffcv" else self._eval_loader(self.data_test)

    def predict_dataloader(self) -> Any:
        return self.test_dataloader()
