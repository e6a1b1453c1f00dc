"""Faults and bad input at the command line: checkpoints that do not fit or are broken, signals,
out-of-range options. Each reports one line (exit 2) or recovers, and never trains the wrong thing."""

from __future__ import annotations

import csv
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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
    """The evaluated weights are the checkpoint's (not a fresh network's), and so is the accuracy:
    the validation at the end of training ran on the weights last.ckpt holds."""
    args, run = trained
    last = run / "checkpoints" / "last.ckpt"
    fresh = main(sub_args("validate", args)[1:], run=False).model.state_dict()
    cli = main(sub_args("validate", args) + [f"--ckpt_path={last}"])
    saved = load_ckpt(last)["state_dict"]
    evaluated = cli.model.state_dict()
    assert evaluated.keys() == saved.keys()
    for k, v in saved.items():
        assert torch.equal(evaluated[k].cpu(), v), k
    assert any(not torch.equal(fresh[k], v) for k, v in saved.items() if v.is_floating_point())
    with (run / "lightning_logs" / "version_0" / "metrics.csv").open() as f:
        logged = [float(r["val/acc"]) for r in csv.DictReader(f) if r.get("val/acc")]
    assert float(cli.trainer.callback_metrics["val/acc"]) == pytest.approx(logged[-1], abs=1e-6)


@pytest.mark.parametrize("sub", ["test", "predict", "report", "export"])
def test_every_subcommand_with_ckpt_path_uses_the_checkpoints_weights(trained, sub, tmp_path):
    """test / predict / report / export evaluate (or write) the checkpoint's weights, not a fresh
    network's: the module's state after the command equals the file's, and the exported read-out
    weight is the checkpoint's."""
    import nir

    args, run = trained
    last = run / "checkpoints" / "last.ckpt"
    extra = {"test": ["--trainer.limit_test_batches=1"], "predict": ["--trainer.limit_predict_batches=1"],
             "report": ["--trainer.limit_test_batches=1", f"--out_dir={tmp_path}"],
             "export": [f"--out={tmp_path / 'model.nir'}"]}[sub]
    cli = main(sub_args(sub, args) + [f"--ckpt_path={last}", *extra])
    saved = load_ckpt(last)["state_dict"]
    evaluated = cli.model.state_dict()
    assert evaluated.keys() == saved.keys()
    for k, v in saved.items():
        assert torch.equal(evaluated[k].cpu(), v), k
    if sub == "export":
        graph = nir.read(str(tmp_path / "model.nir"))
        assert np.array_equal(graph.nodes["layers_2_0"].weight, saved["net.layers.2.0.weight"].numpy())

# ----------------------------------------------------------------------------- checkpoint != data
@pytest.mark.parametrize("sub, change, keys", [
    ("fit", ["--data.dataset=mnist"], ["data.dataset: checkpoint 'fashion_mnist', requested 'mnist'",
                                       "data.mean: checkpoint [0.286], requested [0.1307]"]),
    ("fit", ["--data.batch_size=8"], ["data.batch_size: checkpoint 16, requested 8"]),
    ("fit", ["--data.val_size=100", "--data.seed=3"], ["data.val_size: checkpoint 0, requested 100",
                                                       "data.seed: checkpoint 0, requested 3"]),
    ("test", ["--data.dataset=mnist"], ["data.dataset: checkpoint 'fashion_mnist', requested 'mnist'",
                                        "--allow_other_data"]),
    ("validate", ["--data.dataset=mnist"], ["data.dataset: checkpoint 'fashion_mnist'"]),
])
def test_checkpoint_of_other_data_settings_is_an_error_naming_the_keys(trained, sub, change, keys, capsys):
    args, run = trained
    ckpt = run / "checkpoints" / "last.ckpt"
    before = sorted(p.name for p in run.rglob("*"))
    line = one_line_error(capsys, sub_args(sub, args) + change + [f"--ckpt_path={ckpt}", "--trainer.max_epochs=2"
                                                                   if sub == "fit" else "--data.batch_size=16"])
    assert str(ckpt) in line and "other data settings" in line
    for key in keys:
        assert key in line, line
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing written


