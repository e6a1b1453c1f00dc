"""Helpers for tests that train in real child processes (DDP, kill and resume, SLURM jobs)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# set by Lightning in a process that ran DDP; a child that inherits them joins the wrong rendezvous
DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "WORLD_SIZE", "RANK", "NODE_RANK",
             "GROUP_RANK", "LOCAL_WORLD_SIZE", "PL_GLOBAL_SEED", "PL_SEED_WORKERS")


def child_env() -> dict[str, str]:
    """This process's environment without distributed variables, with the project importable."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS and not k.startswith("SLURM_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def tiny_fit_args(data_root: Path, run_dir: Path, *, batch_size: int = 16, epochs: int = 2,
                  train_batches: int = 4, hidden: int = 32, batch_norm: bool = True) -> list[str]:
    """``fit`` arguments for a seconds-long Fashion-MNIST MLP run writing everything under ``run_dir``."""
    return [
        "fit", "--config", str(CONFIGS / "fmnist_mlp_bptt.yaml"),
        f"--data.root={data_root}", "--data.num_workers=0", f"--data.batch_size={batch_size}",
        "--data.eval_batch_size=250", "--data.val_size=0",
        f"--model.network_args={{'hidden': [{hidden}], 'batch_norm': {batch_norm}}}",
        f"--trainer.max_epochs={epochs}", f"--trainer.limit_train_batches={train_batches}",
        "--trainer.limit_val_batches=2", "--test_after_fit=null", "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={run_dir}", f"--trainer.logger.init_args.save_dir={run_dir}",
        f"--checkpoint.dirpath={run_dir / 'checkpoints'}",
    ]


def mlp_checkpoint(path: Path, hidden: int) -> Path:
    """A checkpoint of the README config's MLP (784-``hidden``-10, IF, T = 4) after two AdamW steps on
    random images: a trained-looking network for export and report tests, in a second."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_snn.module import SNNModule

    module = SNNModule("mlp", num_classes=10, input_shape=(1, 28, 28), T=4, network_args={"hidden": [hidden]},
                       optimizer="adamw", lr=2e-3)
    data = TensorDataset(torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,)))
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, DataLoader(data, batch_size=8))
    trainer.save_checkpoint(path)
    return path


def run_cli(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m lightning_snn ARGS`` in a child process; fails the test with its output on error."""
    res = subprocess.run([sys.executable, "-m", "lightning_snn", *args], cwd=ROOT, env=child_env(),
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
    return res


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def max_weight_diff(a: dict, b: dict) -> float:
    """Largest absolute difference over all floating-point tensors of two checkpoints' state dicts."""
    sa, sb = a["state_dict"], b["state_dict"]
    assert sa.keys() == sb.keys()
    return max((sa[k].double() - sb[k].double()).abs().max().item()
               for k in sa if sa[k].is_floating_point())


def require(module: str, reason: str | None = None) -> Any:
    """``pytest.importorskip(module)``, except under ``LIGHTNING_SNN_CI`` (set by ``.ci/run``), where
    a missing dependency fails the test module naming the package: CI must not skip silently."""
    if os.environ.get("LIGHTNING_SNN_CI"):
        try:
            return importlib.import_module(module)
        except ImportError as e:
            pytest.fail(f"{module} cannot be imported ({type(e).__name__}: {e}); CI requires it", pytrace=False)
    return pytest.importorskip(module, reason=reason)
