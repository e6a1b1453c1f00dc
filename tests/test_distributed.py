"""Distributed and fault-tolerant training in real processes on CPU.

DDP runs as child processes (``strategy="ddp"`` inside pytest would relaunch pytest as rank 1).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from procs import ROOT, child_env, load_ckpt, max_weight_diff, run_cli, tiny_fit_args

# 2 ranks sum gradients in a different order than 1 process, and a spike is a threshold: a rounding
# difference can flip one. Measured max |w_ddp - w_single| after 10 steps: 2.5e-7.
DDP_TOLERANCE = 1e-5


def _start_fit(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lightning_snn", *args], cwd=ROOT, env=child_env(),
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")  # multi-process runs one at a time (2 CPUs)
def test_two_process_ddp_matches_one_process_with_same_global_batch(tmp_path, data_root):
    """2 gloo ranks x batch 8 == 1 process x batch 16: same samples per step, averaged gradients.

    The MLP is built without batch norm: under DDP each rank would normalise with its own half-batch
    statistics (``--trainer.sync_batchnorm`` fixes that on GPUs; torch's SyncBatchNorm has no CPU kernel).
    """
    common = dict(epochs=2, train_batches=5, hidden=64, batch_norm=False)
    single = _start_fit(tiny_fit_args(data_root, tmp_path / "single", batch_size=16, **common)
                        + ["--trainer.devices=1"], tmp_path / "single.log")  # in parallel
    ddp = run_cli(tiny_fit_args(data_root, tmp_path / "ddp", batch_size=8, **common)
                  + ["--trainer.devices=2", "--trainer.strategy=ddp"])
    assert "distributed_backend=gloo" in ddp.stderr + ddp.stdout
    assert single.wait(timeout=240) == 0, (tmp_path / "single.log").read_text()[-3000:]
    a = load_ckpt(tmp_path / "single" / "checkpoints" / "last.ckpt")
    b = load_ckpt(tmp_path / "ddp" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 10
    diff = max_weight_diff(a, b)
    print(f"max |w_ddp - w_single| = {diff:.3g}")
    assert diff <= DDP_TOLERANCE


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")  # multi-process runs one at a time (2 CPUs)
def test_sigkill_mid_epoch_then_resume_from_last_gives_identical_weights(tmp_path, data_root):
    """SIGKILL right after the first step checkpoint, ``fit --ckpt_path last``: bit-identical weights.

    Exact because (1) last.ckpt holds weights, optimiser, scheduler and loop counters at a train
    step; (2) the data module saves its position (epoch, batches done) and the resumed run's
    sampler skips exactly those batches of the same (seed, epoch) permutation; (3) the CPU run is
    deterministic and the model has no other randomness (no dropout, no augmentation on F-MNIST).
    """
    every, per_epoch = 4, 12  # per_epoch a multiple of every: the final step is saved too
    extra = ["--trainer.devices=1", f"--checkpoint.every_n_train_steps={every}", "--checkpoint.monitor=null"]
    args = lambda run: tiny_fit_args(data_root, tmp_path / run, epochs=2, train_batches=per_epoch,  # noqa: E731
                                     hidden=128) + extra
    whole = _start_fit(args("whole"), tmp_path / "whole.log")  # uninterrupted twin, in parallel
    victim = _start_fit(args("killed"), tmp_path / "killed.log")
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 180
    while not last.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL
    saved = load_ckpt(last)
    step = saved["global_step"]
    assert 0 < step < 2 * per_epoch and step % per_epoch != 0, f"not killed mid-epoch (step {step})"
    assert saved["VisionDataModule"]["train_position"] == [step // per_epoch, step % per_epoch]

    resumed = run_cli(args("killed") + ["--ckpt_path=last"])
    assert f"Restored all states from the checkpoint at {last}" in resumed.stderr + resumed.stdout
    assert whole.wait(timeout=240) == 0, (tmp_path / "whole.log").read_text()[-3000:]
    a = load_ckpt(tmp_path / "whole" / "checkpoints" / "last.ckpt")
    b = load_ckpt(last)
    assert a["global_step"] == b["global_step"] == 2 * per_epoch
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), f"{k} differs by {max_weight_diff(a, b):.3g}"
    print(f"killed at step {step}, resumed; weights identical to the uninterrupted run")
