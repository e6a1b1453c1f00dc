"""How a suite's runs are started: here (one after another, or N at a time), as one SLURM job array,
or as tasks on a Ray cluster. Every launcher starts the same thing for a run: ``python -m
lightning_snn.suite execute`` (:func:`lightning_snn.suite.execute.execute`), which trains it
unless it is done, failed or running elsewhere."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_snn.suite.execute import BUSY_EXIT, execute
from lightning_snn.suite.spec import Options, RunSpec, Suite


def execute_command(suite: Suite, run: RunSpec, opts: Options, python: str = sys.executable) -> list[str]:
    """The command that trains one run (what a local child, a SLURM task or a Ray task runs)."""
    cmd = [python, "-m", "lightning_snn.suite", "execute", str(suite.path), "--row", run.row.name,
           "--seed", str(run.seed), "--root", str(Path(opts.root).resolve())]
    cmd += ["--retry-failed"] if opts.retry_failed else []
    cmd += ["--wandb-project", opts.wandb_project] if opts.wandb_project else []
    return cmd + (["--", *opts.extra] if opts.extra else [])


def outcome(run: RunSpec, opts: Options, code: int | None = None) -> tuple[str, str]:
    """``(state, one line)`` on a run after its launch: its value, its error, or why it did not train."""
    from lightning_snn.suite.plan import run_state

    state, detail = run_state(run, opts)
    if state in ("done", "failed"):
        return state, f"{run.key}: {state}: {detail}"
    if code == BUSY_EXIT:
        return state, f"{run.key}: running in another launch (its lock is held); not started here"
    return state, f"{run.key}: stopped (exit {code}); `suite run` again resumes it from its checkpoint"


def child_cpu_env(parallel: int) -> dict[str, str]:
    """The environment of ``parallel`` concurrent children: each may use its share of this
    process's CPUs (``LSNN_CPUS``, read by ``lightning_snn.threads``); one child has them all."""
    import os

    from lightning_snn.threads import CPUS_ENV, intra_op_threads

    env = dict(os.environ)
    if parallel > 1:
        cpus, _ = intra_op_threads(processes=1)
        env[CPUS_ENV] = str(max(1, cpus // parallel))
    return env


def run_local(suite: Suite, runs: list[RunSpec], opts: Options, parallel: int = 1) -> int:
    """Each run in a child process, ``parallel`` at a time, a run that starts from another
    (``init_from``) after that one ended; its output goes to ``<run dir>/run.log``.
    Returns 0 when every run is done, else 1."""
    pending = list(runs)
    active: list[tuple[RunSpec, subprocess.Popen, Any]] = []
    env = child_cpu_env(parallel)
    ok = True

    def ready(run: RunSpec) -> bool:  # its source run (init_from), if launched here, has ended
        src = run.source(suite)
        return src is None or all(r.key != src.key for r in pending + [a[0] for a in active])

    while pending or active:
        while len(active) < parallel and any(ready(r) for r in pending):
            run = next(r for r in pending if ready(r))
            pending.remove(run)
            d = run.directory(opts.root)
            d.mkdir(parents=True, exist_ok=True)
            log = open(d / "run.log", "a")
            print(f"{run.key}: started (log {d / 'run.log'})", flush=True)
            active.append((run, subprocess.Popen(execute_command(suite, run, opts), stdout=log,
                                                  stderr=subprocess.STDOUT, env=env), log))
        time.sleep(0.2)
        for item in [a for a in active if a[1].poll() is not None]:
            run, proc, log = item
            log.close()
            active.remove(item)
            state, line = outcome(run, opts, proc.returncode)
            ok &= state == "done"
            print(line, flush=True)
    return 0 if ok else 1


@dataclass
class SlurmOptions:
    """Resources of every array task (one run per task)."""

    partition: str
    time: str
    gpus_per_run: int = 1
    cpus_per_task: int = 1
    accelerator: str = "gpu"
    max_concurrent: int | None = None
    signal_lead: int = 90
    extra_sbatch: list[str] = field(default_factory=list)


def slurm_script(suite: Suite, runs: list[RunSpec], opts: Options, slurm: SlurmOptions) -> str:
    """The job-array script: task ``i`` runs ``runs[i]``; requeued on preemption (USR1 -> checkpoint
    -> ``scontrol requeue``), after which the task resumes from the run's checkpoint."""
    from lightning_snn.slurm.submit import TEMPLATE_DIR, render_template

    root = Path(opts.root).resolve()
    array = f"0-{len(runs) - 1}" + (f"%{slurm.max_concurrent}" if slurm.max_concurrent else "")
    commands = [shlex.join(execute_command(suite, r, opts)) for r in runs]
    return render_template(TEMPLATE_DIR, "suite_array.sbatch", {
        "job_name": f"suite-{suite.name}", "partition": slurm.partition, "time": slurm.time,
        "array": array, "tasks": slurm.gpus_per_run, "cpus_per_task": slurm.cpus_per_task,
        "accelerator": slurm.accelerator, "signal_lead": slurm.signal_lead, "extra_sbatch": slurm.extra_sbatch,
        "log_dir": str(root / suite.name / "slurm"), "workdir": str(Path.cwd()), "commands": commands,
        "keys": [r.key for r in runs],
    })


def run_slurm(suite: Suite, runs: list[RunSpec], opts: Options, slurm: SlurmOptions, dry_run: bool) -> str:
    """Print (``dry_run``) or submit the array; returns the job id ('' for a dry run). Runs that
    start from another row's run (``init_from``) go in one array per stage, each submitted with
    ``--dependency=afterany:<previous stage's array>`` (afterany: a failed source is reported by its
    dependants, which then do not start); the id returned is the last stage's."""
    from dataclasses import replace

    from lightning_snn.slurm.submit import checked_partition, sbatch

    slurm.partition = checked_partition(slurm.partition, dry_run=dry_run)
    stages: dict[int, list[RunSpec]] = {}
    for r in runs:
        stages.setdefault(suite.stage(r.row.name), []).append(r)
    job, previous = "", ""
    for n, (stage, members) in enumerate(sorted(stages.items())):
        extra = list(slurm.extra_sbatch) + ([f"--dependency=afterany:{previous or '<previous stage job id>'}"]
                                            if n else [])
        script = slurm_script(suite, members, opts, replace(slurm, extra_sbatch=extra))
        if dry_run:
            if len(stages) > 1:
                sys.stdout.write(f"# ---- stage {n + 1} of {len(stages)}: {', '.join(r.key for r in members)}\n")
            sys.stdout.write(script)
            continue
        dest = Path(opts.root) / suite.name / "slurm"
        dest.mkdir(parents=True, exist_ok=True)
        path = dest / f"{time.strftime('%Y%m%d-%H%M%S')}-stage{n + 1}.sbatch"
        path.write_text(script)
        job = previous = sbatch(path)
        print(f"submitted job array {job}: {len(members)} runs of suite {suite.name}"
              + (f" (stage {n + 1}, after the previous stage)" if n else "") + f", script {path}", flush=True)
    return job


def run_ray(suite: Suite, runs: list[RunSpec], opts: Options, resources: dict[str, float],
            address: str | None, num_cpus: int | None, max_failures: int = 0) -> int:
    """One Tune trial per run (a grid over the runs), on a local Ray or the cluster at ``address``.
    Tune retries a failing run ``max_failures`` times and reports it failed without stopping the
    others. Returns 0 when every run is done, else 1."""
    import ray
    from ray import tune

    from lightning_snn_tune.sweep import start_ray

    def trainable(config: dict[str, Any]) -> None:
        import os

        os.chdir(config["cwd"])  # relative paths in configs mean what they mean to the launcher
        run = next(r for r in runs if r.key == config["run"])
        state = execute(run, opts)
        if state == "failed":
            raise RuntimeError(f"{run.key} failed earlier (use --retry-failed)")
        tune.report({"state": state})

    start_ray(address, num_cpus)
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space={"run": tune.grid_search([r.key for r in runs]), "cwd": str(Path.cwd())},
        tune_config=tune.TuneConfig(reuse_actors=False),
        run_config=tune.RunConfig(name=f"suite-{suite.name}", storage_path=str(Path(opts.root).resolve() / "_ray"),
                                  failure_config=tune.FailureConfig(max_failures=max_failures), verbose=0),
    )
    tuner.fit()
    ray.shutdown()
    ok = True
    for run in runs:
        state, line = outcome(run, opts)
        ok &= state == "done"
        print(line, flush=True)
    return 0 if ok else 1