def test_checkpoint_that_records_no_data_settings_resumes_only_when_asked(trained, tmp_path, capsys):
    """A checkpoint without the data module's state or hyper-parameters cannot say what data (batch
    size, split, position in the epoch) it was trained on: fit refuses it in one line, writing
    nothing, unless --allow_unknown_data; then the requested settings are used."""
    args, run = trained
    ckpt = load_ckpt(run / "checkpoints" / "last.ckpt")
    ckpt.pop("VisionDataModule")
    ckpt.pop("datamodule_hyper_parameters", None)
    bare = tmp_path / "bare.ckpt"
    torch.save(ckpt, bare)
    resumed = [*sub_args("fit", args), "--trainer.max_epochs=2", f"--ckpt_path={bare}", "--data.batch_size=8"]
    before = sorted(p.name for p in run.rglob("*"))
    line = one_line_error(capsys, resumed)
    assert str(bare) in line and "does not record the data settings" in line and "--allow_unknown_data" in line
    assert sorted(p.name for p in run.rglob("*")) == before
    elsewhere = [f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
                 f"--checkpoint.dirpath={tmp_path / 'checkpoints'}"]  # the shared run stays as it is
    cli = main([*resumed, *elsewhere, "--allow_unknown_data=true"])
    assert cli.trainer.current_epoch == 2 and cli.datamodule.hparams.batch_size == 8

def test_evaluation_on_another_data_set_only_when_asked_and_said(trained, capsys):
    """``--allow_other_data`` evaluates the checkpoint's weights on MNIST and says so; the data
    settings that do not define the data set (batch size) may differ in evaluation."""
    args, run = trained
    ckpt = run / "checkpoints" / "last.ckpt"
    cli = main(sub_args("test", args) + ["--data.dataset=mnist", "--data.batch_size=64", "--allow_other_data=true",
                                         f"--ckpt_path={ckpt}", "--trainer.limit_test_batches=2"])
    err = capsys.readouterr().err
    assert "--allow_other_data: test of checkpoint" in err and "requested 'mnist'" in err, err
    assert cli.datamodule.hparams.dataset == "mnist" and "test/acc" in cli.trainer.callback_metrics


def test_checkpoints_of_older_versions_are_compared_by_their_data_hyper_parameters():
    """Before the data module stored its run settings, the checkpoint had its hyper-parameters only:
    the same keys are compared (``frames``, linked to T for images, and paths are not)."""
    from lightning_snn.checkpoints import check_data_settings, stored_data_settings

    old = {"datamodule_hyper_parameters": {"dataset": "fashion_mnist", "batch_size": 128, "val_size": 5000,
                                           "seed": 0, "augment": True, "cutout": False, "frames": 4, "root": "d"}}
    stored = stored_data_settings(old)
    assert stored == {"dataset": "fashion_mnist", "batch_size": 128, "val_size": 5000, "seed": 0,
                      "augment": True, "cutout": False}
    requested = {**stored, "batch_size": 64, "frames": None, "mean": [0.1307], "std": [0.3081]}
    with pytest.raises(CheckpointError, match=r"data.batch_size: checkpoint 128, requested 64 \(valid"):
        check_data_settings(stored, requested, "x.ckpt", "fit")
    assert check_data_settings(stored, requested, "x.ckpt", "test") is None  # same data set
    other = {**requested, "dataset": "mnist"}
    assert "data.dataset: checkpoint 'fashion_mnist', requested 'mnist'" in check_data_settings(
        stored, other, "x.ckpt", "report", allow_other_data=True)


def test_mid_epoch_position_of_another_batch_size_is_refused_not_recomputed(trained, data_root):
    """The data module itself refuses (also when Lightning resolves ``last`` without the CLI check)."""
    import pytorch_lightning as pl
    from pytorch_lightning.trainer.states import TrainerFn

    from lightning_snn.data import VisionDataModule

    _, run = trained
    state = load_ckpt(run / "checkpoints" / "last.ckpt")["VisionDataModule"]
    dm = VisionDataModule(root=str(data_root), batch_size=8, num_workers=0)
    dm.trainer = pl.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu")
    dm.trainer.state.fn = TrainerFn.FITTING
    with pytest.raises(CheckpointError, match=r"data.batch_size: checkpoint 16, requested 8"):
        dm.load_state_dict(state)
    assert dm._resume_position is None
    same = VisionDataModule(root=str(data_root), batch_size=16, num_workers=0)
    same.trainer = dm.trainer
    same.load_state_dict(state)
    assert same._resume_position == tuple(state["train_position"])


