"""Write a data set to an FFCV ``.beton`` file.

    python -m lightning_snn.data.write_beton --dataset cifar10 --root data --split train --out data/ffcv/cifar10_train.beton
    python -m lightning_snn.data.write_beton --image_folder /imagenet/train --out imagenet_train.beton \\
        --write_mode jpg --max_resolution 256 --jpeg_quality 90

A registered data set (``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``) is read from
``root`` with torchvision; ``--image_folder`` takes any ImageNet-style ``class/image`` tree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from jsonargparse import CLI
from torchvision import datasets

from lightning_snn.data.ffcv import write_beton
from lightning_snn.data.vision import VisionDataModule


def main(
    out: str,
    dataset: str | None = None,
    root: str = "data",
    split: Literal["train", "test"] = "train",
    image_folder: str | None = None,
    write_mode: Literal["raw", "jpg", "smart", "proportion"] = "raw",
    max_resolution: int | None = None,
    jpeg_quality: int = 90,
    num_workers: int = 2,
    verify_md5: bool = True,
    overwrite: bool = False,
) -> None:
    """Write ``dataset`` (or the ``image_folder`` tree) to the ``.beton`` file ``out``.

    Args:
        out: the ``.beton`` file to write (never overwritten unless ``overwrite``).
        dataset: a registered data set name, read from ``root``.
        root: directory of the registered data set.
        split: ``train`` or ``test`` split of a registered data set.
        image_folder: an ImageNet-style ``class_name/image`` folder instead of ``dataset``.
        write_mode: RGB storage: ``raw``, ``jpg``, or FFCV's ``smart`` / ``proportion``.
        max_resolution: downscale RGB images so the longer side is at most this many pixels.
        jpeg_quality: JPEG quality (``jpg`` / ``smart`` / ``proportion``).
        num_workers: writer processes.
        verify_md5: check CIFAR files against torchvision's checksums.
        overwrite: replace an existing ``out``.
    """
    if (dataset is None) == (image_folder is None):
        raise ValueError("give exactly one of --dataset or --image_folder")
    if image_folder is not None:
        if not Path(image_folder).is_dir():
            raise FileNotFoundError(f"image folder {image_folder} does not exist")
        data, gray = datasets.ImageFolder(image_folder), False
    else:
        dm = VisionDataModule(dataset, root=root, verify_md5=verify_md5)
        data = dm._open(train=split == "train", augment=False, transform=False)
        gray = dm.spec.ffcv_pipeline == "gray"
    path = write_beton(data, out, gray=gray, write_mode=write_mode, max_resolution=max_resolution,
                       jpeg_quality=jpeg_quality, num_workers=num_workers, overwrite=overwrite)
    print(f"wrote {len(data)} samples to {path}")


if __name__ == "__main__":
    CLI(main, as_positional=False)
