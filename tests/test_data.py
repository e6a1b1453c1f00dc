"""Data modules on the real offline data sets."""

import pickle

import pytest
import torch

from conftest import write_cifar100_layout
from lightning_snn.data import DATASETS, VisionDataModule


def test_fashion_mnist_splits_and_normalisation(data_root):
    dm = VisionDataModule("fashion_mnist", root=str(data_root), batch_size=64, num_workers=0,
                          val_size=5000)
    dm.setup("fit")
    assert len(dm.data_train) == 55_000 and len(dm.data_val) == 5_000
    assert not set(dm.data_train.indices) & set(dm.data_val.indices)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    dm.setup("test")
    assert len(dm.data_test) == 10_000
    xs = torch.stack([dm.data_test[i][0] for i in range(2000)])
    assert abs(xs.mean().item()) < 0.1 and abs(xs.std().item() - 1) < 0.1  # normalised


def test_validation_on_test_split_by_default(data_root):
    dm = VisionDataModule("mnist", root=str(data_root), num_workers=0)
    dm.setup("fit")
    assert len(dm.data_train) == 60_000 and dm.data_val is dm.data_test and len(dm.data_val) == 10_000


def test_cifar10_real_images(data_root):
    dm = VisionDataModule("cifar10", root=str(data_root), batch_size=4, num_workers=0, verify_md5=False)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and int(y.max()) < 10
    # the same files fail torchvision's checksum pins: a clear error, not a silent read
    strict = VisionDataModule("cifar10", root=str(data_root), num_workers=0)
    with pytest.raises(RuntimeError, match="cannot read data set 'cifar10' under"):
        strict.setup("fit")


def test_cifar100_layout(tmp_path, data_root):
    """CIFAR-100's reader on its own file layout, filled with the 20 real CIFAR-10 images."""
    write_cifar100_layout(data_root, tmp_path)
    src = pickle.load(open(data_root / "cifar-10-batches-py" / "test_batch", "rb"), encoding="latin1")
    dm = VisionDataModule("cifar100", root=str(tmp_path), batch_size=5, num_workers=0,
                          verify_md5=False, augment=False)
    assert dm.num_classes == 100 and dm.input_shape == (3, 32, 32)
    dm.setup("fit")
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (5, 3, 32, 32) and y.tolist() == [l * 10 + 3 for l in src["labels"][:5]]


def test_registry_names():
    assert DATASETS.names() == ["cifar10", "cifar100", "cifar10_dvs", "dvs128_gesture", "fashion_mnist",
                               "imagenet", "mnist", "nmnist", "nmnist_spikes", "synthetic_cifar10",
                               "synthetic_cifar10_dvs", "synthetic_dvs128_gesture", "synthetic_imagenet"]
    with pytest.raises(ValueError, match="unknown dataset 'svhn'; valid choices: cifar10"):
        VisionDataModule("svhn")


def write_image_folder(src, root, size=64):
    """An ImageNet-style class-folder tree of JPEGs made from the 20 real CIFAR-10 images."""
    from PIL import Image

    batch = pickle.load(open(src / "cifar-10-batches-py" / "test_batch", "rb"), encoding="latin1")
    images = batch["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    for split in ("train", "val"):
        for i, (img, label) in enumerate(zip(images, batch["labels"])):
            folder = root / "imagenet" / split / f"n{label:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).resize((size, size)).save(folder / f"img_{i}.JPEG", quality=95)
    return len(set(batch["labels"]))


def test_imagenet_folder_layout(tmp_path, data_root):
    classes = write_image_folder(data_root, tmp_path)
    dm = VisionDataModule("imagenet", root=str(tmp_path), batch_size=4, num_workers=0, backend="torchvision")
    assert dm.num_classes == 1000 and dm.input_shape == (3, 224, 224)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 224, 224) and int(y.max()) < classes
    xv, _ = next(iter(dm.val_dataloader()))
    assert xv.shape == (4, 3, 224, 224)
    with pytest.raises(FileNotFoundError, match="imagenet does not exist"):
        VisionDataModule("imagenet", root=str(tmp_path / "nowhere"))