@pytest.mark.parametrize("override, expected", [
    (["--data.batch_size=60000", "--data.val_size=5000"],
     "data.batch_size 60000 is larger than the training split (55,000 images of 'fashion_mnist' after val_size "
     "5000): fit would train on 0 batches (valid: data.batch_size <= 55000)"),
    (["--trainer.limit_train_batches=0"], "trainer.limit_train_batches 0: fit would train on nothing"),
])
def test_fit_that_would_train_on_nothing_is_an_error(override, expected, data_root, tmp_path, capsys):
    line = one_line_error(capsys, fit_args(data_root, tmp_path / "run", *override, "--test_after_fit=last"))
    assert expected in line, line
    assert not (tmp_path / "run").exists()  # nothing written, nothing tested


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
    """Found before the run creates anything (no log folder left), naming the option; a folder that
    was there before is kept."""
    blocker = tmp_path / "file"
    blocker.write_text("a file where the checkpoint folder should be")
    args = fit_args(data_root, tmp_path / "run", f"--checkpoint.dirpath={blocker / 'ckpts'}", epochs=1)
    line = one_line_error(capsys, args)
    assert f"--checkpoint.dirpath {blocker / 'ckpts'}: {blocker} is a file, not a folder" in line, line
    assert not (tmp_path / "run").exists()
    (tmp_path / "run" / "lightning_logs" / "version_0").mkdir(parents=True)  # an earlier run's
    one_line_error(capsys, args)
    assert [p.name for p in (tmp_path / "run" / "lightning_logs").iterdir()] == ["version_0"]


