"""Cost of the Trainer around a training step: the same ``SNNModule`` step (same model, same
batches already on the device) through ``pl.Trainer.fit`` and in a plain loop
(``strategy.train_step`` -> ``backward`` -> optimiser and schedule step).

Each repeat builds the module afresh from one seed, runs ``--warmup`` steps, then times
``--steps`` steps (two device synchronisations per timed span, none per step); the Trainer runs
with its defaults users see (progress bar, CSV logger every 50 steps; no checkpointing or
validation). The two paths alternate; the result is the median time per step of each and their
ratio. Target: Trainer / plain <= 1.1.

    python bench/trainer_overhead.py                                   # vgg11, GPU if present
    python bench/trainer_overhead.py --width 0.25 --batch 16 --steps 10 --repeats 3   # CPU-sized
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lightning_snn.module import SNNModule


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _module(args: argparse.Namespace) -> SNNModule:
    torch.manual_seed(0)
    return SNNModule(args.network, num_classes=10, input_shape=(3, 32, 32),
                     network_args={"width": args.width}, strategy="bptt", T=args.T,
                     lr=0.01, scheduler="cosine")


def _batches(args: argparse.Namespace, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    n = args.warmup + args.steps
    return [(torch.randn(args.batch, 3, 32, 32, generator=g).to(device),
             torch.randint(0, 10, (args.batch,), generator=g).to(device)) for _ in range(n)]


class _Timer(pl.Callback):
    """Wall time from the start of batch ``warmup`` to the end of the last batch."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.t0 = self.t1 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: D102
        if batch_idx == self.warmup:
            _sync(self.device)
            self.t0 = time.perf_counter()

    def on_train_end(self, trainer, pl_module):  # noqa: D102
        _sync(self.device)
        self.t1 = time.perf_counter()


def time_trainer(args: argparse.Namespace, device: torch.device, batches: list) -> float:
    """Seconds per step through ``Trainer.fit``."""
    timer = _Timer(args.warmup, device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(
            max_epochs=1, accelerator=device.type, devices=1, limit_val_batches=0,
            enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp,
            callbacks=[timer], precision=args.precision,
        )
        # the ready batches, one per step (a bare list would read as several data loaders)
        trainer.fit(_module(args), train_dataloaders=DataLoader(batches, batch_size=None))
    return (timer.t1 - timer.t0) / args.steps


def time_plain(args: argparse.Namespace, device: torch.device, batches: list) -> float:
    """Seconds per step of the same module step without the Trainer."""
    module = _module(args).to(device)
    module.train()
    # the optimiser and cosine schedule ``configure_optimizers`` makes (it reads the run length
    # from a Trainer, which this path has not got)
    hp = module.hparams
    opt = torch.optim.SGD(module.parameters(), lr=hp.lr, momentum=hp.momentum,
                          weight_decay=hp.weight_decay, nesterov=hp.nesterov)
    total = len(batches)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total)))

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")
    for i, (x, y) in enumerate(DataLoader(batches, batch_size=None)):
        if i == args.warmup:
            _sync(device)
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss, _ = module.strategy.train_step(module.net, x, y, module.loss, backward=None)
        loss.backward()
        opt.step()
        sched.step()
    _sync(device)
    return (time.perf_counter() - t0) / args.steps


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", default="vgg11")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    batches = _batches(args, device)
    trainer_s, plain_s = [], []
    for _ in range(args.repeats):  # alternate, so drifts of the machine hit both paths
        plain_s.append(time_plain(args, device, batches))
        trainer_s.append(time_trainer(args, device, batches))
    res = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "trainer_ms": [1e3 * s for s in trainer_s], "plain_ms": [1e3 * s for s in plain_s],
        "trainer_median_ms": 1e3 * statistics.median(trainer_s),
        "plain_median_ms": 1e3 * statistics.median(plain_s),
    }
    res["ratio"] = res["trainer_median_ms"] / res["plain_median_ms"]
    print(f"{res['device']}: {args.network} T={args.T} batch={args.batch}: Trainer "
          f"{res['trainer_median_ms']:.2f} ms/step, plain loop {res['plain_median_ms']:.2f} ms/step, "
          f"ratio {res['ratio']:.3f}", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
