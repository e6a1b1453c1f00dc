"""Write a data set to an FFCV ``.beton`` file.

    python -m lightning_snn.data.write_beton --dataset cifar10 --root data --split train --out data/ffcv/cifar10_train.beton
    python -m lightning_snn.data.write_beton --image_folder /imagenet/train --out imagenet_train.beton \\
        --write_mode jpg --max_resolution 256 --jpeg_quality 90

A registered data set (``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``) is read from
``root`` with torchvision; ``--image_folder`` takes any ImageNet-style ``class/image`` tree. The
file's identity (data set, split, fields, fingerprint) is written beside it as ``<out>.json``; the
destination is checked before anything is read or written.
Bad input is one line on stderr and exit status 2 (``--debug`` or ``LIGHTNING_SNN_DEBUG=1``: the
traceback).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from jsonargparse import CLI

from lightning_snn.atomic import check_destination
from lightning_snn.errors import USER_ERRORS, UsageError, run_main


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
    if num_workers < 1:
        raise UsageError(f"--num_workers {num_workers} (valid: an integer >= 1)")
    if max_resolution is not None and max_resolution < 1:
        raise UsageError(f"--max_resolution {max_resolution} (valid: an integer >= 1, or none)")
    if not 1 <= jpeg_quality <= 100:
        raise UsageError(f"--jpeg_quality {jpeg_quality} (valid: 1 to 100)")
    check_destination(Path(out), overwrite)  # before reading any data, and before the slow imports
    from torchvision import datasets

    from lightning_snn.data.ffcv import write_beton
    from lightning_snn.data.vision import DATASETS, VisionDataModule, named_image_loader

    images = [n for n in DATASETS.names() if DATASETS.build(n).events is None]
    if (dataset is None) == (image_folder is None):
        raise UsageError(f"give exactly one of --dataset or --image_folder (valid data sets: {', '.join(images)})")
    if dataset is not None and dataset not in images:
        raise UsageError(f"--dataset {dataset!r} cannot be written to a .beton (valid: {', '.join(images)})")
    if image_folder is not None:
        if not Path(image_folder).is_dir():
            raise FileNotFoundError(f"--image_folder {image_folder} does not exist (valid: a folder of "
                                    "class sub-folders of images)")
        data, gray = datasets.ImageFolder(image_folder, loader=named_image_loader), False
    else:
        dm = VisionDataModule(dataset, root=root, verify_md5=verify_md5)
        data = dm._open(train=split == "train", augment=False, transform=False)
        gray = dm.spec.ffcv_pipeline == "gray"
    path = write_beton(data, out, gray=gray, write_mode=write_mode, max_resolution=max_resolution,
                       jpeg_quality=jpeg_quality, num_workers=num_workers, overwrite=overwrite,
                       name=dataset, split=split if dataset else None,
                       source=str(Path(image_folder).resolve()) if image_folder else None)
    print(f"wrote {len(data)} samples to {path} (what it holds: {path}.json)")


def cli(argv: list[str] | None = None) -> int:
    """The command line on ``argv`` (``sys.argv[1:]`` by default); returns the exit status."""
    # a full disk (OSError) is reported in one line too
    return run_main(lambda args: CLI(main, as_positional=False, args=args), argv,
                    errors=(*USER_ERRORS, OSError))


if __name__ == "__main__":
    sys.exit(cli())
