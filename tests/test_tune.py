"""Ray Tune sweeps end to end on a real local Ray (2 CPUs) with W&B offline, plus their parts.

Each sweep runs as a subprocess of ``python -m tune.sweep`` (as a user would run it) with a timeout;
the trials are the ordinary fit of the demo config cut down to a few batches.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from wandb_offline import config as wandb_config
from wandb_offline import history, run_info
from tune.space import load_space, to_overrides

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "fmnist_mlp_bptt.yaml"


def tiny(data_root: Path) -> list[str]:
    return ["--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
            "--data.num_workers=0", "--data.batch_size=16", "--data.eval_batch_size=64",
            "--model.network_args={'hidden': [16]}", f"--data.root={data_root}",
            "--trainer.accelerator=cpu"]


def sweep_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "WORLD_SIZE", "RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", RAY_USAGE_STATS_ENABLED="0",
               RAY_DEDUP_LOGS="0")
    return env


def sweep_cmd(storage: Path, name: str, space: Path, data_root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tune.sweep", "--config", str(DEMO), "--space", str(space),
            "--storage-path", str(storage), "--name", name, "--num-cpus", "2",
            "--max-epochs", "2", *extra, "--", *tiny(data_root)]


def run_sweep(cmd: list[str], timeout: float, returncode: int = 0) -> str:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=sweep_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        _kill_group(proc)
    assert proc.returncode == returncode, out[-5000:]
    return out


def _kill_group(proc: subprocess.Popen) -> None:
    """End the driver's process group (the local Ray it started), if anything of it is left."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def trial_dirs(exp: Path) -> list[Path]:
    return sorted(p for p in exp.iterdir() if p.is_dir() and p.name.startswith("run_trial_"))


def trial_states(exp: Path) -> dict[str, str]:
    """``trial_id -> status`` from the experiment-state file of the latest driver (the file name
    holds the driver's start time; Tune rewrites the older files too, so not their mtime)."""
    files = sorted(exp.glob("experiment_state-*.json"))
    if not files:
        return {}
    try:
        data = json.loads(files[-1].read_text())
    except json.JSONDecodeError:  # being written
        return {}
    trials = [json.loads(t[0]) for t in data["trial_data"]]
    return {t["trial_id"]: t["status"] for t in trials}


# ----------------------------------------------------------------------------- parts (fast)
def test_space_file_to_tune_domains_and_overrides(tmp_path):
    from ray.tune.search.sample import Categorical, Float, Integer

    f = tmp_path / "s.yaml"
    f.write_text("model.neuron.threshold: {uniform: [0.5, 2.0]}\nmodel.lr: {loguniform: [1.0e-4, 1e-2]}\n"
                 "model.T: {choice: [2, 4]}\ndata.batch_size: {randint: [8, 32]}\n"
                 "model.neuron.leak: {grid: [0.9, 1.0]}\nmodel.optimizer: adamw\n")
    space = load_space(f)
    assert isinstance(space["model.neuron.threshold"], Float)
    assert space["model.lr"].lower == pytest.approx(1e-4)  # "1e-2" (a YAML string) read as a float
    assert isinstance(space["model.T"], Categorical) and isinstance(space["data.batch_size"], Integer)
    assert space["model.neuron.leak"] == {"grid_search": [0.9, 1.0]}
    assert space["model.optimizer"] == "adamw"
    import numpy as np

    assert to_overrides({"model.T": np.int64(4), "model.neuron.surrogate": "atan",
                         "model.network_args": {"hidden": [16]}}) == [
        "--model.T=4", "--model.network_args={\"hidden\": [16]}", "--model.neuron.surrogate=atan"]
    for bad, msg in [("lr: {uniform: [0, 1]}", "not a config option"),
                     ("model.lr: {normal: [0, 1]}", "unknown distribution 'normal'")]:
        f.write_text(bad)
        with pytest.raises(ValueError, match=msg):
            load_space(f)


def test_sweep_of_an_injected_optimizer_s_setting(data_root):
    """A config whose optimiser is a class (the proxy config's Adam) is swept through its
    ``init_args``; the flat ``model.lr`` of the short names is then a one-line error."""
    from lightning_snn.cli import main

    base = ["--config", str(ROOT / "configs" / "proxy" / "fmnist_proxy.yaml"), f"--data.root={data_root}",
            "--model.network=proxy_convnet", "--model.network_args={'channels': [4], 'hidden': []}"]
    cli = main(base + to_overrides({"model.optimizer.init_args.lr": 3e-4}), run=False)
    assert cli.model.hparams["optimizer"]["init_args"]["lr"] == 3e-4
    assert cli.model.hparams["optimizer"]["init_args"]["betas"] == [0.8, 0.99]  # the rest kept
    with pytest.raises(ValueError, match="model.lr is 0.0003 but model.optimizer is the class torch.optim.Adam"):
        main(base + to_overrides({"model.lr": 3e-4}), run=False)