class FullAfter:
    """A real file whose writes fail with ENOSPC once ``room`` bytes are written (a full disk)."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        if self.room < len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


def test_full_disk_during_a_checkpoint_write_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    from lightning_snn import checkpoints

    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"w": torch.arange(3.0)}, target)
    good = target.read_bytes()
    monkeypatch.setattr(checkpoints, "open", lambda p, mode: FullAfter(open(p, mode), 4096), raising=False)
    with pytest.raises(CheckpointError) as exc:
        io.save_checkpoint({"w": torch.randn(10_000)}, target)
    assert str(exc.value).startswith(f"no space left on {tmp_path} while writing last.ckpt; the previous "
                                     "checkpoint is kept"), exc.value
    assert target.read_bytes() == good and sorted(tmp_path.iterdir()) == [target]
    with pytest.raises(CheckpointError, match="no earlier checkpoint there"):
        io.save_checkpoint({"w": torch.randn(10_000)}, tmp_path / "other.ckpt")


@pytest.mark.slow
def test_fit_onto_a_full_disk_is_one_line(data_root, tmp_path):
    """A real 64 KiB tmpfs (a private mount namespace) as the checkpoint folder of a real fit."""
    folder = tmp_path / "small_fs"
    folder.mkdir()
    mount = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
             f'mount -t tmpfs -o size=64k tmpfs {folder} && exec "$0" "$@"']
    if shutil.which("unshare") is None or subprocess.run(mount + ["true"], capture_output=True).returncode:
        pytest.skip("cannot mount a private tmpfs here")
    args = [a for a in fit_args(data_root, tmp_path / "run", epochs=1) if not a.startswith("--checkpoint.dirpath")]
    r = subprocess.run(mount + [sys.executable, "-m", "lightning_snn", *args, f"--checkpoint.dirpath={folder}"],
                       cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=240)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert err[-1].startswith(f"error: no space left on {folder} while writing "), err[-1]


def test_temporary_files_of_killed_writers_are_removed(tmp_path):
    """A kill during a write leaves ``.last.ckpt.<pid>.tmp``; the next writer in that folder removes
    it when that process is gone, and leaves files of live writers and of other hosts alone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f".last.ckpt.{dead.pid}.tmp", tmp_path / f".last.ckpt.{dead.pid}@{socket.gethostname()}.tmp"]
    alive = [tmp_path / f".last.ckpt.{os.getppid()}.tmp", tmp_path / f".last.ckpt.{dead.pid}@elsewhere.tmp",
             tmp_path / f".notes.{dead.pid}.txt"]
    for p in stale + alive:
        p.write_bytes(b"")
    AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(2)}, tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last.ckpt"] + [p.name for p in alive])


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
    per_epoch = 30  # 55 steps left after the first checkpoint: room for a loaded machine
    args = lambda run: fit_args(data_root, tmp_path / run, "--checkpoint.every_n_train_steps=5",  # noqa: E731
                                epochs=2, train_batches=per_epoch, hidden=128)
    procs = {"whole": _start(args("whole"), tmp_path / "whole.log")}
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        procs[sig.name] = _start(args(sig.name), tmp_path / f"{sig.name}.log")
    waiting, deadline = {signal.SIGTERM, signal.SIGUSR1}, time.monotonic() + 180
    while waiting and time.monotonic() < deadline:  # each run gets its signal at its own first
        for sig in list(waiting):                    # step checkpoint (step 5): training under way
            proc, last = procs[sig.name], tmp_path / sig.name / "checkpoints" / "last.ckpt"
            if last.exists() or proc.poll() is not None:
                proc.send_signal(sig)
                waiting.discard(sig)
        time.sleep(0.01)
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
    (["--model.strategy=eprop"], "unknown strategy 'eprop'; valid choices: ann, bptt, dsr"),
    (["--model.network=nope"], "unknown model 'nope'"),
    (["--model.optimizer=torch.optim.Adam"],  # the demo sets the flat model.lr
     "model.lr is 0.002 but model.optimizer is the class torch.optim.Adam: the flat model.lr applies"),
    (["--model.optimizer=rmsprop"], "model.optimizer: got 'rmsprop' (valid: one of 'sgd', 'adam', 'adamw', or a class"),
])
def test_bad_option_is_one_line_naming_it_with_exit_2(override, expected, data_root, tmp_path, capsys):
    line = one_line_error(capsys, fit_args(data_root, tmp_path, *override))
    assert expected in line, line
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("how", ["command line", "yaml"])
@pytest.mark.parametrize("value, expected", [
    ("fast", "model.optimizer.init_args.lr: expected a number, got 'fast' for torch.optim.Adam (valid: a number)"),
    ("-1.0", "model.optimizer.init_args.lr must be a finite number > 0, got -1.0"),
])
def test_bad_injected_optimizer_lr_names_init_args_lr_and_writes_nothing(how, value, expected, data_root, tmp_path,
                                                                          capsys):
    """``model.optimizer: {class_path: torch.optim.Adam, init_args: {lr: ...}}`` with a value of the
    wrong type or out of range: one line naming the full key and value, and no run folder (no
    ``version_N/config.yaml``) left behind."""
    run = tmp_path / "run"
    flat = ["--model.lr=null", "--model.weight_decay=null"]  # the demo config's flat AdamW settings
    if how == "yaml":
        config = tmp_path / "adam.yaml"
        config.write_text("model:\n  optimizer:\n    class_path: torch.optim.Adam\n"
                          f"    init_args: {{lr: {value}}}\n")
        extra = [*flat, "--config", str(config)]
    else:
        extra = [*flat, "--model.optimizer=torch.optim.Adam", "--model.optimizer.init_args.lr", value]
    line = one_line_error(capsys, fit_args(data_root, run, *extra))
    assert expected in line, line
    assert not run.exists(), sorted(tmp_path.rglob("*"))


def test_injected_optimizer_settings_torch_refuses_are_named_before_the_run_starts(data_root, tmp_path, capsys):
    """A value torch's optimiser checks itself (Adam's beta in [0, 1)) is found when the model is
    built and named by its ``init_args`` key, not raised from inside ``configure_optimizers``."""
    run = tmp_path / "run"
    line = one_line_error(capsys, fit_args(data_root, run, "--model.lr=null", "--model.weight_decay=null",
                                           "--model.optimizer=torch.optim.Adam",
                                           "--model.optimizer.init_args.betas=[1.5, 0.9]"))
    assert "model.optimizer.init_args.betas (1.5, 0.9)" in line and "Invalid beta parameter" in line, line
    assert not run.exists()


