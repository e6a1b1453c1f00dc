"""The submit CLI and jobs on a real single-node SLURM cluster (started by slurm/local_cluster/start.sh).

The cluster needs root and Debian packages (the start script installs them); it is started once per
test run and stopped at the end unless it was already running.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_snn.slurm.submit import main as submit_main
from lightning_snn.slurm.validate import time_limit_seconds
from procs import CONFIGS, ROOT, load_ckpt, max_weight_diff, tiny_fit_args

CONFIG = CONFIGS / "fmnist_mlp_bptt.yaml"


def submit(capsys, *args: str) -> tuple[int, str, str]:
    code = submit_main(["submit", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def job_fields(job_id: str) -> dict[str, str]:
    """``scontrol show job`` as a dict (finished jobs stay visible for MinJobAge = 300 s)."""
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_gone(job_id: str, timeout: float) -> float:
    """Seconds until the job left the queue (completed, failed or cancelled)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        out = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout
        if not out.strip():
            return time.monotonic() - t0
        time.sleep(0.5)
    subprocess.run(["scancel", job_id])
    raise AssertionError(f"job {job_id} still queued after {timeout} s: {job_fields(job_id)}")


def metric_epochs(run_dir: Path) -> set[int]:
    """Epochs with a validation accuracy in any attempt's metrics.csv."""
    epochs = set()
    for f in run_dir.glob("logs/attempt*/metrics.csv"):
        with f.open() as fh:
            epochs |= {int(r["epoch"]) for r in csv.DictReader(fh) if r.get("val/acc")}
    return epochs


def job_train_args(data_root: Path, *, epochs: int, batches: int) -> list[str]:
    """Training overrides for a job (the template sets run dir, logger and checkpoint paths)."""
    keep = ("--data.", "--model.", "--trainer.max_epochs", "--trainer.limit_", "--test_after_fit",
            "--trainer.enable_")
    return [a for a in tiny_fit_args(data_root, Path("unused"), epochs=epochs, train_batches=batches)
            if a.startswith(keep)]


