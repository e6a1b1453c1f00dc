"""In-memory back end: a whole split as one ``uint8`` tensor, batches by index, the transforms on the batch.

For data sets that fit in memory (MNIST, Fashion-MNIST, CIFAR-10/100) a per-sample loader spends
far more time in Python than the network spends on a small model (PIL image, ``v2`` transforms and
``collate`` per image: ~6,500 img/s). Here a split is read once into ``images uint8 [N, C, H, W]``
and ``labels int64 [N]``; a batch is ``images[idx]``, and normalisation and augmentation are
applied to the whole batch tensor, on the training device when a trainer drives the loader (the
data module's ``on_after_batch_transfer``), as fast ANN training loops do.

Semantics are those of the torchvision back end:

- the order is the same :class:`~lightning_snn.data.resumable.EpochSampler` over the same indices
  (the same validation hold-out, the same per-epoch permutation from ``(seed, epoch)``, the same
  ``rank::world`` DDP shards, the same mid-epoch resume);
- the images are torchvision's own (read by the same data-set class, ``transform=None``) and the
  normalisation is ``(x / 255 - mean) / std`` as ``v2.ToDtype(scale=True)`` + ``v2.Normalize``;
- the augmentation has the same distribution as ``v2.RandomCrop(size, padding=4)`` (zero fill
  before normalisation), ``v2.RandomHorizontalFlip()`` and, with Cutout, ``v2.RandomErasing(p=0.5,
  scale=(0.02, 0.4), ratio=(0.4, 2.5), value=0)`` after normalisation. Its random numbers come from a
  generator seeded by ``(seed, epoch, rank, batch)`` on the CPU, so they do not depend on the device
  and a run resumed mid-epoch sees the very batches (augmentation included) the uninterrupted run saw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from lightning_snn.data.resumable import EpochSampler


class MemoryBatch(NamedTuple):
    """A batch before its transforms: ``images uint8 [B, C, H, W]``, ``labels int64 [B]`` and the
    augmentation parameters ``params int64 [B, 7]`` (see :meth:`BatchTransform.draw`; ``[0, 7]``
    for evaluation batches). Lightning moves all three to the device; the hook finishes it."""

    images: Tensor
    labels: Tensor
    params: Tensor


def load_split(dataset: Dataset) -> tuple[Tensor, Tensor]:
    """``(images uint8 [N, C, H, W], labels int64 [N])`` of a torchvision data set opened with
    ``transform=None``: the arrays it holds (MNIST family ``.data [N, H, W]``, CIFAR ``.data
    [N, H, W, C]``), else every item read once (PIL image or array, and its label)."""
    data = getattr(dataset, "data", None)
    targets = getattr(dataset, "targets", None)
    if data is not None and targets is not None and len(data) == len(dataset):
        images = torch.as_tensor(np.asarray(data)) if not isinstance(data, Tensor) else data
        if images.dtype == torch.uint8 and images.dim() in (3, 4):
            images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
            return images.contiguous(), torch.as_tensor(targets, dtype=torch.int64).clone()
    xs, ys = [], []
    for i in range(len(dataset)):
        image, label = dataset[i]
        arr = torch.as_tensor(np.asarray(image))
        if arr.dtype != torch.uint8:
            raise TypeError(f"the memory back end needs uint8 images, item {i} is {arr.dtype}")
        xs.append(arr.unsqueeze(0) if arr.dim() == 2 else arr.permute(2, 0, 1))
        ys.append(int(label))
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


class BatchTransform:
    """Normalisation and augmentation of a ``uint8 [B, C, H, W]`` batch, on whatever device it is.

    Args:
        mean, std: per-channel statistics in ``[0, 1]`` units (``v2.Normalize``'s).
        crop_padding: random crop of the original size from the image zero-padded by this many
            pixels on every side (``v2.RandomCrop(size, padding)``); 0 = none.
        flip: random horizontal flip with probability 1/2.
        cutout: erase one random rectangle per image with probability 1/2 after normalisation
            (``v2.RandomErasing(p=0.5, scale=(0.02, 0.4), ratio=(0.4, 2.5), value=0)``).
    """

    ATTEMPTS = 10  # RandomErasing's tries to draw a rectangle that fits
    SCALE, RATIO = (0.02, 0.4), (0.4, 1 / 0.4)

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], crop_padding: int = 0,
                 flip: bool = False, cutout: bool = False) -> None:
        self.mean, self.std = tuple(mean), tuple(std)
        self.crop_padding, self.flip, self.cutout = crop_padding, flip, cutout
        self._stats: dict[torch.device, tuple[Tensor, Tensor]] = {}  # mean, std on each device used

    def _mean_std(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._stats:
            self._stats[device] = (torch.tensor(self.mean, device=device).view(1, -1, 1, 1),
                                   torch.tensor(self.std, device=device).view(1, -1, 1, 1))
        return self._stats[device]

    @property
    def augments(self) -> bool:
        return bool(self.crop_padding or self.flip or self.cutout)

    def draw(self, n: int, h: int, w: int, generator: torch.Generator) -> Tensor:
        """Augmentation parameters of ``n`` images of ``h x w``, one row each: ``(dy, dx, flip,
        erase top, erase left, erase height, erase width)`` (a height of 0 = no erasing)."""
        params = torch.zeros(n, 7, dtype=torch.int64)
        pad = self.crop_padding
        if pad:  # RandomCrop: top-left corner uniform in [0, 2 * pad] of the padded image
            params[:, :2] = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
        if self.flip:
            params[:, 2] = (torch.rand(n, generator=generator) < 0.5).long()
        if self.cutout:
            params[:, 3:] = self._draw_erasing(n, h, w, generator)
        return params

    def _draw_erasing(self, n: int, h: int, w: int, generator: torch.Generator) -> Tensor:
        """RandomErasing's rectangle: area ``U(0.02, 0.4) * h * w``, aspect ``exp U(log 0.4,
        log 2.5)``, sides ``round(sqrt(area * aspect))`` x ``round(sqrt(area / aspect))``; the first
        of 10 tries that fits inside the image, none if no try fits; corner uniform where it fits."""
        k, area = self.ATTEMPTS, h * w
        erase = torch.rand(n, generator=generator) < 0.5
        target = area * torch.empty(n, k).uniform_(*self.SCALE, generator=generator)
        log_r = torch.empty(n, k).uniform_(math.log(self.RATIO[0]), math.log(self.RATIO[1]),
                                           generator=generator)
        eh = torch.sqrt(target * torch.exp(log_r)).round().long()
        ew = torch.sqrt(target / torch.exp(log_r)).round().long()
        fits = (eh < h) & (ew < w)
        first = fits.long().argmax(1)  # index of the first fitting try (0 when none fits)
        row = torch.arange(n)
        eh, ew = eh[row, first], ew[row, first]
        keep = erase & fits.any(1)
        eh, ew = torch.where(keep, eh, 0), torch.where(keep, ew, 0)
        u = torch.rand(n, 2, generator=generator)  # corner: integer uniform in [0, h - eh]
        top = (u[:, 0] * (h - eh + 1)).floor().long().clamp(max=h - 1)
        left = (u[:, 1] * (w - ew + 1)).floor().long().clamp(max=w - 1)
        return torch.stack([top, left, eh, ew], 1)

    def __call__(self, images: Tensor, params: Tensor | None = None) -> Tensor:
        """``uint8 [B, C, H, W]`` -> ``float32``, augmented by ``params`` (rows of :meth:`draw`;
        ``None`` or no rows = evaluation) and normalised."""
        x = images
        augment = params is not None and params.numel() > 0
        if augment:
            params = params.to(x.device, non_blocking=True)
            b, _, h, w = x.shape
            pad = self.crop_padding
            if pad:  # gather the h x w window at (dy, dx) of the zero-padded batch
                padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
                rows = params[:, 0, None] + torch.arange(h, device=x.device)  # [B, H]
                cols = params[:, 1, None] + torch.arange(w, device=x.device)  # [B, W]
                x = padded[torch.arange(b, device=x.device)[:, None, None, None],
                           torch.arange(x.shape[1], device=x.device)[None, :, None, None],
                           rows[:, None, :, None], cols[:, None, None, :]]
            if self.flip:
                x = torch.where(params[:, 2].bool()[:, None, None, None], x.flip(-1), x)
        mean, std = self._mean_std(x.device)
        out = x.float().mul_(1.0 / 255).sub_(mean).div_(std)  # the ops of ToDtype(scale=True) + Normalize
        if augment and self.cutout:  # zero = the data set mean after normalisation
            h, w = out.shape[-2:]
            r = torch.arange(h, device=out.device)
            c = torch.arange(w, device=out.device)
            top, left, eh, ew = params[:, 3:].unbind(1)
            inside = (((r >= top[:, None]) & (r < (top + eh)[:, None]))[:, :, None]
                      & ((c >= left[:, None]) & (c < (left + ew)[:, None]))[:, None, :])
            out = out.masked_fill(inside[:, None], 0.0)
        return out


def batch_seed(seed: int, epoch: int, rank: int, batch: int) -> int:
    """The seed of one training batch's augmentation, a pure function of where it is in the run."""
    return int(np.random.SeedSequence([seed, epoch, rank, batch]).generate_state(1, np.uint64)[0] >> 1)