def test_an_unwritable_run_folder_is_one_line_naming_the_option(data_root, unwritable_dir, capsys):
    """``--trainer.default_root_dir`` (and the logger / checkpoint folders under it) on a read-only
    file system or under a file: one line naming the option and folder, exit 2, before the run starts."""
    line = one_line_error(capsys, fit_args(data_root, unwritable_dir))
    assert line.startswith(f"error: --trainer.default_root_dir {unwritable_dir}: "), line
    assert "is not writable" in line or "is a file, not a folder" in line, line


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
@pytest.mark.xdist_group("ddp")  # multi-process runs one at a time (2 CPUs)
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


# ----------------------------------------------------------------------------- more one-line errors
def test_wrong_type_in_network_args_names_the_key(data_root, tmp_path, capsys):
    line = one_line_error(capsys, fit_args(data_root, tmp_path, "--model.network_args.hidden=512"))
    assert line == ("error: model.network_args.hidden: expected a list of integers, got 512 "
                    "(valid: a list of integers, e.g. the default [512])"), line


def test_model_of_another_kind_is_named_before_its_leftover_arguments(data_root, tmp_path, capsys):
    """An IDE config (network_args dropout, strategy_args of the solver) with a feed-forward model:
    the strategy / model mismatch is the message, not the arguments the model does not take."""
    for network in ("mlp", "vgg11"):
        args = ["fit", "--config", str(CONFIGS / "ide" / "mnist_f64c5_if_t30.yaml"), f"--data.root={data_root}",
                f"--trainer.default_root_dir={tmp_path}", f"--model.network={network}"]
        line = one_line_error(capsys, args, names_valid=False)
        assert "strategy 'ide' cannot train model Spiking" in line and "(kind 'feedforward')" in line, line
        assert "dropout" not in line


def test_best_checkpoint_without_a_fit_is_an_error(data_root, tmp_path, capsys):
    args = sub_args("test", fit_args(data_root, tmp_path)) + ["--ckpt_path=best"]
    line = one_line_error(capsys, args)
    assert "--ckpt_path best: `test` has no best checkpoint of its own" in line and "'last'" in line
    assert not tmp_path.exists() or not list(tmp_path.rglob("*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_accelerator_without_a_gpu_names_the_option(data_root, tmp_path, capsys):
    line = one_line_error(capsys, fit_args(data_root, tmp_path, "--trainer.accelerator=gpu"))
    assert line.startswith("error: --trainer.accelerator gpu: not available on this machine"), line
    assert "(valid: cpu, or auto" in line


class OutOfMemoryAtStep(Callback):
    """Raises torch's own out-of-memory error inside the training step ``at`` (as the allocator
    does when a batch does not fit)."""

    def __init__(self, at: int, host: bool = False) -> None:
        self.at, self.host = at, host

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.at and self.host:  # torch's CPU allocator (a plain RuntimeError)
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 2147483648 bytes. Error code 12 (Cannot allocate "
                               "memory)")
        if batch_idx == self.at:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a "
                                         "total capacity of 11.72 GiB of which 1.05 GiB is free.")


@pytest.mark.parametrize("host", [False, True], ids=["cuda-wording", "cpu-allocator"])
def test_out_of_memory_names_batch_size_t_and_the_memory_tried(data_root, tmp_path, capsys, host):
    from lightning_snn.cli import _NO_EXIT
    from lightning_snn.errors import run_cli

    args = fit_args(data_root, tmp_path, "--model.T=3", batch_size=24, epochs=1)
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: main(args, parser_kwargs=_NO_EXIT,
                             trainer_defaults={"callbacks": [OutOfMemoryAtStep(1, host)]}))
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and "Traceback" not in "\n".join(err), err
    assert re.fullmatch(r"error: out of memory in fit with --data\.batch_size 24 \(--data\.eval_batch_size 250\) and "
                        r"--model\.T 3 \(tried "
                        r"to allocate 2\.00 GiB more, peak [\d.]+ GiB resident on cpu\) \(valid: a smaller "
                        r"--data\.batch_size .*\)", err[-1]), err[-1]