# ----------------------------------------------------------------------------- jobs on the cluster
@pytest.mark.slow
def test_submitted_ddp_job_trains_and_writes_checkpoint_and_metrics(slurm_cluster, submit_env, tmp_path,
                                                                    data_root, capsys):
    out_dir = tmp_path / "runs"
    code, out, err = submit(capsys, "--config", str(CONFIG), "--nodes", "1", "--gpus-per-node", "2",
                            "--accelerator", "cpu", "--time", "5", "--partition", slurm_cluster,
                            "--output-dir", str(out_dir), "--workdir", str(ROOT), "--job-name", "e2e",
                            "--", *job_train_args(data_root, epochs=2, batches=4))
    assert code == 0, err
    job_id = out.strip()
    assert job_id.isdigit() and f"submitted job {job_id}" in err
    wait_gone(job_id, 240)
    log = (out_dir / "e2e" / f"e2e-{job_id}.out").read_text()
    info = job_fields(job_id)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-4000:]
    assert "Starting with 2 processes" in log and "distributed_backend=gloo" in log
    run = out_dir / "e2e" / job_id
    ckpt = load_ckpt(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2 * 4
    assert metric_epochs(run) == {0, 1}


@pytest.mark.slow
def test_usr1_requeues_resumes_and_ends_with_the_same_epoch_count(slurm_cluster, submit_env, tmp_path,
                                                                  data_root, capsys):
    """USR1 (as before a time limit): hpc checkpoint, requeue, restart resumes from it and finishes."""
    epochs, batches = 3, 15
    out_dir = tmp_path / "runs"
    common = ["--config", str(CONFIG), "--nodes", "1", "--gpus-per-node", "1", "--accelerator", "cpu",
              "--time", "5", "--partition", slurm_cluster, "--output-dir", str(out_dir), "--workdir", str(ROOT)]
    train = ["--", *job_train_args(data_root, epochs=epochs, batches=batches)]
    jobs = {}
    for name in ("plain", "preempted"):
        code, out, err = submit(capsys, *common, "--job-name", name, *train)
        assert code == 0, err
        jobs[name] = out.strip()
    run = out_dir / "preempted" / jobs["preempted"]
    deadline = time.monotonic() + 180
    while not (run / "checkpoints" / "last.ckpt").exists():  # first epoch done: training is under way
        assert time.monotonic() < deadline, job_fields(jobs["preempted"])
        time.sleep(0.1)
    t_signal = time.monotonic()
    subprocess.run(["scancel", "--signal=USR1", jobs["preempted"]], check=True, timeout=30)
    wait_gone(jobs["preempted"], 300)
    round_trip = time.monotonic() - t_signal
    wait_gone(jobs["plain"], 300)

    log = (out_dir / "preempted" / f"preempted-{jobs['preempted']}.out").read_text()
    info = job_fields(jobs["preempted"])
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", log[-4000:]
    assert "Handling auto-requeue signal" in log or (run / "hpc_ckpt_1.ckpt").exists(), log[-4000:]
    assert (run / "hpc_ckpt_1.ckpt").exists()
    assert f"attempt 1 of job {jobs['preempted']}" in log
    assert f"resume from '{run}/hpc_ckpt_1.ckpt'" in log
    assert "Restored all states from the checkpoint" in log

    plain = load_ckpt(out_dir / "plain" / jobs["plain"] / "checkpoints" / "last.ckpt")
    preempted = load_ckpt(run / "checkpoints" / "last.ckpt")
    assert preempted["global_step"] == plain["global_step"] == epochs * batches
    # saved at a step boundary: the interrupted batch is not counted twice by BatchNorm
    tracked = [k for k in plain["state_dict"] if k.endswith("num_batches_tracked")]
    assert tracked and all(int(preempted["state_dict"][k]) == int(plain["state_dict"][k]) == epochs * batches
                           for k in tracked)
    for k, v in plain["state_dict"].items():  # same seed, resumed between steps: the same weights
        assert torch.equal(v, preempted["state_dict"][k]), f"{k} differs by {max_weight_diff(plain, preempted):.3g}"
    assert metric_epochs(run) == metric_epochs(out_dir / "plain" / jobs["plain"]) == set(range(epochs))
    print(f"USR1 -> requeued job finished {round_trip:.1f} s later")


@pytest.mark.slow
def test_array_tasks_train_with_their_task_id_as_seed(slurm_cluster, submit_env, tmp_path, data_root, capsys):
    out_dir = tmp_path / "runs"
    code, out, err = submit(capsys, "--config", str(CONFIG), "--gpus-per-node", "1", "--accelerator", "cpu",
                            "--time", "5", "--partition", slurm_cluster, "--array", "0-1",
                            "--output-dir", str(out_dir), "--workdir", str(ROOT), "--job-name", "seeds",
                            "--", *job_train_args(data_root, epochs=1, batches=2))
    assert code == 0, err
    array_id = out.strip()
    wait_gone(array_id, 240)
    ckpts = {}
    for task in (0, 1):
        run = out_dir / "seeds" / f"{array_id}_{task}"
        assert f"seed_everything: {task}" in (run / "logs" / "attempt0" / "config.yaml").read_text()
        ckpts[task] = load_ckpt(run / "checkpoints" / "last.ckpt")
        assert ckpts[task]["global_step"] == 2
    assert max_weight_diff(ckpts[0], ckpts[1]) > 1e-3  # different seeds, different networks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_sweep_job_runs_trials_on_its_ray_cluster_and_reports_the_best(slurm_cluster, submit_env, tmp_path,
                                                                           data_root):
    """``python -m tune.slurm_submit`` submits tune/slurm/ray_sweep.sbatch: the job starts a Ray head,
    runs ``tune.sweep --address auto`` on it, both trials finish with a val/acc and the best is reported."""
    logs, storage, name = tmp_path / "logs", tmp_path / "tune", "slurm-sweep"
    tiny = ["--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2", "--data.num_workers=0",
            "--data.batch_size=16", "--data.eval_batch_size=64", "--model.network_args={'hidden': [16]}",
            f"--data.root={data_root}", "--trainer.accelerator=cpu"]
    cmd = [sys.executable, "-m", "tune.slurm_submit", "--nodes", "1", "--cpus-per-node", "2",
           "--gpus-per-node", "0", "--time", "00:10:00", "--partition", slurm_cluster, "--job-name", "sweep",
           "--workdir", str(ROOT), "--python", sys.executable,
           "--port", str(free_port()), "--log-dir", str(logs),
           "--", "--config", str(CONFIG), "--space", str(ROOT / "tune" / "spaces" / "threshold_T.yaml"),
           "--num-samples", "2", "--scheduler", "fifo", "--max-epochs", "1", "--resources-per-trial", "cpu=1",
           "--storage-path", str(storage), "--name", name, "--", *tiny]
    # (the submitter parses the sweep's and a trial's command line first: imports Lightning and Ray)
    sub = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    assert f"wrote {logs / 'sweep.sbatch'}" in sub.stdout
    submitted = re.search(r"Submitted batch job (\d+)", sub.stdout)
    assert submitted, sub.stdout + sub.stderr
    job_id = submitted.group(1)
    waited = wait_gone(job_id, 420)
    log = (logs / f"sweep-{job_id}.out").read_text()
    info = job_fields(job_id)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-5000:]
    assert "ray nodes alive: 1 / 1" in log, log[-5000:]

    exp = storage / name
    state = json.loads(sorted(exp.glob("experiment_state-*.json"))[-1].read_text())
    statuses = [json.loads(t[0])["status"] for t in state["trial_data"]]
    assert statuses == ["TERMINATED", "TERMINATED"], log[-5000:]
    trials = sorted(p for p in exp.iterdir() if p.is_dir() and p.name.startswith("run_trial_"))
    assert len(trials) == 2
    accs = []
    for trial in trials:
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        assert [r["training_iteration"] for r in rows] == [1] and 0.0 <= rows[0]["val/acc"] <= 1.0
        accs.append(rows[0]["val/acc"])
    best = json.loads((exp / "best.json").read_text())
    assert best["best_value"] == pytest.approx(max(accs))
    assert set(best["config"]) == {"model.neuron.threshold", "model.T"}
    assert f"sweep {exp}: 2 trials, 0 failed" in log
    assert f"best trial: val/acc={best['best_value']:.4f}" in log
    print(f"sweep job {job_id} left the queue after {waited:.1f} s")


