"""A lean training step: no value goes back to the host between two training steps through the
Trainer (on a GPU each such read is a device synchronisation), while the logged names and the
epoch-level values stay those of the metrics computed directly."""

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_snn.module import SNNModule
from lightning_snn.profiling import HostSyncCounter

STEPS = 6


class _SyncsPerStep(pl.Callback):
    """Host reads counted from one training-batch start to the next (the step, its logging, the
    progress bar and the optimiser), under a ``HostSyncCounter`` active for the whole fit."""

    def __init__(self, counter: HostSyncCounter) -> None:
        self.counter = counter
        self.between: list[dict[str, int]] = []
        self._last = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._last is not None:
            self.between.append(dict(self.counter.counts - self._last))
        self._last = self.counter.counts.copy()


def _data(n: int = 8 * STEPS, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 6, 6, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _module(strategy: str = "bptt") -> SNNModule:
    torch.manual_seed(0)
    return SNNModule("mlp", num_classes=3, input_shape=(1, 6, 6), network_args={"hidden": [16]},
                     strategy=strategy, T=3, lr=0.05, scheduler="constant")


@pytest.mark.parametrize("strategy", ["bptt", "ottt_a"])
def test_training_steps_through_the_trainer_read_nothing_back_to_the_host(tmp_path, strategy):
    counter = HostSyncCounter()
    probe = _SyncsPerStep(counter)
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, limit_val_batches=0, log_every_n_steps=1000,
        enable_progress_bar=True, enable_checkpointing=False, enable_model_summary=False,
        logger=CSVLogger(tmp_path), callbacks=[probe],
    )
    with counter:
        trainer.fit(_module(strategy), train_dataloaders=_data())
    assert len(probe.between) == STEPS - 1
    assert all(not c for c in probe.between), probe.between
    # the same counter does see host reads: the epoch end logs Python numbers
    assert counter.total > 0


def test_counter_sees_item_and_bool():
    counter = HostSyncCounter()
    t = torch.ones(3)
    with counter:
        t.sum().item()
        bool(t.any())
        t.tolist()
    assert counter.counts == {"item": 1, "__bool__": 1, "tolist": 1}


def test_logged_names_and_epoch_values_match_a_direct_computation(tmp_path):
    """Epoch accuracy = accuracy over every training sample of the epoch's predictions, loss per
    step = the loss of that step, recomputed from the same weights outside Lightning."""
    import csv

    module = _module()
    snapshots: list[dict] = []

    class Snap(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            snapshots.append({k: v.clone() for k, v in pl_module.state_dict().items()})

    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, limit_val_batches=0, log_every_n_steps=1,
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
        logger=CSVLogger(tmp_path, name="", version=""), callbacks=[Snap()],
    )
    data = _data()
    trainer.fit(module, train_dataloaders=data)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    keys = set().union(*rows)
    assert {"train/loss", "train/acc_step", "train/acc_epoch"} <= keys, keys

    check = _module()
    check.train()
    losses, correct, total = [], 0, 0
    for state, (x, y) in zip(snapshots, data):
        check.load_state_dict(state)
        with torch.no_grad():
            out = check.strategy.forward(check.net, x)
        losses.append(float(F.cross_entropy(out.mean(0), y)))
        correct += int((out.mean(0).argmax(-1) == y).sum())
        total += len(y)
    logged = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert logged == pytest.approx(losses, rel=1e-5, abs=1e-6)
    (epoch_acc,) = [float(r["train/acc_epoch"]) for r in rows if r.get("train/acc_epoch")]
    assert epoch_acc == pytest.approx(correct / total, abs=1e-6)
    assert float(trainer.callback_metrics["train/acc"]) == pytest.approx(correct / total, abs=1e-6)


@pytest.mark.slow
def test_ddp_logging_syncs_at_epoch_end_only(tmp_path):
    """2 gloo ranks: no collective between two training steps (the gradient all-reduce of DDP runs
    in its C++ reducer and is not counted), and the epoch values reduced once at the end equal
    the metrics of the final weights over the whole validation set (both ranks' shards)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from procs import ROOT, child_env

    script = Path(__file__).parent / "scripts" / "ddp_logging.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["between"] == [[0, 0, 0], [0, 0, 0]], res["between"]

    torch.manual_seed(0)
    module = SNNModule("mlp", num_classes=3, input_shape=(1, 4, 4),
                       network_args={"hidden": [12], "batch_norm": False}, T=3).double()
    module.net.load_state_dict(torch.load(tmp_path / "params.pt"))
    module.eval()
    g = torch.Generator().manual_seed(2)  # the validation set of the script
    xv = torch.rand(8, 1, 4, 4, generator=g, dtype=torch.float64) * 2
    yv = torch.randint(0, 3, (8,), generator=g)
    with torch.no_grad():
        out = module.strategy.forward(module.net, xv).mean(0)
    m = res["metrics"]
    assert m["val/acc"] == pytest.approx(float((out.argmax(-1) == yv).double().mean()), abs=1e-9)
    assert m["val/loss"] == pytest.approx(float(F.cross_entropy(out, yv)), rel=1e-9)
    assert 0.0 <= m["train/acc"] <= 1.0 and "train/loss" in m
