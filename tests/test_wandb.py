"""W&B from the ordinary command line, offline: the run holds the config, per-layer firing rates
and the IDE solver residual (read back from the offline run file)."""

from __future__ import annotations

from pathlib import Path

from wandb_offline import config, history, run_info, wait_until_written

from lightning_snn.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_wandb_logger_and_firing_rates_from_any_config(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cli = main([
        "fit", "--config", str(ROOT / "configs" / "ide" / "fmnist_f400_if_t5.yaml"),
        f"--data.root={data_root}", "--data.num_workers=0", "--data.batch_size=8",
        "--data.eval_batch_size=16", f"--trainer.default_root_dir={tmp_path}",
        "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2",
        "--trainer.log_every_n_steps=1", "--test_after_fit=null",
        "--model.T=2", "--model.strategy_args.max_iter=3",
        "--trainer.logger=pytorch_lightning.loggers.WandbLogger",
        "--trainer.logger.project=snn-tests", "--trainer.logger.group=cli",
        "--trainer.logger.tags=[ide, offline]", f"--trainer.logger.save_dir={tmp_path}",
        "--trainer.callbacks+=lightning_snn.callbacks.FiringRateMonitor",
    ])
    cli.trainer.logger.experiment.finish()  # this run, whatever wandb.run refers to
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    wait_until_written(run_file)
    info = run_info(run_file)
    assert (info["project"], info["group"], set(info["tags"])) == ("snn-tests", "cli", {"ide", "offline"})
    rows = history(run_file)
    keys = set().union(*rows)
    # feedback network under IDE: its neurons run through `step` (one spiking layer in F400)
    assert {"train/ide/residual", "train/ide/iterations", "val/acc", "val/rate/layer0",
            "val/rate_hist/layer0/values"} <= keys, sorted(keys)
    rates = [r["val/rate/layer0"] for r in rows if "val/rate/layer0" in r]
    assert all(0.0 <= v <= 1.0 for v in rates)
    cfg = config(run_file)
    assert cfg["cli"]["model"]["strategy"] == "ide" and cfg["cli"]["trainer"]["max_epochs"] == 1
    assert cfg["T"] == 2