# ----------------------------------------------------------------------------- rendering and bad input
@pytest.mark.parametrize("value, seconds", [("30", 1800), ("5:30", 330), ("02:00:00", 7200), ("1-12", 129600),
                                            ("1-00:30", 88200), ("2-01:02:03", 176523), ("UNLIMITED", None)])
def test_every_slurm_time_form_is_accepted(value, seconds):
    assert time_limit_seconds(value) == seconds


def test_dry_run_prints_the_rendered_script_and_submits_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no cluster needed to render
    code, out, err = submit(capsys, "--config", str(CONFIG), "--nodes", "2", "--gpus-per-node", "4",
                            "--time", "1-00:00:00", "--partition", "gpu", "--array", "0-2", "--dry-run",
                            "--output-dir", str(tmp_path), "--sync-batchnorm", "--sbatch=--mem=4G",
                            "--", "--trainer.max_epochs=7")
    assert code == 0, err
    for line in ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --array=0-2", "#SBATCH --time=1-00:00:00", "#SBATCH --signal=USR1@90",
                 "#SBATCH --requeue", "--trainer.num_nodes=2", "--trainer.devices=4",
                 "--trainer.strategy=ddp", '--seed_everything="$SLURM_ARRAY_TASK_ID"', "--trainer.max_epochs=7",
                 "#SBATCH --mem=4G", "--trainer.sync_batchnorm=true"]:
        assert line in out, line
    assert "srun" in out and not any(tmp_path.iterdir())
    syntax = subprocess.run(["bash", "-n"], input=out, capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


def test_rendered_single_node_script_is_accepted_by_sbatch(slurm_cluster, tmp_path, capsys):
    code, out, err = submit(capsys, "--config", str(CONFIG), "--gpus-per-node", "2", "--accelerator", "cpu",
                            "--time", "00:10:00", "--partition", slurm_cluster, "--dry-run",
                            "--output-dir", str(tmp_path))
    assert code == 0, err
    script = tmp_path / "job.sbatch"
    script.write_text(out)
    test = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=60)
    assert test.returncode == 0 and "to start at" in test.stderr, test.stderr


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"--config": "configs/nope.yaml"}, ["--config 'configs/nope.yaml' does not exist"]),
        ({"--nodes": "0"}, ["--nodes must be a positive integer, got 0"]),
        ({"--nodes": "-2"}, ["--nodes must be a positive integer, got -2"]),
        ({"--gpus-per-node": "0"}, ["--gpus-per-node must be a positive integer, got 0"]),
        ({"--gpus-per-node": "-1"}, ["--gpus-per-node must be a positive integer, got -1"]),
        ({"--time": "2h"}, ["--time '2h' is not a SLURM time limit", "HH:MM:SS", "D-HH:MM:SS"]),
        ({"--time": "1:99:00"}, ["--time '1:99:00' is not a SLURM time limit"]),
        ({"--time": "1"}, ["--signal-lead 90 s is not shorter than the time limit (60 s)"]),
        ({"--array": "0..3"}, ["--array '0..3' is not a SLURM array spec", "0-4"]),
    ],
)
def test_bad_input_is_a_clear_error_before_anything_is_submitted(change, expected, tmp_path, capsys,
                                                                 monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a) or pytest.fail("ran a command"))
    opts = {"--config": str(CONFIG), "--nodes": "1", "--gpus-per-node": "1", "--time": "10",
            "--partition": "debug", "--output-dir": str(tmp_path)} | change
    code, out, err = submit(capsys, *[x for kv in opts.items() for x in kv])
    assert code == 2 and out == ""
    for piece in expected:
        assert piece in err, err
    assert not calls and not any(tmp_path.iterdir())