def test_every_space_file_loads():
    for f in (ROOT / "tune" / "spaces").glob("*.yaml"):
        assert load_space(f)


def test_firing_rate_monitor_reads_without_changing_outputs():
    from lightning_snn.callbacks import FiringRateMonitor
    from lightning_snn.module import SNNModule
    from lightning_snn.neurons import LIF

    torch.manual_seed(0)
    m = SNNModule("mlp", num_classes=10, input_shape=(1, 8, 8), network_args={"hidden": [12, 6]}, T=3)
    m.eval()
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        before = m(x)
        mon = FiringRateMonitor()
        mon._attach(m.net.spiking_layers())
        during = m(x)
        lif = m.net.spiking_layers()[0]
        lif.reset_state()
        lif.step(torch.ones(5, 12) * 2.0)  # single-step path is recorded too: all fire
        mon._detach()
        after = m(x)
    assert torch.equal(before, during) and torch.equal(before, after)
    assert all(not isinstance(getattr(layer, "step", None), type(lambda: 0))
               for layer in m.net.spiking_layers() if isinstance(layer, LIF))
    # layer 0 saw one multi-step pass (T*B = 15 samples) + one step of 5 all-firing samples
    assert mon._counts == [20, 15]
    spikes = {}
    h = m.net.spiking_layers()[1].register_forward_hook(lambda mod, i, o: spikes.setdefault("s", o))
    with torch.no_grad():
        m(x)
    h.remove()
    assert torch.allclose(mon._sums[1] / mon._counts[1], spikes["s"].mean(dim=(0, 1)))