class MemoryLoader:
    """Batches of ``images[index[i]]`` in the order of ``sampler`` (all of ``index`` in order when
    ``sampler`` is None).

    Args:
        images, labels: the whole split (``uint8 [N, C, H, W]``, ``int64 [N]``).
        index: positions in the split this loader covers (the training or validation part), or
            None for all; the sampler draws positions into it.
        batch_size, drop_last: as ``DataLoader``'s.
        sampler: an :class:`EpochSampler` for training (Lightning calls its ``set_epoch``; a
            pending ``resume_at`` is honoured), a ``DistributedSampler`` for evaluation under DDP.
        transform: the batch transform; ``augment`` draws its parameters per batch.
        on_device: yield :class:`MemoryBatch` for the data module's ``on_after_batch_transfer``
            to finish on the device; otherwise the loader finishes each batch itself (on the CPU)
            and yields ``(images float, labels)`` like any other loader.
        position: the trainer's ``(epoch, batches)``, reported by ``state_dict`` (see
            ``ResumableDataLoader``).
    """

    def __init__(self, images: Tensor, labels: Tensor, index: Tensor | None, batch_size: int, *,
                 transform: BatchTransform, augment: bool = False, sampler: Any = None,
                 drop_last: bool = False, seed: int = 0, on_device: bool = False,
                 position: Callable[[], tuple[int, int]] | None = None) -> None:
        self.images, self.labels = images, labels
        self.index = index
        self.batch_size, self.drop_last = batch_size, drop_last
        self.transform, self.augment = transform, augment and transform.augments
        self.sampler, self.seed, self.on_device, self.position = sampler, seed, on_device, position
        self.batch_sampler = None  # read by Lightning's checks, as on a DataLoader (batches are made here)

    def _size(self) -> int:
        if self.sampler is not None:
            return len(self.sampler)
        return len(self.index) if self.index is not None else len(self.images)

    def __len__(self) -> int:
        n = self._size()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        first_batch = 0
        if isinstance(self.sampler, EpochSampler):
            first_batch = self.sampler.pending_skip() // self.batch_size
        if self.sampler is not None:
            order = torch.as_tensor(list(iter(self.sampler)), dtype=torch.int64)
        else:
            order = torch.arange(self._size())
        if self.index is not None:
            order = self.index[order]
        epoch = getattr(self.sampler, "epoch", 0)
        rank = getattr(self.sampler, "rank", 0)
        _, _, h, w = self.images.shape
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        for k, start in enumerate(range(0, stop, self.batch_size)):
            idx = order[start:start + self.batch_size]
            images, labels = self.images[idx], self.labels[idx]
            if self.augment:
                gen = torch.Generator().manual_seed(batch_seed(self.seed, epoch, rank, first_batch + k))
                params = self.transform.draw(len(idx), h, w, gen)
            else:
                params = torch.zeros(0, 7, dtype=torch.int64)
            if self.on_device:
                yield MemoryBatch(images, labels, params)
            else:
                yield self.transform(images, params), labels

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self.position() if self.position is not None else (0, 0)
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """No-op: the data module positions the sampler (as for ``ResumableDataLoader``)."""


def eval_sampler(n: int, world: int, rank: int) -> DistributedSampler | None:
    """Evaluation under DDP: each rank a ``rank::world`` share in order, padded to equal shares
    (what Lightning gives a torchvision evaluation loader); None with one process."""
    if world <= 1:
        return None
    return DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False)
