"""The in-memory data back end against the torchvision back end and independent computations."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torchvision import transforms as v1

from lightning_snn.checkpoints import CheckpointError, check_data_settings
from lightning_snn.data import VisionDataModule
from lightning_snn.data.memory import BatchTransform, MemoryLoader
from lightning_snn.data.resumable import EpochSampler

# identical float32 ops (x * (1/255) - mean) / std on both sides; one ulp of |x| <= 3 is 2.4e-7
ULPS = 1e-6


def _pair(data_root, dataset, **kw):
    extra = {"verify_md5": False} if dataset.startswith("cifar") else {}
    mem = VisionDataModule(dataset, root=str(data_root), num_workers=0, backend="memory", **extra, **kw)
    tv = VisionDataModule(dataset, root=str(data_root), num_workers=0, backend="torchvision", **extra, **kw)
    mem.setup("fit")
    tv.setup("fit")
    return mem, tv


@pytest.mark.parametrize("dataset, val_size, batch", [("fashion_mnist", 5000, 64), ("cifar10", 4, 4)])
def test_same_split_order_images_and_labels_as_torchvision(data_root, dataset, val_size, batch):
    """Without augmentation the memory back end's batches are the torchvision back end's: the same
    hold-out, the same shuffled order of epochs 0 and 1, the same normalised pixels and labels."""
    mem, tv = _pair(data_root, dataset, val_size=val_size, batch_size=batch, augment=False)
    assert mem.data_train.indices == tv.data_train.indices and mem.data_val.indices == tv.data_val.indices
    for epoch in (0, 1):
        a, b = mem.train_dataloader(), tv.train_dataloader()
        assert len(a) == len(b)
        a.sampler.set_epoch(epoch)
        b.sampler.set_epoch(epoch)
        for (xa, ya), (xb, yb), _ in zip(a, b, range(3)):
            assert xa.dtype == xb.dtype == torch.float32 and xa.shape == xb.shape == (batch, *mem.input_shape)
            assert torch.equal(ya, yb)
            torch.testing.assert_close(xa, xb, rtol=0, atol=ULPS)
    for la, lb in ((mem.val_dataloader(), tv.val_dataloader()), (mem.test_dataloader(), tv.test_dataloader())):
        (xa, ya), (xb, yb) = next(iter(la)), next(iter(lb))
        assert torch.equal(ya, yb)
        torch.testing.assert_close(xa, xb, rtol=0, atol=ULPS)
    torch.testing.assert_close(mem.data_test[3][0], tv.data_test[3][0], rtol=0, atol=ULPS)


def _reference_augment(image: np.ndarray, p: list[int], mean, std, pad: int) -> np.ndarray:
    """One image by hand (numpy): zero-pad, crop at (dy, dx), flip, normalise, erase the rectangle."""
    dy, dx, flip, top, left, eh, ew = p
    c, h, w = image.shape
    padded = np.pad(image, ((0, 0), (pad, pad), (pad, pad)))
    out = padded[:, dy:dy + h, dx:dx + w]
    out = out[:, :, ::-1] if flip else out
    out = (out.astype(np.float32) / np.float32(255) - np.array(mean, np.float32)[:, None, None]) \
        / np.array(std, np.float32)[:, None, None]
    out[:, top:top + eh, left:left + ew] = 0
    return out


def test_batch_augmentation_matches_a_per_image_computation_and_its_distribution_is_torchvisions(data_root):
    """CIFAR's crop-pad-4 + flip + Cutout on the batch: each image equals the hand computation with
    its drawn parameters; offsets lie within the pad and are uniform, flips and erasures happen
    about half the time, and the erased rectangles have the area / aspect law of torchvision's
    ``RandomErasing`` (compared with its own ``get_params`` draws)."""
    mem, _ = _pair(data_root, "cifar10", batch_size=20, cutout=True)
    images = mem.data_train.images  # the 20 real images, uint8
    tf = mem.batch_transform
    gen = torch.Generator().manual_seed(0)
    params = torch.cat([tf.draw(20, 32, 32, gen) for _ in range(200)])  # 4000 draws
    out = tf(images, params[:20])
    for i in range(20):
        want = _reference_augment(images[i].numpy(), params[i].tolist(), tf.mean, tf.std, 4)
        np.testing.assert_allclose(out[i].numpy(), want, rtol=0, atol=ULPS)

    n = len(params)
    sd = 4 * math.sqrt(0.25 / n)  # 4 binomial standard deviations of a frequency near 1/2
    offsets = params[:, :2]
    assert offsets.min() == 0 and offsets.max() == 8
    counts = torch.bincount(offsets.flatten(), minlength=9).float() / (2 * n)
    assert (counts - 1 / 9).abs().max() < 4 * math.sqrt((1 / 9) * (8 / 9) / (2 * n))
    assert abs(params[:, 2].float().mean() - 0.5) < sd
    erased = params[params[:, 5] > 0]
    assert abs(len(erased) / n - 0.5) < sd  # at 32x32 nearly every try fits

    torch.manual_seed(0)
    ref = []
    for _ in range(len(erased)):
        i, j, h, w, _ = v1.RandomErasing.get_params(torch.zeros(3, 32, 32), scale=(0.02, 0.4),
                                                      ratio=(0.4, 2.5), value=[0])
        if h < 32:
            ref.append((i, j, h, w))
    ref = torch.tensor(ref, dtype=torch.float64)
    ours = erased[:, 3:].double()
    for k, what in ((2, "height"), (3, "width")):  # rectangle sides: same mean within 5 standard errors
        se = math.sqrt(ours[:, k].var() / len(ours) + ref[:, k].var() / len(ref))
        assert abs(ours[:, k].mean() - ref[:, k].mean()) < 5 * se, what
    area = lambda r: r[:, 2] * r[:, 3] / 1024  # noqa: E731
    se = math.sqrt(area(ours).var() / len(ours) + area(ref).var() / len(ref))
    assert abs(area(ours).mean() - area(ref).mean()) < 5 * se
    assert (ours[:, 0] + ours[:, 2] <= 32).all() and (ours[:, 1] + ours[:, 3] <= 32).all()
    assert area(ours).min() >= 0.015 and area(ours).max() <= 0.42  # 2-40% up to side rounding


def _epoch(loader: MemoryLoader) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [(b.images, b.labels, b.params) for b in loader]


def test_resume_mid_epoch_gives_exactly_the_remaining_batches(data_root):
    """A loader resumed at batch k of epoch 1 yields the uninterrupted epoch's batches k.. (images,
    labels and augmentation parameters), and epoch 2 after it as the uninterrupted run does."""
    mem, _ = _pair(data_root, "cifar10", batch_size=3, val_size=2, cutout=True)

    def loader(resume: tuple[int, int] | None) -> MemoryLoader:
        mem._resume_position = resume
        out = mem._memory_loader(mem.data_train, train=True)
        out.on_device = True
        return out

    whole = loader(None)
    whole.sampler.set_epoch(1)
    epoch1 = _epoch(whole)
    whole.sampler.set_epoch(2)
    epoch2 = _epoch(whole)
    assert len(epoch1) == 18 // 3
    resumed = loader((1, 2))
    rest = _epoch(resumed)
    assert len(rest) == len(epoch1) - 2
    for got, want in zip(rest, epoch1[2:]):
        assert all(torch.equal(g, w) for g, w in zip(got, want))
    resumed.sampler.set_epoch(2)
    assert all(torch.equal(g, w) for got, want in zip(_epoch(resumed), epoch2) for g, w in zip(got, want))
    assert not torch.equal(epoch1[0][2], epoch2[0][2])  # new augmentation each epoch


def test_ddp_shards_are_disjoint_and_cover_the_training_split(data_root):
    """Two ranks' loaders (the data module's sampler, ``rank::world``) split every epoch's shuffled
    training positions into disjoint halves that together are the whole split after the hold-out."""
    mem, _ = _pair(data_root, "fashion_mnist", batch_size=100, val_size=5000)
    split = mem.data_train
    position = torch.arange(len(split.images))  # label = position in the split, to read shards back

    def shard(rank: int, epoch: int) -> torch.Tensor:
        sampler = EpochSampler(range(len(split)), world=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(epoch)
        loader = MemoryLoader(split.images, position, split.index, 100, transform=mem.batch_transform,
                              sampler=sampler, drop_last=True, on_device=True)
        return torch.cat([b.labels for b in loader])

    for epoch in (0, 1):
        a, b = shard(0, epoch), shard(1, epoch)
        assert len(a) == len(b) == 55_000 // 2 // 100 * 100
        assert not set(a.tolist()) & set(b.tolist())
        both = torch.cat([a, b])
        assert set(both.tolist()) <= set(split.indices)
    full_a, full_b = shard(0, 0), shard(1, 0)
    # without drop_last trimming (27,500 = 275 batches of 100 exactly), the two shards are the split
    assert sorted(torch.cat([full_a, full_b]).tolist()) == sorted(split.indices)
    assert not torch.equal(shard(0, 0), shard(0, 1))  # reshuffled per epoch


def test_auto_picks_memory_and_says_so_and_a_named_back_end_is_kept(data_root, caplog):
    with caplog.at_level(logging.INFO):
        dm = VisionDataModule("mnist", root=str(data_root))
    assert dm.backend == "memory" and "data.backend auto: memory for 'mnist'" in caplog.text
    assert VisionDataModule("mnist", root=str(data_root), backend="torchvision").backend == "torchvision"
    with pytest.raises(ValueError, match="data.backend memory does not hold data set 'imagenet' .valid: a data "
                                         "set of cifar10, cifar100, fashion_mnist, mnist"):
        VisionDataModule("imagenet", root=str(data_root), backend="memory")


def test_checkpoint_data_settings_let_memory_and_torchvision_resume_each_other_but_not_ffcv(data_root):
    """Both draw the same sampler (``test_same_split_order...``): same recorded settings. FFCV's
    order is its own: a fit resumed across it is refused."""
    mem, tv = (VisionDataModule("mnist", root=str(data_root), backend=b) for b in ("memory", "torchvision"))
    assert mem.run_settings() == tv.run_settings()
    ffcv = dict(mem.run_settings(), sample_order="ffcv")
    with pytest.raises(CheckpointError, match="data.sample_order: checkpoint 'ffcv', requested 'epoch_sampler'"):
        check_data_settings(ffcv, mem.run_settings(), "x.ckpt", "fit")


def test_a_fit_finishes_memory_batches_on_the_device_in_the_hook(data_root, tmp_path):
    """Under a running trainer the loader yields uint8 batches and the data module's
    ``on_after_batch_transfer`` makes them what the model trains on: normalised float images."""
    from lightning_snn.module import SNNModule

    dm = VisionDataModule("fashion_mnist", root=str(data_root), num_workers=0, batch_size=16)
    seen = []

    class Look(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            seen.append((trainer.train_dataloader.on_device, batch[0].dtype, float(batch[0].mean())))

    module = SNNModule("mlp", num_classes=10, input_shape=(1, 28, 28), T=2, network_args={"hidden": [16]})
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", limit_val_batches=0,
                         callbacks=[Look()], default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    assert [s[:2] for s in seen] == [(True, torch.float32)] * 2
    assert all(abs(m) < 0.5 for _, _, m in seen)  # normalised: mean near 0, not uint8 ~73
