"""Faults and bad input at the command line: checkpoints that do not fit or are broken, signals,
out-of-range options. Each reports one line (exit 2) or recovers, and never trains the wrong thing."""

from __future__ import annotations

import csv
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pytorch_lightning import Callback

from lightning_snn.checkpoints import AtomicCheckpointIO, CheckpointError, verify_checkpoint
from lightning_snn.cli import command_line, main
from procs import CONFIGS, ROOT, child_env, load_ckpt, max_weight_diff, run_cli, tiny_fit_args

DEMO = CONFIGS / "fmnist_mlp_bptt.yaml"


def fit_args(data_root: Path, run: Path, *extra: str, **kw) -> list[str]:
    return tiny_fit_args(data_root, run, **kw) + list(extra)


def sub_args(sub: str, args: list[str]) -> list[str]:
    """The same options for another subcommand (``fit``-only ones dropped)."""
    return [sub] + [a for a in args[1:] if not a.startswith(("--trainer.max_epochs", "--test_after_fit"))]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """One tiny MLP fit: its arguments and run folder (last.ckpt at step 2 and 4, a best file)."""
    run = tmp_path_factory.mktemp("trained")
    args = fit_args(data_root, run, "--checkpoint.every_n_train_steps=2", epochs=1, train_batches=4)
    main(args)
    return args, run