def test_cutout_erases_a_rectangle_of_mean_in_training_images_only(data_root):
    """With cutout, about half the training images have a rectangle of exact zeros (the mean after
    normalisation) covering 2-40% of the area; without it, or at evaluation, none does."""
    def zero_fraction(cutout: bool, train: bool) -> list[float]:
        dm = VisionDataModule("cifar10", root=str(data_root), num_workers=0, verify_md5=False,
                              cutout=cutout)
        data = dm._open(train=train, augment=train)
        torch.manual_seed(0)
        return [float((data[i % 20][0] == 0).all(0).float().mean()) for i in range(200)]

    erased = [f for f in zero_fraction(True, True) if f > 0]
    assert 70 <= len(erased) <= 130 and min(erased) >= 0.01 and max(erased) <= 0.45  # side rounding
    assert not any(zero_fraction(False, True)) and not any(zero_fraction(True, False))
    with pytest.raises(ValueError, match="cutout is applied by the torchvision and memory back ends only"):
        VisionDataModule("cifar10", root=str(data_root), cutout=True, backend="ffcv")


def _fmnist_copy(data_root, dest, damage):
    """Fashion-MNIST under ``dest`` (the train files linked, the test image file copied) with
    ``damage`` applied to the copy's bytes."""
    raw = dest / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (data_root / "FashionMNIST" / "raw").iterdir():
        if f.name == "t10k-images-idx3-ubyte":
            (raw / f.name).write_bytes(damage(f.read_bytes()))
        else:
            (raw / f.name).symlink_to(f.resolve())
    return raw / "t10k-images-idx3-ubyte"


def test_a_damaged_test_split_stops_fit_before_anything_is_written(tmp_path, data_root):
    """The test split's file with a zeroed header: fit fails at once naming the file, and the
    existing checkpoint and log folders stay as they were."""
    from lightning_snn.cli import main
    from lightning_snn.data.vision import DataFileError

    bad = _fmnist_copy(data_root, tmp_path / "data", lambda b: bytes(16) + b[16:])
    ckpt, logs = tmp_path / "ckpt", tmp_path / "logs"
    ckpt.mkdir()
    (ckpt / "keep.txt").write_text("earlier run")
    args = ["fit", "--config", "configs/fmnist_mlp_bptt.yaml", f"--data.root={tmp_path / 'data'}",
            "--data.num_workers=0", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
            f"--trainer.logger.save_dir={logs}", f"--checkpoint.dirpath={ckpt}", "--test_after_fit=last"]
    with pytest.raises(DataFileError, match=f"'fashion_mnist' under .* \\(test split\\): file {bad} is damaged"):
        main(args)
    assert [p.name for p in ckpt.iterdir()] == ["keep.txt"] and not logs.exists()


def test_a_truncated_test_split_is_named_when_testing(tmp_path, data_root):
    from lightning_snn.data.vision import DataFileError

    bad = _fmnist_copy(data_root, tmp_path, lambda b: b[: len(b) // 2])
    dm = VisionDataModule("fashion_mnist", root=str(tmp_path), num_workers=0)
    with pytest.raises(DataFileError, match=f"file {bad} is damaged"):
        dm.setup("test")


def test_a_truncated_image_in_a_class_folder_is_named(tmp_path, data_root):
    from lightning_snn.data.vision import DataFileError

    write_image_folder(data_root, tmp_path, size=64)
    bad = sorted((tmp_path / "imagenet" / "train").rglob("*.JPEG"))[3]
    bad.write_bytes(bad.read_bytes()[:400])
    dm = VisionDataModule("imagenet", root=str(tmp_path), batch_size=20, num_workers=0, augment=False, backend="torchvision")
    dm.setup("fit")
    with pytest.raises(DataFileError, match=f"cannot read image {bad}: OSError: .*[Tt]runcated"):
        next(iter(dm.train_dataloader()))
