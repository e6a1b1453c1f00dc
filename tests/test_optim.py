"""Optimisers and learning-rate schedules: a class injected from YAML (``class_path`` +
``init_args``) gets exactly the YAML's settings, the short names and the named per-step schedules
step as before (against their closed forms), Adan trains the demo from its config, and checkpoints
compare the injected form."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from timm.optim import Adan
from torch.utils.data import DataLoader, TensorDataset

from lightning_snn.checkpoints import hparam_mismatch
from lightning_snn.cli import main
from lightning_snn.module import SNNModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY_MODEL = {"network": "mlp", "network_args": {"hidden": [8], "batch_norm": False}, "T": 2,
              "strategy": "bptt", "scheduler": "constant"}


def cli_args(config: Path, data_root: Path, run: Path, *extra: str) -> list[str]:
    """``fit`` options of ``config`` on the offline data (``[1:]``: the same for ``run=False``)."""
    return ["fit", "--config", str(config), f"--data.root={data_root}", "--data.num_workers=0",
            "--data.batch_size=4", "--data.eval_batch_size=4", "--data.val_size=0",
            "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={run}", f"--trainer.logger.init_args.save_dir={run}",
            "--test_after_fit=null", *extra]


def write_config(tmp_path: Path, optimizer: dict, **model) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model": {**TINY_MODEL, "optimizer": optimizer, **model},
                                    "data": {"dataset": "fashion_mnist"}}))
    return path


@pytest.mark.parametrize("optimizer, cls", [
    ({"class_path": "torch.optim.SGD",
      "init_args": {"lr": 0.05, "momentum": 0.85, "nesterov": True, "weight_decay": 3.0e-4}}, torch.optim.SGD),
    ({"class_path": "torch.optim.Adam",
      "init_args": {"lr": 1.0e-4, "betas": [0.8, 0.99], "eps": 1.0e-8, "weight_decay": 1.0e-6}}, torch.optim.Adam),
    ({"class_path": "timm.optim.Adan",
      "init_args": {"lr": 5.0e-3, "betas": [0.97, 0.9, 0.98], "weight_decay": 0.02}}, Adan),
], ids=["sgd_nesterov", "adam_betas", "adan"])
def test_injected_optimizer_has_exactly_the_yaml_settings(optimizer, cls, tmp_path, data_root):
    cli = main(cli_args(write_config(tmp_path, optimizer), data_root, tmp_path, "--trainer.fast_dev_run=1"))
    opt = cli.trainer.optimizers[0]
    assert type(opt) is cls and len(opt.param_groups) == 1
    group = opt.param_groups[0]
    for key, value in optimizer["init_args"].items():  # lr too: the constant schedule keeps it
        assert group[key] == (tuple(value) if isinstance(value, list) else value), key
    assert opt.state  # it stepped
    assert cli.model.hparams["lr"] is None  # the flat options stay unset with a class


def test_proxy_config_has_the_notebook_s_adam(tmp_path, data_root):
    """``configs/proxy/fmnist_proxy.yaml`` as written (a tiny network of the same kind)."""
    args = cli_args(CONFIGS / "proxy" / "fmnist_proxy.yaml", data_root, tmp_path, "--trainer.fast_dev_run=1",
                    "--model.network=proxy_convnet", "--model.network_args={'channels': [4, 'M'], 'hidden': [8]}",
                    "--model.T=2")
    cli = main(args)
    opt = cli.trainer.optimizers[0]
    assert type(opt) is torch.optim.Adam
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (1e-4, (0.8, 0.99), 1e-8, 1e-6)
    assert not group["decoupled_weight_decay"]  # coupled L2, as the notebook's Adam
    assert cli.model.strategy.freeze_bn_epoch == 1 and cli.model.strategy.bn_per_step


def test_short_names_keep_their_flat_options():
    m = SNNModule("mlp", 3, (1, 2, 2), network_args={"hidden": [4]}, optimizer="sgd", nesterov=True,
                  momentum=0.5)
    assert {k: m.hparams[k] for k in ("lr", "momentum", "weight_decay", "nesterov", "gamma")} == {
        "lr": 0.1, "momentum": 0.5, "weight_decay": 5e-4, "nesterov": True, "gamma": 0.1}
    with pytest.raises(ValueError, match=r"model.momentum is 0.5 but model.optimizer is the class "
                                         r"torch.optim.adam.Adam.*\(valid: set momentum in model.optimizer.init_args"):
        SNNModule("mlp", 3, (1, 2, 2), optimizer=partial(torch.optim.Adam, lr=0.1), momentum=0.5)
    with pytest.raises(ValueError, match=r"model.warmup_steps is 5 but model.scheduler is the class"):
        SNNModule("mlp", 3, (1, 2, 2), scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1),
                  warmup_steps=5)


class _LRs(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _fit_lrs(strategy: str, epochs: int = 3, batches: int = 3, **options) -> list[float]:
    torch.manual_seed(0)
    module = SNNModule("mlp", 3, (1, 2, 2), network_args={"hidden": [4], "batch_norm": False},
                       strategy=strategy, T=2, **options)
    data = TensorDataset(torch.rand(4 * batches, 1, 2, 2), torch.randint(0, 3, (4 * batches,)))
    rec = _LRs()
    pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, callbacks=[rec]
               ).fit(module, DataLoader(data, batch_size=4))
    return rec.lrs


def _cosine(k: int, total: int, warm: int) -> float:
    return min(1.0, (k + 1) / warm) * 0.5 * (1 + math.cos(math.pi * k / total))


# lr of optimiser step k = 0..8 (3 epochs x 3 batches), by the closed forms
SCHEDULES = {
    "cosine_warmup": ({"scheduler": "cosine", "warmup_steps": 4}, [0.2 * _cosine(k, 9, 4) for k in range(9)]),
    "multistep": ({"scheduler": "multistep", "milestones": [1, 2], "gamma": 0.5},
                  [0.2 * 0.5 ** (k // 3) for k in range(9)]),
    "injected_steplr_per_epoch": (
        {"scheduler": partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.25)},
        [0.2 * 0.25 ** (k // 3) for k in range(9)]),
}


@pytest.mark.parametrize("strategy", ["bptt", "ottt_a"])  # automatic and manual optimisation
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_schedules_step_as_their_closed_form(schedule, strategy):
    options, expected = SCHEDULES[schedule]
    if schedule.startswith("injected"):
        options = {**options, "optimizer": partial(torch.optim.SGD, lr=0.2)}
    else:
        options = {**options, "optimizer": "sgd", "lr": 0.2}
    lrs = _fit_lrs(strategy, **options)
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_adan_config_trains_the_demo_model(tmp_path, data_root):
    """``configs/fmnist_mlp_bptt_adan.yaml`` as written (784-512-10, T=4): timm's Adan with the
    config's settings; 12 steps on one batch of 32 images at least halve its loss."""
    config = CONFIGS / "fmnist_mlp_bptt_adan.yaml"
    cli = main(cli_args(config, data_root, tmp_path, "--data.batch_size=32")[1:], run=False)
    cli.datamodule.setup("fit")
    x, y = next(iter(cli.datamodule.train_dataloader()))
    losses: list[float] = []

    class Losses(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            losses.append(float(outputs["loss"]))

    trainer = pl.Trainer(max_steps=12, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[Losses()])
    trainer.fit(cli.model, DataLoader(TensorDataset(x.repeat(12, 1, 1, 1), y.repeat(12)), batch_size=32))
    opt = trainer.optimizers[0]
    init_args = yaml.safe_load(config.read_text())["model"]["optimizer"]["init_args"]
    assert type(opt) is Adan and opt.param_groups[0]["betas"] == tuple(init_args["betas"])
    assert opt.param_groups[0]["weight_decay"] == init_args["weight_decay"]
    assert len(losses) == 12 and losses[-1] < 0.5 * losses[0], losses


def test_checkpoint_comparison_names_the_injected_settings(tmp_path, data_root):
    """The CLI's hyper-parameters of an injected optimiser are its class_path / init_args: a fit
    with other betas differs exactly there; evaluation ignores the optimiser."""
    hp = {}
    for name, betas in (("a", [0.9, 0.999]), ("b", [0.8, 0.99])):
        opt = {"class_path": "torch.optim.Adam", "init_args": {"lr": 1.0e-3, "betas": betas}}
        run = tmp_path / name
        run.mkdir()
        hp[name] = dict(main(cli_args(write_config(run, opt), data_root, run)[1:], run=False).model.hparams)
    assert hparam_mismatch(hp["a"], hp["b"], include_optimisation=True) == [
        ("optimizer.init_args.betas", [0.9, 0.999], [0.8, 0.99])]
    assert hparam_mismatch(hp["a"], hp["b"], include_optimisation=False) == []
    # a checkpoint with the short form and its defaults spelt out equals one that leaves them unset
    short = dict(SNNModule("mlp", 3, (1, 2, 2), optimizer="adam").hparams)
    spelt = {**short, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False, "gamma": 0.1}
    assert hparam_mismatch(spelt, short, include_optimisation=True) == []
