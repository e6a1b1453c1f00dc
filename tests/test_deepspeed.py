"""DeepSpeed ZeRO configs: construction and DeepSpeed's own validation everywhere, a training run on GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lightning_snn.cli import SNNCLI
from lightning_snn.data import VisionDataModule
from lightning_snn.module import SNNModule
from procs import CONFIGS, require, run_cli, tiny_fit_args

DS_CONFIGS = sorted((CONFIGS / "deepspeed").glob("zero*.yaml"))
deepspeed = require("deepspeed")


def test_both_zero_stages_are_there():
    assert [p.stem for p in DS_CONFIGS] == ["zero1", "zero2"]


@pytest.mark.parametrize("path", DS_CONFIGS, ids=[p.stem for p in DS_CONFIGS])
def test_config_builds_the_strategy_through_the_cli_and_deepspeed_accepts_it(path, tmp_path, data_root):
    from deepspeed.runtime.config import DeepSpeedConfig
    from pytorch_lightning.strategies import DeepSpeedStrategy

    stage = yaml.safe_load(path.read_text())["init_args"]["stage"]
    cli_args = tiny_fit_args(data_root, tmp_path)[1:] + [f"--trainer.strategy={path}"]
    cli = SNNCLI(SNNModule, VisionDataModule, args=cli_args, run=False)
    strategy = cli.trainer.strategy
    assert isinstance(strategy, DeepSpeedStrategy)
    assert strategy.config["zero_optimization"]["stage"] == stage
    # what Lightning adds at set-up: the micro batch from the train loader
    ds = DeepSpeedConfig(dict(strategy.config, train_micro_batch_size_per_gpu=16))
    assert ds.zero_enabled and ds.zero_optimization_stage == stage and ds.train_batch_size == 16
    with pytest.raises(AssertionError, match="train_batch_size is not equal"):
        DeepSpeedConfig(dict(strategy.config, train_micro_batch_size_per_gpu=16, train_batch_size=17))


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="DeepSpeed training needs a CUDA GPU: Lightning's DeepSpeedStrategy refuses a CPU "
                           "accelerator ('only supported on CUDA GPUs'); construction is tested above")
@pytest.mark.parametrize("path", DS_CONFIGS, ids=[p.stem for p in DS_CONFIGS])
def test_zero_config_trains_on_a_gpu(path: Path, tmp_path, data_root):
    args = [a for a in tiny_fit_args(data_root, tmp_path) if a != "--trainer.accelerator=cpu"]
    run_cli(args + ["--trainer.accelerator=gpu", "--trainer.devices=1", f"--trainer.strategy={path}",
                    "--trainer.precision=16-mixed"])
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()  # a directory of ZeRO shards
