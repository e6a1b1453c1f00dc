"""Images per second of the FFCV loader vs torchvision's DataLoader, same transforms and workers.

    python bench/loaders.py [--n 5000] [--workers 2] [--epochs 3] [--out bench/results]

Two sets, both synthetic (random pixels: decode cost does not depend on content much):
CIFAR-sized 32x32 raw RGB with crop-pad-4 + flip, and ImageNet-sized 256px JPEG (quality 90)
with random-resized-crop 224 + flip. Both loaders normalise to float; the first epoch (FFCV's
compilation, worker start-up) is reported separately from the steady-state mean of the rest.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from lightning_snn.data.ffcv import ffcv_loader, write_beton

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class RandomImages(Dataset):
    """``n`` random RGB images of ``size`` px, as PIL images (optionally JPEG round-tripped)."""

    def __init__(self, n: int, size: int, jpeg: bool, transform=None) -> None:
        rng = np.random.default_rng(0)
        self.images = []
        for _ in range(n):
            arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            if jpeg:  # store encoded bytes, like an ImageFolder of JPEG files
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format="JPEG", quality=90)
                self.images.append(buf.getvalue())
            else:
                self.images.append(arr)
        self.labels = rng.integers(0, 10, n)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = self.images[i]
        img = Image.open(io.BytesIO(img)).convert("RGB") if isinstance(img, bytes) else Image.fromarray(img)
        return (self.transform(img) if self.transform else img), int(self.labels[i])


def rate(loader, epochs: int) -> tuple[float, float]:
    speeds = []
    for _ in range(epochs):
        n, t0 = 0, time.perf_counter()
        for x, _ in loader:
            n += x.shape[0]
        speeds.append(n / (time.perf_counter() - t0))
    return speeds[0], float(np.mean(speeds[1:])) if len(speeds) > 1 else speeds[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=256)
    args = p.parse_args()
    norm = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    cases = {
        "cifar 32px raw": dict(size=32, jpeg=False, pipeline="cifar", write_mode="raw",
                               tv=[v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]),
        "imagenet 256px jpeg": dict(size=256, jpeg=True, pipeline="imagenet", write_mode="jpg",
                                    tv=[v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip()]),
    }
    print(f"n={args.n} workers={args.workers} batch={args.batch} threads={torch.get_num_threads()}")
    print(f"{'set':>20} | {'loader':>11} | {'1st epoch img/s':>15} | {'steady img/s':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, c in cases.items():
            raw = RandomImages(args.n, c["size"], c["jpeg"])
            path = write_beton(raw, Path(tmp) / f"{c['pipeline']}.beton", write_mode=c["write_mode"],
                               jpeg_quality=90, num_workers=args.workers)
            ffcv = ffcv_loader(path, pipeline=c["pipeline"], train=True, batch_size=args.batch,
                               mean=MEAN, std=STD, num_workers=args.workers, resolution=224)
            raw.transform = v2.Compose([c["tv"][0], c["tv"][1], *norm])
            tv = DataLoader(raw, batch_size=args.batch, shuffle=True, drop_last=True,
                            num_workers=args.workers, persistent_workers=True)
            res = {"ffcv": rate(ffcv, args.epochs), "torchvision": rate(tv, args.epochs)}
            for loader, (first, steady) in res.items():
                print(f"{name:>20} | {loader:>11} | {first:15.0f} | {steady:12.0f}", flush=True)
            print(f"{name:>20} | ffcv / torchvision steady-state ratio: {res['ffcv'][1] / res['torchvision'][1]:.2f}")


if __name__ == "__main__":
    main()