# ----------------------------------------------------------------------------- YAML files
def _dup(text: str) -> str:
    return text.replace("  lr: 0.002\n", "  lr: 0.1\n  lr: 0.5\n")


def test_key_given_twice_in_a_config_is_an_error_naming_file_line_and_key(data_root, tmp_path, capsys):
    src = DEMO.read_text()
    line_no = src.splitlines().index("  lr: 0.002") + 2
    bad = tmp_path / "dup.yaml"
    bad.write_text(_dup(src))
    args = [str(bad) if a == str(DEMO) else a for a in fit_args(data_root, tmp_path / "run")]
    line = one_line_error(capsys, args)
    assert line == (f"error: {bad} line {line_no}: key 'model.lr' given twice (first at line {line_no - 1}; "
                    "the second would silently win) (valid: each key once)"), line
    assert not (tmp_path / "run").exists()


def test_key_given_twice_in_an_included_config_or_on_the_command_line(data_root, tmp_path, capsys):
    """``config:`` includes (configs/ide/*) are read as strictly as the file named by --config, and
    so is YAML given inline for a group or a dict option."""
    base = CONFIGS / "ide" / "base" / "f64c5.yaml"
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "f64c5.yaml").write_text(base.read_text().replace("  T: 30\n", "  T: 30\n  T: 2\n"))
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("config: base/f64c5.yaml\nmodel.neuron.leak: 0.9\n")
    common = [f"--data.root={data_root}", f"--trainer.default_root_dir={tmp_path / 'run'}"]
    line = one_line_error(capsys, ["fit", "--config", str(overlay), *common])
    assert f"{tmp_path / 'base' / 'f64c5.yaml'} line " in line and "key 'model.T' given twice" in line, line
    for inline, key in [("--model={lr: 0.1, lr: 0.5}", "'lr'"),
                        ("--model.network_args={hidden: [16], hidden: [32]}", "'hidden'"),
                        ("--config={model: {T: 2, T: 3}}", "'model.T'")]:
        line = one_line_error(capsys, fit_args(data_root, tmp_path / "run", inline))
        assert "the command-line value '{" in line and f"key {key} given twice" in line, line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, reason", [
    (b"model:\n\tT: 4\n", "line 2, column 1: a tab character (valid: spaces"),
    (b"", "is empty (valid: a YAML document"),
    (b"# nothing but a comment\n", "holds only comments (valid: a YAML document"),
    (b"model:\n  T: 4\n  network: ml\xff\n", "line 3: byte 0xff is not UTF-8 text (valid: a UTF-8 encoded"),
    (b"model:\n  T: [4\n", "line 3, column 1: while parsing a flow sequence"),
])
def test_unreadable_yaml_config_names_the_file_and_the_reason(content, reason, data_root, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    line = one_line_error(capsys, ["fit", "--config", str(bad), f"--data.root={data_root}"])
    assert line.startswith(f"error: {bad} ") and reason in line, line


def test_missing_config_file_names_the_option(data_root, tmp_path, capsys):
    line = one_line_error(capsys, ["fit", "--config", str(tmp_path / "nope.yaml"), f"--data.root={data_root}"])
    assert line == f"error: --config '{tmp_path / 'nope.yaml'}' does not exist (valid: a YAML config file, " \
                   "e.g. configs/fmnist_mlp_bptt.yaml)", line


def test_yaml_reader_alone():
    """``loads_yaml`` / ``load_yaml`` as the suites and sweep spaces use them: nested and sequence
    keys are named with their path; YAML's merge key (an explicit override) is not a duplicate."""
    from lightning_snn.errors import YamlError
    from lightning_snn.yamlfile import loads_yaml

    assert loads_yaml("a: &x {b: 1}\nc:\n  <<: *x\n  b: 2\n", "m.yaml") == {"a": {"b": 1}, "c": {"b": 2}}
    assert loads_yaml("a: 1\n'1': 2\n1: 3\n", "m.yaml") == {"a": 1, "1": 2, 1: 3}  # str and int keys differ
    with pytest.raises(YamlError, match=r"^s\.yaml line 3: key 'runs\.0\.model\.T' given twice"):
        loads_yaml("runs:\n- {model: {T: 2,\n    T: 4}}\n", "s.yaml")