def one_line_error(capsys, args: list[str], names_valid: bool = True) -> str:
    """``python -m lightning_snn ARGS`` in this process: exit 2 and one ``error:`` line on stderr
    (before it only log lines such as "Seed set to 0"), naming what would be valid."""
    with pytest.raises(SystemExit) as exc:
        command_line(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2, err
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith("error: ") and sum(ln.startswith("error") for ln in err) == 1, err
    assert not names_valid or re.search(r"\(valid: |; valid (choices|arguments): | must be ", err[-1]), err
    return err[-1]


# ----------------------------------------------------------------------------- checkpoint != config
@pytest.mark.parametrize("sub, change, keys", [
    ("validate", ["--model.T=8", "--model.neuron.leak=0.5"], ["model.T: checkpoint 4, requested 8",
                                                              "model.neuron.leak: checkpoint 1.0, requested 0.5"]),
    ("test", ["--model.network_args={'hidden': [16], 'batch_norm': True}"], ["model.network_args.hidden"]),
    ("fit", ["--model.lr=0.01"], ["model.lr: checkpoint 0.002, requested 0.01"]),
])
def test_checkpoint_of_other_model_settings_is_an_error_naming_the_keys(trained, sub, change, keys, capsys):
    args, run = trained
    ckpt = run / "checkpoints" / "last.ckpt"
    before = sorted(p.name for p in run.rglob("*"))
    line = one_line_error(capsys, sub_args(sub, args) + change + [f"--ckpt_path={ckpt}"])
    assert str(ckpt) in line
    for key in keys:
        assert key in line, line
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing written


def test_checkpoint_of_another_network_is_an_error(trained, data_root, tmp_path, capsys):
    args, run = trained
    conv = [str(CONFIGS / "mnist_convnet_bptt.yaml") if a == str(DEMO) else a
            for a in sub_args("test", args) if not a.startswith("--model.network_args")]
    line = one_line_error(capsys, conv + [f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    assert "model.network: checkpoint 'mlp', requested 'convnet'" in line


def test_checkpoint_with_the_same_settings_is_used(trained):
    args, run = trained
    cli = main(sub_args("validate", args) + [f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    assert cli.model.hparams.T == 4 and 0.0 <= float(cli.trainer.callback_metrics["val/acc"]) <= 1.0


# ----------------------------------------------------------------------------- broken checkpoint files
def test_garbage_checkpoint_is_named_not_torch_advice(trained, tmp_path, capsys):
    args, _ = trained
    bad = tmp_path / "model.ckpt"
    bad.write_bytes(b"not a checkpoint at all" * 100)
    line = one_line_error(capsys, sub_args("test", args) + [f"--ckpt_path={bad}"])
    assert str(bad) in line and "weights_only" not in line


def test_truncated_last_falls_back_to_newest_intact_checkpoint(trained, tmp_path, data_root):
    args, run = trained
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(run / "checkpoints", ckpts)
    last = ckpts / "last.ckpt"
    best = next(p for p in ckpts.glob("epoch*.ckpt"))
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        verify_checkpoint(last)
    resumed = [a if not a.startswith("--checkpoint.dirpath") else f"--checkpoint.dirpath={ckpts}"
               for a in args] + ["--trainer.max_epochs=2", "--ckpt_path=last"]
    with pytest.warns(UserWarning, match=rf"{re.escape(str(last))}.*truncated.*resuming from {re.escape(str(best))}"):
        cli = main(resumed)
    assert cli.trainer.global_step == 8  # resumed at step 4 from the best file, then epoch 2
    verify_checkpoint(last)  # rewritten whole


def test_checkpoint_write_is_atomic(tmp_path):
    """A save that fails half-way (here: an object that cannot be pickled, after the tensors) leaves
    the previous file untouched and no temporary file behind."""
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"w": torch.arange(3.0)}, target)
    good = target.read_bytes()
    with pytest.raises(Exception):
        io.save_checkpoint({"w": torch.randn(1000), "bad": lambda: 0}, target)
    assert target.read_bytes() == good and sorted(tmp_path.iterdir()) == [target]
    assert torch.equal(torch.load(target)["w"], torch.arange(3.0))


def test_unwritable_checkpoint_directory_fails_before_training(data_root, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the checkpoint folder should be")
    args = fit_args(data_root, tmp_path / "run", f"--checkpoint.dirpath={blocker / 'ckpts'}", epochs=1)
    line = one_line_error(capsys, args)
    assert f"checkpoint directory {blocker / 'ckpts'} is not writable" in line
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").rglob("*.csv"))


# ----------------------------------------------------------------------------- when checkpoints are saved
class LastSeen(Callback):
    """At each training step: the global step stored in last.ckpt so far (None: no file yet)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.seen = folder, []

    def on_train_batch_end(self, trainer, *args) -> None:
        last = self.folder / "last.ckpt"
        self.seen.append((trainer.global_step, load_ckpt(last)["global_step"] if last.exists() else None))


def test_step_checkpoints_do_not_wait_for_validation_and_best_is_scored_by_its_validation(data_root, tmp_path):
    run = tmp_path / "run"
    seen = LastSeen(run / "checkpoints")
    args = fit_args(data_root, run, "--checkpoint.every_n_train_steps=3", "--checkpoint.save_top_k=-1",
                    epochs=2, train_batches=4)
    main(args, trainer_defaults={"callbacks": [seen]})
    # recorded before the checkpoint callbacks run at the same step: step 3's file is seen at step 4
    assert dict(seen.seen)[4] == 3, seen.seen  # in epoch 0, before its validation
    assert dict(seen.seen)[7] == 6
    with (run / "lightning_logs" / "version_0" / "metrics.csv").open() as f:
        val = {int(r["step"]): float(r["val/acc"]) for r in csv.DictReader(f) if r.get("val/acc")}
    best = sorted(run.glob("checkpoints/epoch*.ckpt"))
    assert len(best) == 2
    for path in best:
        step = load_ckpt(path)["global_step"]
        assert step in (4, 8), path  # saved at a validation, never at a step save
        assert f"acc{val[step - 1]:.4f}" in path.name  # CSV logs validation at step - 1


# ----------------------------------------------------------------------------- signals
def _start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lightning_snn", *args], cwd=ROOT, env=child_env(),
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_sigterm_and_sigusr1_save_at_a_step_then_resume_exactly(data_root, tmp_path):
    """A real ``fit`` gets SIGTERM (USR1) mid-epoch: it saves last.ckpt at the next step boundary and
    exits 143 (138); ``--ckpt_path last`` then ends at the weights of an uninterrupted run, with
    BatchNorm's ``num_batches_tracked`` counting every batch once."""
    per_epoch = 12
    args = lambda run: fit_args(data_root, tmp_path / run, "--checkpoint.every_n_train_steps=5",  # noqa: E731
                                epochs=2, train_batches=per_epoch, hidden=128)
    procs = {"whole": _start(args("whole"), tmp_path / "whole.log")}
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        procs[sig.name] = _start(args(sig.name), tmp_path / f"{sig.name}.log")
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        proc, last = procs[sig.name], tmp_path / sig.name / "checkpoints" / "last.ckpt"
        deadline = time.monotonic() + 180
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # first step checkpoint (step 5): training is under way
        proc.send_signal(sig)
    bn = "net.layers.0.2.num_batches_tracked"
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        proc, log = procs[sig.name], tmp_path / f"{sig.name}.log"
        assert proc.wait(timeout=120) == 128 + sig, log.read_text()[-3000:]
        assert f"interrupted: stopped by {sig.name} at step" in log.read_text()
        saved = load_ckpt(tmp_path / sig.name / "checkpoints" / "last.ckpt")
        step = saved["global_step"]
        assert 5 <= step < 2 * per_epoch and step % per_epoch, f"{sig.name} not acted on mid-epoch (step {step})"
        assert saved["VisionDataModule"]["train_position"] == [step // per_epoch, step % per_epoch]
        assert int(saved["state_dict"][bn]) == step
        run_cli(args(sig.name) + ["--ckpt_path=last"])
    assert procs["whole"].wait(timeout=240) == 0, (tmp_path / "whole.log").read_text()[-3000:]
    a = load_ckpt(tmp_path / "whole" / "checkpoints" / "last.ckpt")
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        b = load_ckpt(tmp_path / sig.name / "checkpoints" / "last.ckpt")
        assert a["global_step"] == b["global_step"] == 2 * per_epoch
        assert int(b["state_dict"][bn]) == 2 * per_epoch
        for k, v in a["state_dict"].items():
            assert torch.equal(v, b["state_dict"][k]), f"{k} differs by {max_weight_diff(a, b):.3g}"


# ----------------------------------------------------------------------------- one-line errors
@pytest.mark.parametrize("override, expected", [
    (["--data.eval_batch_size=0"], "data.eval_batch_size must be > 0 or null (= batch_size), got 0"),
    (["--data.eval_batch_size=-1"], "data.eval_batch_size must be > 0"),
    (["--data.num_workers=-1"], "data.num_workers must be >= 0, got -1"),
    (["--model.lr=-1"], "model.lr must be a finite number > 0, got -1.0"),
    (["--model.neuron.threshold=nan"], "model.neuron.threshold: expected a finite number, got 'nan'"),
    (["--model.T=0"], "model.T must be a positive integer, got 0"),
    (["--model.neuron.threshold=-1"], "error: neuron threshold must be > 0, got -1.0"),
    (["--model.T=abc"], "model.T: expected an integer, got 'abc'"),
    (["--model.strategy=eprop"], "unknown strategy 'eprop'; valid choices: bptt, dsr"),
    (["--model.network=nope"], "unknown model 'nope'"),
    (["--model.optimizer=torch.optim.Adam"],  # the demo sets the flat model.lr
     "model.lr is 0.002 but model.optimizer is the class torch.optim.Adam: the flat model.lr applies"),
    (["--model.optimizer=rmsprop"], "model.optimizer: got 'rmsprop' (valid: one of 'sgd', 'adam', 'adamw', or a class"),
])
def test_bad_option_is_one_line_naming_it_with_exit_2(override, expected, data_root, tmp_path, capsys):
    line = one_line_error(capsys, fit_args(data_root, tmp_path, *override))
    assert expected in line, line
    assert not list(tmp_path.rglob("*.ckpt"))


def test_dsr_with_leftover_strategy_args_names_the_model_mismatch(data_root, tmp_path, capsys):
    args = ["fit", "--config", str(CONFIGS / "cifar10_vgg11fws_ottt_a.yaml"), f"--data.root={data_root}",
            f"--trainer.default_root_dir={tmp_path}", "--model.strategy=dsr"]
    line = one_line_error(capsys, args, names_valid=False)
    assert "strategy 'dsr' cannot train model" in line and "recurrent" in line
    assert "loss_lambda" not in line


def test_traceback_only_when_debugging(data_root, tmp_path, capsys, monkeypatch):
    args = fit_args(data_root, tmp_path, "--model.lr=-1")
    monkeypatch.setenv("LIGHTNING_SNN_DEBUG", "1")
    with pytest.raises(SystemExit) as exc:
        command_line(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: model.lr")


@pytest.mark.slow
def test_sigterm_to_rank_0_of_ddp_stops_every_rank_at_the_same_step(data_root, tmp_path):
    """2 gloo ranks, SIGTERM to rank 0 only: the ranks agree at the step boundary, save one
    last.ckpt together and exit 143; ``--ckpt_path last`` finishes the run."""
    per_epoch = 10
    args = fit_args(data_root, tmp_path / "ddp", "--checkpoint.every_n_train_steps=3", "--trainer.devices=2",
                    "--trainer.strategy=ddp", epochs=2, train_batches=per_epoch, batch_size=8, batch_norm=False)
    proc = _start(args, tmp_path / "ddp.log")
    last = tmp_path / "ddp" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 180
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    log = tmp_path / "ddp.log"
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    saved = load_ckpt(last)
    step = saved["global_step"]
    assert 3 <= step < 2 * per_epoch and step % per_epoch, f"not acted on mid-epoch (step {step})"
    assert saved["VisionDataModule"]["train_position"] == [step // per_epoch, step % per_epoch]
    resumed = run_cli(args + ["--ckpt_path=last"])
    assert "Restored all states from the checkpoint" in resumed.stdout + resumed.stderr
    assert load_ckpt(last)["global_step"] == 2 * per_epoch
