"""torch's intra-op threads follow the CPUs a training process may use."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch

from procs import CONFIGS, ROOT, child_env
from lightning_snn.suite.launchers import child_cpu_env
from lightning_snn.threads import CPUS_ENV, THREADS_ENV, intra_op_threads

LIMIT_VARS = ("SLURM_CPUS_PER_TASK", CPUS_ENV, "OMP_NUM_THREADS", THREADS_ENV)


@pytest.fixture
def no_limits(monkeypatch):
    for var in LIMIT_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_a_process_pinned_to_one_cpu_uses_one_thread():
    env = {k: v for k, v in child_env().items() if k not in LIMIT_VARS}
    code = "from lightning_snn.threads import intra_op_threads; print(*intra_op_threads(), sep='|')"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "1|CPU affinity: 1 CPUs"


def test_the_smallest_limit_wins_and_the_override_beats_them_all(no_limits):
    cpus = len(os.sched_getaffinity(0))
    assert intra_op_threads() == (cpus, f"CPU affinity: {cpus} CPUs")
    no_limits.setenv("SLURM_CPUS_PER_TASK", "1")
    assert intra_op_threads() == (1, "SLURM_CPUS_PER_TASK: 1 CPUs")
    no_limits.setenv("SLURM_CPUS_PER_TASK", str(cpus + 8))  # more than the affinity allows
    assert intra_op_threads()[0] == cpus
    no_limits.setenv(THREADS_ENV, "3")
    assert intra_op_threads() == (3, THREADS_ENV)
    assert intra_op_threads(threads=2) == (2, "--threads")
    no_limits.delenv(THREADS_ENV)
    no_limits.setenv(CPUS_ENV, "1")
    assert intra_op_threads(processes=4) == (1, f"{CPUS_ENV}: 1 CPUs shared by 4 processes")


def test_ddp_ranks_on_one_machine_share_its_cpus(no_limits):
    no_limits.setenv("OMP_NUM_THREADS", "8")
    cpus = min(8, len(os.sched_getaffinity(0)))
    assert intra_op_threads(processes=2)[0] == max(1, cpus // 2)


@pytest.mark.parametrize("var, value", [(THREADS_ENV, "0"), ("SLURM_CPUS_PER_TASK", "two"), (CPUS_ENV, "-1")])
def test_a_bad_thread_count_names_the_variable(no_limits, var, value):
    no_limits.setenv(var, value)
    with pytest.raises(ValueError, match=f"{var}='{value}' is not a number of threads .valid: an integer >= 1"):
        intra_op_threads()
    with pytest.raises(ValueError, match=r"--threads 0 \(valid: an integer >= 1"):
        intra_op_threads(threads=0)


def test_suite_parallel_children_get_their_share(no_limits):
    cpus = len(os.sched_getaffinity(0))
    assert child_cpu_env(2)[CPUS_ENV] == str(max(1, cpus // 2))
    assert CPUS_ENV not in child_cpu_env(1)


def test_the_cli_sets_the_threads_and_says_so(no_limits, data_root, caplog):
    from lightning_snn.cli import main

    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO):
            main(["--config", str(CONFIGS / "fmnist_mlp_bptt.yaml"), f"--data.root={data_root}",
                  "--trainer.accelerator=cpu", "--threads=1"], run=False)
        assert torch.get_num_threads() == 1
        assert "torch intra-op threads: 1 (--threads; override with --threads N or LSNN_NUM_THREADS=N)" \
            in caplog.text
    finally:
        torch.set_num_threads(before)


def test_dry_run_step_time_is_a_median_after_warm_up_with_threads_and_load(tmp_path, data_root):
    """The plan's measurement: 12 steps timed after 3 warm-up ones (more while they span less than
    the asked seconds), as the run's threads, with the machine's load; each step's wall time bounds
    its CPU time per thread from above."""
    import yaml

    from lightning_snn.suite.plan import measure_step_seconds
    from lightning_snn.suite.spec import Options, load_suite

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"description": "t", "seeds": [0], "rows": [{
        "name": "mlp", "config": str(CONFIGS / "fmnist_mlp_bptt.yaml"), "overrides": [],
        "reference": {"metric": "test/acc", "value": 80.0, "protocol": "final", "source": "test"}}]}))
    extra = [f"--data.root={data_root}", "--data.num_workers=0", "--data.batch_size=16",
             "--model.network_args={'hidden': [16]}", "--trainer.accelerator=cpu", "--threads=1"]
    before = torch.get_num_threads()
    row, opts = load_suite(path).rows[0], Options(root=tmp_path / "runs", extra=extra)
    try:
        t = measure_step_seconds(row, opts, 0, min_seconds=0.0)
        # steps of milliseconds: timed on until they span the asked seconds (or the cap)
        longer = measure_step_seconds(row, opts, 0, min_seconds=0.5, max_steps=300)
    finally:
        torch.set_num_threads(before)
    assert longer.span >= 0.5 or longer.steps == 300, (longer.span, longer.steps)
    assert longer.steps >= 12 and longer.span >= longer.seconds * longer.steps / 2  # a median, not a mean
    assert t.steps == 12 and t.threads == 1 and t.cpus == len(os.sched_getaffinity(0))
    assert 0 < t.cpu_seconds and 0 < t.seconds and all(x >= 0 for x in t.load)
    assert t.cpu_seconds <= t.seconds * 1.5 + 0.01  # one thread (plus Python's own): CPU <= wall
    assert "median of 12 steps, 1 threads, CPU time" in t.note() and "load" in t.note()
