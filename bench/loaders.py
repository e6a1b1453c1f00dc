"""Images per second of every data back end side by side, and the epoch time of two configs with each.

    python bench/loaders.py [--root data] [--images 20000] [--cifar-n 10000] [--train-batches 100]
                            [--sets mnist,fashion_mnist,cifar10] [--no-epochs] [--accelerator cpu]

Part 1, loading: the training loader of ``VisionDataModule`` for each back end, exactly as a fit
builds it (``torchvision`` with 0 and 2 worker processes, ``ffcv`` with 2, ``memory``), on MNIST and
Fashion-MNIST (the real files under ``--root``) and a CIFAR-10-sized synthetic set (``--cifar-n``
random 32x32 RGB images in CIFAR-10's file layout, crop-pad-4 + flip). Every loader yields float
images normalised and augmented as training sees them; the memory loader does its batch transforms
on the CPU here (under a trainer they run on the training device). Rates are images/s over
``--images`` images, after one warm-up pass of the same length (FFCV's JIT compilation, worker
start-up); FFCV's ``.beton`` files are written to a temporary folder first.

Part 2, epoch time: one training epoch of the README demo (``configs/fmnist_mlp_bptt.yaml``) and of
IDE F400 (``configs/ide/fmnist_f400_if_t5.yaml``) with each back end: ``fit`` for two epochs of
``--train-batches`` batches, no validation; the second epoch's time (batch loading, transfer,
transforms and steps), scaled to the full epoch of the config (``--train-batches 0``: whole epochs),
each in a fresh process so that one back end's threads and worker processes do not slow the next.

The machine's load (``os.getloadavg``) and CPUs are printed with the numbers: on a shared machine
they move with it; compare the back ends of one run, not runs of different moments.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_snn.data import VisionDataModule  # noqa: E402
from lightning_snn.data.ffcv import ffcv_available  # noqa: E402

# (label, backend, num_workers)
BACKENDS = [("torchvision w0", "torchvision", 0), ("torchvision w2", "torchvision", 2),
            ("ffcv w2", "ffcv", 2), ("memory", "memory", 0)]
CONFIGS = {"README demo (fmnist_mlp_bptt)": "configs/fmnist_mlp_bptt.yaml",
           "IDE F400 (fmnist_f400_if_t5)": "configs/ide/fmnist_f400_if_t5.yaml"}


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f} on {len(os.sched_getaffinity(0))} CPUs"


def write_synthetic_cifar10(root: Path, n: int) -> None:
    """CIFAR-10's python layout with ``n`` random training and ``n // 5`` test images (SYNTHETIC)."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    per = -(-n // 5)
    for i in range(5):
        m = min(per, n - i * per)
        pickle.dump({"data": rng.integers(0, 256, (m, 3072), dtype=np.uint8),
                     "labels": rng.integers(0, 10, m).tolist()}, open(folder / f"data_batch_{i + 1}", "wb"))
    m = max(1, n // 5)
    pickle.dump({"data": rng.integers(0, 256, (m, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, m).tolist()}, open(folder / "test_batch", "wb"))
    pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, open(folder / "batches.meta", "wb"))


def rate(loader, images: int) -> float:
    """Images/s of the loader over ``images`` images (starting new passes as needed)."""
    n, t0 = 0, time.perf_counter()
    while n < images:
        for x, _ in loader:
            n += x.shape[0]
            if n >= images:
                break
    return n / (time.perf_counter() - t0)


def loading(args: argparse.Namespace, betons: Path, synthetic: Path) -> None:
    print(f"\n## Loading: training loader, batch {args.batch}, images/s ({args.images} images after a "
          f"warm-up of as many; {load()}; torch threads {torch.get_num_threads()})")
    sets = [(s, args.root, {}) for s in args.sets if s != "cifar10"]
    if "cifar10" in args.sets:
        sets.append(("cifar10", str(synthetic), {"verify_md5": False}))
    names = [b[0] for b in BACKENDS if b[0] in args.backends]
    print("| data set | " + " | ".join(names) + " | memory / torchvision w2 |")
    print("|---" * (len(names) + 2) + "|")
    for dataset, root, extra in sets:
        shown = f"{dataset} (synthetic {args.cifar_n})" if dataset == "cifar10" else dataset
        row: dict[str, float | None] = {}
        for label, backend, workers in BACKENDS:
            if label not in names:
                continue
            if backend == "ffcv" and not ffcv_available():
                row[label] = None
                continue
            dm = VisionDataModule(dataset, root=root, batch_size=args.batch, num_workers=workers,
                                  backend=backend, beton_dir=str(betons), **extra)
            dm.prepare_data()
            dm.setup("fit")
            loader = dm.train_dataloader()
            rate(loader, args.images)  # warm-up: workers, JIT, caches
            row[label] = rate(loader, args.images)
            del loader
        cells = [f"{row[n]:,.0f}" if row[n] else "n/a" for n in names]
        ratio = row["memory"] / row["torchvision w2"] if row.get("memory") and row.get("torchvision w2") else float("nan")
        print(f"| {shown} | " + " | ".join(cells) + f" | {ratio:.1f}x |", flush=True)


class EpochTimer:
    """Lightning callback: wall seconds and batches of every training epoch."""

    def __init__(self) -> None:
        import pytorch_lightning as pl

        outer = self

        class _Timer(pl.Callback):
            def on_train_epoch_start(self, trainer, module) -> None:
                outer.t0, outer.cpu0 = time.perf_counter(), time.process_time()

            def on_train_epoch_end(self, trainer, module) -> None:
                outer.epochs.append((time.perf_counter() - outer.t0, time.process_time() - outer.cpu0,
                                     trainer.num_training_batches))

        self.t0, self.cpu0, self.epochs, self.callback = 0.0, 0.0, [], _Timer()


def epoch_time(config: str, backend: str, workers: int, args: argparse.Namespace, tmp: Path,
               betons: Path) -> tuple[float, float, int]:
    """Wall and CPU seconds (of this process; worker processes not counted) of the second training
    epoch, scaled to the config's full epoch, and the batches of a full epoch."""
    from lightning_snn.cli import main
    from lightning_snn.suite.plan import quiet

    run = tmp / f"run-{backend}-{workers}-{Path(config).stem}"
    cli_args = ["--config", str(ROOT / config), f"--data.root={args.root}", f"--data.backend={backend}",
                f"--data.num_workers={workers}", f"--data.beton_dir={betons}", "--trainer.max_epochs=2",
                "--trainer.limit_val_batches=0", "--test_after_fit=null", f"--trainer.accelerator={args.accelerator}",
                "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                "--trainer.logger=false",
                f"--trainer.default_root_dir={run}", f"--checkpoint.dirpath={run / 'ckpt'}"]
    if args.train_batches:
        cli_args.append(f"--trainer.limit_train_batches={args.train_batches}")
    timer = EpochTimer()
    with quiet():
        cli = main(cli_args, run=False)
        cli.trainer.callbacks.append(timer.callback)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        full = len(cli.trainer.train_dataloader)  # batches of a whole epoch (the limit is the trainer's)
    seconds, cpu, batches = timer.epochs[-1]
    return seconds * full / batches, cpu * full / batches, full


def epochs(args: argparse.Namespace, tmp: Path, betons: Path) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    spawn = multiprocessing.get_context("spawn")  # workers or caches of the last back end
    what = f"{args.train_batches} batches each, scaled to a full epoch" if args.train_batches else "whole epochs"
    print(f"\n## Epoch time (s): second of two training epochs ({what}; accelerator {args.accelerator}; {load()})")
    names = [b[0] for b in BACKENDS]
    print("wall s (main-process CPU s; the CPU time a loaded machine does not stretch, w2 workers excluded)")
    names = [b[0] for b in BACKENDS if b[0] in args.backends]
    print("| config | " + " | ".join(names) + " | memory / torchvision w2 (wall) |")
    print("|---" * (len(names) + 2) + "|")
    for title, config in CONFIGS.items():
        row: dict[str, tuple[float, float] | None] = {}
        for label, backend, workers in BACKENDS:
            if label not in names:
                continue
            if backend == "ffcv" and not ffcv_available():
                row[label] = None
                continue
            with ProcessPoolExecutor(1, mp_context=spawn) as pool:  # a fresh process each: no threads,
                row[label] = pool.submit(epoch_time, config, backend, workers, args, tmp, betons).result()[:2]
            print(f"  {title} {label}: {row[label][0]:.1f} s wall, {row[label][1]:.1f} s CPU", flush=True)
        cells = [f"{row[n][0]:.1f} ({row[n][1]:.1f})" if row[n] else "n/a" for n in names]
        ratio = (f"{row['memory'][0] / row['torchvision w2'][0]:.2f}x"
                 if row.get("memory") and row.get("torchvision w2") else "n/a")
        print(f"| {title} | " + " | ".join(cells) + f" | {ratio} |", flush=True)
    print(f"({load()} at the end)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT / "data"))
    p.add_argument("--sets", default="mnist,fashion_mnist,cifar10", type=lambda s: s.split(","))
    p.add_argument("--images", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--cifar-n", type=int, default=10_000)
    p.add_argument("--train-batches", type=int, default=100, help="batches per timed epoch; 0 = whole epochs")
    p.add_argument("--no-epochs", action="store_true", help="only the loading table")
    p.add_argument("--no-loading", action="store_true", help="only the epoch table")
    p.add_argument("--backends", default=",".join(b[0] for b in BACKENDS), type=lambda s: s.split(","),
                   help="comma-separated labels of the back ends to compare")
    p.add_argument("--accelerator", default="cpu", help="of the timed epochs (cpu, gpu, auto)")
    args = p.parse_args()
    unknown = set(args.backends) - {b[0] for b in BACKENDS}
    if unknown:
        p.error(f"--backends {','.join(sorted(unknown))} (valid: {', '.join(b[0] for b in BACKENDS)})")
    for name in ("images", "batch", "cifar_n"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)} (valid: an integer >= 1)")
    print(f"bench/loaders.py: torch {torch.__version__}, {load()}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, FFCV {'yes' if ffcv_available() else 'not installed'}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        synthetic = tmp / "synthetic"
        write_synthetic_cifar10(synthetic, args.cifar_n)
        betons = tmp / "betons"
        if not args.no_loading:
            loading(args, betons, synthetic)
        if not args.no_epochs:
            epochs(args, tmp, betons)


if __name__ == "__main__":
    main()