def test_unknown_partition_names_the_ones_sinfo_reports(slurm_cluster, tmp_path, capsys):
    code, out, err = submit(capsys, "--config", str(CONFIG), "--time", "10", "--partition", "gpu-huge",
                            "--output-dir", str(tmp_path))
    assert code == 2 and out == ""
    assert f"unknown partition 'gpu-huge'; partitions on this cluster (sinfo): {slurm_cluster}" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args, expected", [
    (["--", "--model.T", "abc"], "model.T: expected an integer, got 'abc'"),
    (["--", "--model.no_such_option=1"], "no_such_option"),
    (["--config", "BAD_YAML"], "bad.yaml line 3, column 1: while parsing a flow sequence"),
])
def test_training_arguments_are_parsed_by_the_jobs_parser_before_rendering(args, expected, tmp_path, capsys,
                                                                           monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)  # a dry run needs no cluster
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  T: [4\n")  # a YAML syntax error
    opts = ["--config", str(CONFIG), "--time", "10", "--partition", "debug", "--dry-run",
            "--output-dir", str(tmp_path / "runs")]
    code, out, err = submit(capsys, *opts, *[str(bad) if a == "BAD_YAML" else a for a in args])
    assert code == 2 and out == ""
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: the training command line rejects") and expected in line, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_dry_run_with_sinfo_but_no_reachable_controller_prints_the_script(tmp_path, capsys, monkeypatch):
    """The real ``sinfo``, pointed (SLURM_CONF) at a controller address where nothing listens."""
    if shutil.which("sinfo") is None:
        pytest.skip("SLURM's client tools are not installed")
    with socket.socket() as s:  # a free port: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "slurm.conf"
    conf.write_text(f"ClusterName=nowhere\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort={port}\n"
                    "AuthType=auth/none\nNodeName=localhost CPUs=1\nPartitionName=debug Nodes=localhost\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    opts = ["--config", str(CONFIG), "--time", "10", "--partition", "debug", "--output-dir", str(tmp_path / "runs")]
    code, out, err = submit(capsys, *opts, "--dry-run")
    assert code == 0 and "#SBATCH --partition=debug" in out, err
    assert "warning: partition 'debug' not checked: sinfo failed" in err
    code, out, err = submit(capsys, *opts)  # a real submit still needs the controller
    assert code == 2 and out == "" and err.startswith("error: sinfo failed") and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def test_usage_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LIGHTNING_SNN_DEBUG", None)
    cmd = [sys.executable, "-m", "lightning_snn.slurm", "submit", "--config", str(CONFIG), "--time", "2h",
           "--partition", "debug", "--dry-run"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: --time '2h' is not a SLURM time limit")
    r = subprocess.run([*cmd[:3], "submit", "--nodes", "x"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--nodes: invalid int value: 'x'" in r.stderr, r.stderr
    r = subprocess.run([*cmd, "--debug"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode != 0 and "Traceback" in r.stderr and "SubmitError" in r.stderr