# ----------------------------------------------------------------------------- real sweeps
@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # one local Ray at a time (2 CPUs each)
def test_sweep_four_trials_best_config_and_wandb_runs(tmp_path, data_root):
    """4 trials (Optuna search, ASHA) finish; the best is reported with its config; every trial
    wrote an offline W&B run, grouped by the sweep name, whose history holds its metrics."""
    out = run_sweep(sweep_cmd(tmp_path, "four", ROOT / "tune" / "spaces" / "threshold_T.yaml",
                              data_root, "--num-samples", "4", "--search", "optuna",
                              "--scheduler", "asha", "--wandb-project", "snn-tests",
                              "--wandb-tags", "ci"), timeout=300)
    assert "4 trials, 0 failed" in out, out[-3000:]
    exp = tmp_path / "four"
    best = json.loads((exp / "best.json").read_text())
    assert set(best["config"]) == {"model.neuron.threshold", "model.T"}
    assert f"best trial: val/acc={best['best_value']:.4f}" in out
    accs = []
    trials = trial_dirs(exp)
    assert len(trials) == 4
    for trial in trials:
        out_dir = exp / "trials" / json.loads((trial / "result.json").read_text().splitlines()[0])["trial_id"]
        runs = list((out_dir / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 1, trial
        info = run_info(runs[0])
        assert info["project"] == "snn-tests" and info["group"] == "four"
        assert set(info["tags"]) == {"four", "ci"} and info["job_type"] == "tune-trial"
        rows = history(runs[0])
        val = [r["val/acc"] for r in rows if "val/acc" in r]
        results = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        # every epoch reported to Tune is in W&B, also for trials ASHA stopped early
        assert val == pytest.approx([r["val/acc"] for r in results])
        assert any("val/rate/layer0" in r for r in rows)
        assert any("val/rate_hist/layer0/values" in r for r in rows)
        if len(results) == 2:  # ran to its last epoch (ASHA may stop a trial at its first report,
            # before Lightning logs the epoch-level training metrics)
            assert any("train/acc_epoch" in r for r in rows)
        cfg = wandb_config(runs[0])
        params = json.loads((trial / "params.json").read_text())
        assert cfg["T"] == params["model.T"]  # the trial's override reached the fit
        assert cfg["cli"]["model"]["neuron"]["threshold"] == pytest.approx(params["model.neuron.threshold"])
        accs.append(max(r["val/acc"] for r in results))
    assert best["best_value"] == pytest.approx(max(accs))


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # one local Ray at a time (2 CPUs each)
def test_failed_trial_and_killed_driver_resume(tmp_path, data_root):
    """One trial of four asks for a validation split larger than the training set (found only when
    its data are set up): it is reported failed and the others finish. The driver is SIGKILLed once
    a trial has finished; ``--resume`` completes the sweep without running the finished trials
    again, and exits 1 because a trial failed."""
    space = tmp_path / "val.yaml"
    space.write_text("data.val_size: {grid: [5000, 60000, 4000, 3000]}\nmodel.T: 2\n")
    cmd = sweep_cmd(tmp_path, "killed", space, data_root, "--num-samples", "1", "--scheduler", "fifo")
    exp = tmp_path / "killed"
    log = tmp_path / "driver.log"
    driver = subprocess.Popen(cmd, cwd=ROOT, env=sweep_env(), stdout=log.open("w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and "TERMINATED" not in trial_states(exp).values():
            assert driver.poll() is None, f"the sweep ended before it could be killed:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        states = trial_states(exp)
        assert "TERMINATED" in states.values(), states
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finally:
        _kill_group(driver)
    finished = {tid for tid, s in states.items() if s == "TERMINATED"}
    assert len(finished) < 4, "all trials finished before the kill: nothing left to resume"
    before = {p.name: (p / "result.json").read_text() for p in trial_dirs(exp)
              if any(p.name.startswith(f"run_trial_{tid}") for tid in finished)}

    out = run_sweep([sys.executable, "-m", "tune.sweep", "--resume", "--name", "killed",
                     "--storage-path", str(tmp_path)], timeout=240, returncode=1)
    assert "4 trials, 1 failed" in out and "best trial: val/acc=" in out, out[-3000:]
    final = trial_states(exp)
    assert sorted(final.values()) == ["ERROR", "TERMINATED", "TERMINATED", "TERMINATED"], final
    failed = [line for line in out.splitlines() if ": FAILED " in line]
    assert len(failed) == 1 and "'data.val_size': 60000" in failed[0], failed
    for name, text in before.items():  # finished trials were not run again
        trial = exp / name
        assert (trial / "result.json").read_text() == text
        tid = json.loads(text.splitlines()[0])["trial_id"]
        logs = exp / "trials" / tid / "lightning_logs"
        assert [p.name for p in logs.iterdir()] == ["version_0"]
    for trial in trial_dirs(exp):
        if "val_size=60000" not in trial.name:
            rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
            assert rows[-1]["training_iteration"] == 2


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # one local Ray at a time (2 CPUs each)
def test_sweep_where_no_trial_reports_says_so_and_exits_1(tmp_path, data_root):
    """The only trial fails before its first validation: the report says that no trial reported
    the metric (no best.json) instead of failing on the missing column, and the driver exits 1."""
    space = tmp_path / "val.yaml"
    space.write_text("data.val_size: 60000\nmodel.T: 2\n")
    out = run_sweep(sweep_cmd(tmp_path, "none", space, data_root, "--num-samples", "1", "--scheduler", "fifo"),
                    timeout=240, returncode=1)
    assert "1 trials, 1 failed" in out and "no trial reported val/acc: no best trial" in out, out[-3000:]
    assert "Traceback" not in out.split("1 trials, 1 failed", 1)[1]
    assert not (tmp_path / "none" / "best.json").exists()


# ----------------------------------------------------------------------------- SLURM job script
def test_slurm_script_renders_a_ray_cluster_job(tmp_path, capsys, monkeypatch):
    """The job script starts a Ray head on the first node and workers on the others, waits for
    them, then runs the sweep on that cluster with the given arguments; it is valid bash."""
    import shutil

    from tune.slurm_submit import main as submit

    monkeypatch.setattr(shutil, "which", lambda name: None)  # no sinfo: the partition is not checked

    sweep = ["--config", "configs/fmnist_mlp_bptt.yaml", "--space", "tune/spaces/threshold_T.yaml",
             "--num-samples", "16", "--resources-per-trial", "cpu=4,gpu=1",
             "--model.network_args={'hidden': [64]}"]
    assert submit(["--nodes", "3", "--gpus-per-node", "2", "--cpus-per-node", "16",
                   "--partition", "gpu", "--job-name", "thr-T", "--setup", "source .venv/bin/activate",
                   "--sbatch-option=--mem=64G", "--dry-run", "--", *sweep]) == 0
    script = capsys.readouterr().out
    for line in ["#SBATCH --nodes=3", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=16",
                 "#SBATCH --gpus-per-node=2", "#SBATCH --partition=gpu", "#SBATCH --mem=64G",
                 "#SBATCH --job-name=thr-T", "source .venv/bin/activate",
                 "nodes=($(scontrol show hostnames \"$SLURM_JOB_NODELIST\"))",
                 'srun --nodes=1 --ntasks=1 -w "$head" \\', "ray start --head",
                 'for node in "${nodes[@]:1}"; do', 'ray start --address="$head_ip:$port"',
                 "--num-gpus=2 --block &", "export RAY_USAGE_STATS_ENABLED=0"]:
        assert line in script, line
    assert "{{" not in script
    run_line = next(line for line in script.splitlines()
                    if "-m tune.sweep" in line and not line.startswith("#"))
    import shlex

    argv = shlex.split(run_line.split("-m tune.sweep", 1)[1].split("||")[0])
    assert argv == ["--address", "auto", *sweep]  # quoting survives the shell
    path = tmp_path / "job.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    assert submit(["--dry-run", "--", "--address", "auto"]) == 2
    assert "error: the job connects the sweep to its own cluster: leave out --address" in capsys.readouterr().err


@pytest.mark.parametrize("args, expected", [
    (["--nodes", "0"], "--nodes must be a positive integer, got 0"),
    (["--time", "2h"], "--time '2h' is not a SLURM time limit"),
    (["--port", "0"], "--port 0 (valid: 1 to 65535)"),
    (["--workdir", "nowhere"], "--workdir 'nowhere' does not exist"),
    (["--", "--config", "configs/fmnist_mlp_bptt.yaml", "--space", "EMPTY"], "an empty search space"),
    (["--", "--config", "configs/fmnist_mlp_bptt.yaml", "--space", "tune/spaces/threshold_T.yaml",
      "--model.T=abc"], "model.T: expected an integer, got 'abc'"),
    (["--", "--config", "configs/fmnist_mlp_bptt.yaml", "--space", "tune/spaces/threshold_T.yaml",
      "--num-samples", "0"], "--num-samples 0 (valid: an integer >= 1)"),
])
def test_slurm_sweep_job_input_is_checked_like_the_sweep(args, expected, tmp_path, capsys, monkeypatch):
    import ray

    from tune.slurm_submit import main as submit

    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    monkeypatch.chdir(ROOT)
    argv = ["--dry-run", "--log-dir", str(tmp_path / "logs"), *[str(empty) if a == "EMPTY" else a for a in args]]
    if "--" not in argv:
        argv += ["--", "--config", "configs/fmnist_mlp_bptt.yaml", "--space", "tune/spaces/threshold_T.yaml"]
    assert submit(argv) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("error: ") and out.err.count("\n") == 1 and expected in out.err, out.err
    assert not ray.is_initialized() and sorted(p.name for p in tmp_path.iterdir()) == ["empty.yaml"]


# ----------------------------------------------------------------------------- bad input (no Ray)
@pytest.mark.parametrize("space, args, expected", [
    ("", [], "an empty search space (valid: a mapping of dotted config keys"),
    ("model.neuron.thresh: {uniform: [0.5, 2.0]}", [], "Option 'thresh' is not accepted"),
    ("model.T: {choice: [abc]}", [], "model.T: expected an integer, got 'abc'"),
    # every value of a choice / grid and both bounds of a range, built like a trial's model
    ("model.T: {choice: [2, 4, x]}", [], "fails a trial with its value model.T='x' (the config, the options "
                                         "after -- and the space together): model.T: expected an integer"),
    ("model.T: {choice: [0]}", [], "model.T must be a positive integer, got 0"),
    ("model.T: {grid: [2, -1]}", [], "its value model.T=-1 (the config"),
    ("model.neuron.leak: {uniform: [0.5, 1.5]}", [], "its value model.neuron.leak=1.5 (the config"),
    ("model.T: {randint: [1, 3]}\nmodel.network_args: {choice: [{hidden: [8]}, {hidden: 8}]}", [],
     "model.network_args.hidden: expected a list of integers, got 8"),
    ("model.T: {choice: [2]}\nmodel.T: {choice: [4]}", [], "line 2: key 'model.T' given twice (first at line 1"),
    ("model.lr: {uniform: [1]}", [], "space key 'model.lr': {'uniform': [1]} is not a valid distribution"),
    ("model.T: {choice: [2]}", ["--num-samples", "0"], "--num-samples 0 (valid: an integer >= 1)"),
    ("model.T: {choice: [2]}", ["--config", "configs/nope.yaml"], "--config 'configs/nope.yaml' does not exist"),
    ("model.T: {choice: [2]}", ["--config", ""], "--config is required"),
    ("model.T: {choice: [2]}", ["--metric", "val/acc5"], "--metric 'val/acc5' is not reported by the trials "
                                                         "(valid: val/acc, val/loss, train/loss)"),
    ("model.T: {choice: [2]}", ["--", "--model.T=abc"], "model.T: expected an integer, got 'abc'"),
    ("model.T: {choice: [2]}", ["--num-samples", "x"], "--num-samples: invalid int value: 'x'"),
])
def test_bad_sweep_input_is_one_line_before_ray_starts(space, args, expected, tmp_path, capsys):
    import ray

    from tune.sweep import main

    f = tmp_path / "space.yaml"
    f.write_text(space)
    storage = tmp_path / "tune"
    argv = ["--config", str(ROOT / "configs" / "fmnist_mlp_bptt.yaml"), "--space", str(f), "--name", "bad", "--storage-path", str(storage)]
    assert main([*argv, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert not ray.is_initialized() and not storage.exists()
