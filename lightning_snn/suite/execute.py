"""One run of a suite: the ordinary ``fit`` (+ test of the final weights) of its config, in its own
directory, resumable and never trained twice.

Layout of ``<root>/<suite>/<row>/seed<k>/``:
``result.json`` (written atomically at the end: the run is done), ``failed.json`` (the error's last
line), ``run.lock`` (held while training), ``checkpoints/`` (``last.ckpt`` to resume from),
``logs/attempt<n>/`` (each start's ``metrics.csv``, ``config.yaml`` and spike report),
``attempts.jsonl`` (wall time of each start) and, for a row with ``timesteps``, ``timesteps/``
(the final weights evaluated at each T: ``timesteps.csv`` / ``.png``, also in the result).
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import resource
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from typing import TYPE_CHECKING

from lightning_snn.atomic import write_json
from lightning_snn.errors import one_line
from lightning_snn.suite.spec import Options, RunSpec

if TYPE_CHECKING:  # torch and Lightning load where a run trains: `suite status` and `report`
    import pytorch_lightning as pl  # read result files without them

RESULT, FAILED, LOCK, ATTEMPTS = "result.json", "failed.json", "run.lock", "attempts.jsonl"
BUSY_EXIT = 3  # exit status of `execute` when another launch holds the run's lock
SHORTENING_KEYS = ("max_epochs", "max_steps", "max_time", "limit_train_batches", "limit_val_batches",
                   "limit_test_batches")


def read_result(directory: Path, row: str, seed: int) -> dict[str, Any]:
    """The ``result.json`` of run ``row`` / ``seed`` in ``directory``, checked: the folder a result
    sits in is its identity, so a file that is not a JSON object with a numeric (or null) ``value``,
    or whose ``row`` / ``seed`` contradict its folder (hand-edited, or copied from another run), is a
    ``SuiteError`` naming the file; the returned ``row`` / ``seed`` are the folder's."""
    from lightning_snn.suite.spec import SuiteError

    path = Path(directory) / RESULT
    fix = f"(valid: the file as the run wrote it; delete {path} and run `suite run` again to retrain the run)"
    try:
        res = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SuiteError(f"{path}: not a readable result file: {one_line(e)} {fix}") from None
    if not isinstance(res, dict):
        raise SuiteError(f"{path}: not a result (a JSON {type(res).__name__}, not an object) {fix}")
    for key, mine in (("row", row), ("seed", seed)):
        if key in res and res[key] != mine:
            raise SuiteError(f"{path}: its {key} field {res[key]!r} contradicts its folder ({key} {mine!r}) {fix}")
    v = res.get("value")
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
        raise SuiteError(f"{path}: value {v!r} is not a number {fix}")
    return {**res, "row": row, "seed": seed}


def global_rank() -> int:
    """This process's rank before Lightning sets up (SLURM task, torchrun or Lightning's children)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var):
            return int(os.environ[var])
    return 0


@contextmanager
def run_lock(directory: Path) -> Iterator[bool]:
    """Hold ``run.lock`` (an OS lock, released when the process dies); yields whether it was free."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        f.seek(0), f.truncate(), f.write(f"{platform.node()} {os.getpid()}\n"), f.flush()
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def is_locked(directory: Path) -> bool:
    """Whether another process is training this run now."""
    path = directory / LOCK
    if not path.is_file():
        return False
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def resume_checkpoint(directory: Path) -> Path | None:
    """The newest of the requeue checkpoint (``hpc_ckpt_*.ckpt``) and ``checkpoints/last.ckpt``."""
    found = [*directory.glob("hpc_ckpt_*.ckpt"), *(directory / "checkpoints").glob("last.ckpt")]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def fit_args(run: RunSpec, opts: Options, attempt: int, ckpt: Path | None = None) -> list[str]:
    """The ``fit`` command line of ``run`` (its config, overrides, seed, directory, then ``opts.extra``)."""
    d = run.directory(opts.root).resolve()
    loggers: list[dict[str, Any]] = [{"class_path": "pytorch_lightning.loggers.CSVLogger",
                                      "init_args": {"save_dir": str(d), "name": "logs", "version": f"attempt{attempt}"}}]
    if opts.wandb_project:
        loggers.append({"class_path": "pytorch_lightning.loggers.WandbLogger", "init_args": {
            "project": opts.wandb_project, "group": f"{run.suite}/{run.row.name}", "job_type": "suite-run",
            "name": f"{run.suite}/{run.key}", "tags": [run.suite, run.row.name], "save_dir": str(d)}})
    args = ["fit", "--config", str(run.row.config), *run.row.overrides, f"--seed_everything={run.seed}",
            f"--trainer.default_root_dir={d}", f"--checkpoint.dirpath={d / 'checkpoints'}",
            f"--trainer.logger={json.dumps(loggers)}", "--trainer.enable_progress_bar=false",
            "--trainer.callbacks+=lightning_snn.suite.callbacks.RunStats",
            "--trainer.callbacks+=lightning_snn.suite.callbacks.SuiteEnergyReport",
            *opts.extra, "--test_after_fit=last"]
    if run.row.init_from:  # the final weights of the source row's run of the same seed
        args.append(f"--init_from={source_checkpoint(run, opts)}")
    return args + ([f"--ckpt_path={ckpt}"] if ckpt else [])


def source_directory(run: RunSpec, opts: Options) -> Path:
    """The directory of the run that ``run`` starts from (``init_from``)."""
    return (Path(opts.root) / run.suite / str(run.row.init_from) / f"seed{run.seed}").resolve()


def source_checkpoint(run: RunSpec, opts: Options) -> Path:
    """The final weights of the source run: its ``checkpoints/last.ckpt``."""
    return source_directory(run, opts) / "checkpoints" / "last.ckpt"


def source_problem(run: RunSpec, opts: Options) -> str | None:
    """Why ``run`` cannot start from its source run yet (``None``: it can, or has no source)."""
    if not run.row.init_from:
        return None
    src = source_directory(run, opts)
    key = f"{run.row.init_from}/seed{run.seed}"
    if (src / FAILED).is_file():
        return f"source run {key} failed ({json.loads((src / FAILED).read_text()).get('error', '?')})"
    if not (src / RESULT).is_file():
        return f"source run {key} has not finished"
    if not source_checkpoint(run, opts).is_file():
        return f"source run {key} has no checkpoints/last.ckpt"
    return None


def read_metrics(directory: Path) -> "Any":
    """Every start's ``metrics.csv`` of a run, in order, as one pandas frame (empty if none)."""
    import pandas as pd

    files = sorted((directory / "logs").glob("attempt*/metrics.csv"), key=lambda p: int(p.parent.name[7:]))
    frames = [pd.read_csv(f).assign(attempt=int(f.parent.name[7:])) for f in files if f.stat().st_size]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def curve(metrics: Any, key: str) -> dict[int, float]:
    """``key`` per epoch (the latest value logged for each epoch, over every start)."""
    if metrics.empty or key not in metrics:
        return {}
    rows = metrics.dropna(subset=[key])
    return {int(e): float(v) for e, v in zip(rows["epoch"], rows[key])}


def _device(trainer: pl.Trainer) -> tuple[str, int, float, str]:
    """Device kind, count, peak memory (GB) and what that peak measures."""
    import torch

    count = trainer.num_devices * trainer.num_nodes
    root = trainer.strategy.root_device
    if root.type == "cuda":
        return torch.cuda.get_device_name(root), count, torch.cuda.max_memory_allocated(root) / 2**30, "device"
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes
    return f"cpu ({platform.machine()})", count, rss_kb / 2**20, "host RSS"


def source_commit() -> str:
    """The commit of the checkout the package runs from (``+dirty`` with uncommitted changes to
    tracked files), or the installed version when it is not a git checkout: what a result was made with."""
    import subprocess

    from importlib.metadata import PackageNotFoundError, version

    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return f"lightning-snn {version('lightning-snn')}"
    except PackageNotFoundError:
        return "unknown"


def run_commits(directory: Path) -> str:
    """The commit(s) a run's attempts started from, in order (", "-separated when a resumed run
    spans several); the checkout's commit now for a run whose attempts did not record one."""
    commits = list(dict.fromkeys(a["commit"] for a in _attempts(directory) if a.get("commit")))
    return ", ".join(commits) if commits else source_commit()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _attempts(directory: Path) -> list[dict[str, Any]]:
    path = directory / ATTEMPTS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def next_attempt(directory: Path) -> int:
    """The number of this start: one more than any earlier start's (logged or with a log folder)."""
    seen = [a["attempt"] for a in _attempts(directory)]
    seen += [int(p.name[7:]) for p in (directory / "logs").glob("attempt*") if p.name[7:].isdigit()]
    return max(seen, default=-1) + 1


def wall_seconds(directory: Path) -> float:
    """Wall time of every start: its logged duration, or for a start that was killed, the time
    from its start to the last file it wrote."""
    starts, ends = {}, {}
    for a in _attempts(directory):
        (ends if "wall_s" in a else starts)[a["attempt"]] = a
    total = 0.0
    for n, a in starts.items():
        if n in ends:
            total += ends[n]["wall_s"]
            continue
        written = [p.stat().st_mtime for p in (directory / "logs" / f"attempt{n}").rglob("*") if p.is_file()]
        total += max(0.0, max(written, default=a["start"]) - a["start"])
    return total


def row_trainer_limits(run: RunSpec, directory: Path) -> dict[str, Any]:
    """The trainer limits the row itself asks for (its config and overrides, no launch options)."""
    from lightning_snn.cli_check import check_args

    cfg = check_args(fit_args(run, Options(root=directory.parents[2]), 0))["fit"]
    return {k: cfg.trainer.get(k) for k in SHORTENING_KEYS}


def collect_result(run: RunSpec, cli: Any, wall_s: float, directory: Path) -> dict[str, Any]:
    """The run's result: the row's metric under its protocol, both protocols' values, cost, energy."""
    import torch

    from lightning_snn.energy import SpikeEnergyReport
    from lightning_snn.suite.callbacks import RunStats

    trainer: pl.Trainer = cli.trainer
    cfg = cli.config["fit"]
    metrics = read_metrics(directory)
    ref = run.row.reference
    acc = ref.metric.endswith("acc")
    scale = 100.0 if acc else 1.0  # suite files give accuracies in percent
    test = curve(metrics, ref.metric)
    val = curve(metrics, ref.metric.replace("test/", "val/", 1))
    final = test[max(test)] * scale if test else None
    best_epoch = (max(val, key=val.get) if acc else min(val, key=val.get)) if val else None
    best = val[best_epoch] * scale if best_epoch is not None else None
    val_is_test = int(cfg.data.val_size) == 0
    value = final if ref.protocol == "final" else (best if val_is_test else None)
    from lightning_snn.suite.memory import METRICS, StepCost

    step_cost = next((c for c in trainer.callbacks if isinstance(c, StepCost)), None)
    cost = step_cost.result() if step_cost else {}
    if ref.metric in METRICS:  # a measurement row (the memory suite): the step's memory or time
        value = cost.get(ref.metric)
    stats = next((c for c in trainer.callbacks if isinstance(c, RunStats)), None)
    energy = next((c for c in trainer.callbacks if isinstance(c, SpikeEnergyReport)), None)
    totals = energy.totals if energy else {}
    kind, count, peak, peak_kind = _device(trainer)
    ran = {k: cfg.trainer.get(k) for k in SHORTENING_KEYS}
    planned = row_trainer_limits(run, directory)
    epochs = int(trainer.current_epoch)
    return {
        "suite": run.suite, "row": run.row.name, "seed": run.seed, "metric": ref.metric,
        "protocol": ref.protocol, "value": value, "final": final, "best": best,
        "best_epoch": best_epoch, "best_is_test_split": val_is_test, "epochs": epochs,
        "trainer": ran, "planned": planned, "shortened": ran != planned, "wall_s": wall_s, "device": kind, "devices": count,
        "device_hours": wall_s * count / 3600.0, "peak_memory_gb": peak, "peak_memory_kind": peak_kind,
        "images_per_s": stats.samples / stats.seconds if stats and stats.seconds else None,
        "loop_images_per_s": (stats.samples / stats.steps * len(stats.loop_seconds) / sum(stats.loop_seconds)
                              if stats and stats.loop_seconds else None),
        "threads": torch.get_num_threads(),
        "sops_per_sample": totals.get("sops"),
        "energy_uj_per_sample": totals["snn_energy_pj"] * 1e-6 if "snn_energy_pj" in totals else None,
        "commit": run_commits(directory), "cpu": _cpu_model(), "cpu_threads": torch.get_num_threads(),
        **cost,
        "args": sys.argv[1:], "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def execute(run: RunSpec, opts: Options) -> str:
    """Train ``run`` unless it is done, failed (without ``retry_failed``) or running elsewhere.

    Returns ``done`` (already finished), ``finished``, ``failed`` (already failed, not retried) or
    ``busy`` (another process holds the run's lock); a training error is recorded in
    ``failed.json`` and raised.
    """
    from lightning_snn.cli import _NO_EXIT, main

    d = run.directory(opts.root)
    if (d / RESULT).is_file():
        return "done"
    if (d / FAILED).is_file() and not opts.retry_failed:
        return "failed"
    if global_rank() != 0:  # a DDP rank > 0: rank 0 holds the lock and writes the result
        cli = main(fit_args(run, opts, next_attempt(d), resume_checkpoint(d)), parser_kwargs=_NO_EXIT,
                   save_config_kwargs={"overwrite": True})
        time_steps_curve(run, cli, d)  # collective: every rank evaluates its share
        return "finished"
    with run_lock(d) as free:
        if not free:
            return "busy"
        if (d / RESULT).is_file():  # finished by another launch while we waited
            return "done"
        (d / FAILED).unlink(missing_ok=True)
        attempt, start, ckpt = next_attempt(d), time.time(), resume_checkpoint(d)
        problem = None if ckpt else source_problem(run, opts)  # a resumed run has its own weights
        if problem:
            write_json(d / FAILED, {"error": f"not started: {problem}", "type": "SourceRunError", "attempt": attempt})
            return "failed"
        _log(d, {"attempt": attempt, "start": start, "resumed_from": str(ckpt) if ckpt else None,
                 "commit": source_commit()})  # the code this attempt runs, read before it trains
        try:
            cli = main(fit_args(run, opts, attempt, ckpt), parser_kwargs=_NO_EXIT, save_config_kwargs={"overwrite": True})
            _finish_wandb(opts, 0)
        except BaseException as e:
            _finish_wandb(opts, 1)
            _log(d, {"attempt": attempt, "wall_s": time.time() - start, "outcome": type(e).__name__})
            if isinstance(e, Exception) and not _interrupted(e):
                write_json(d / FAILED, {"error": f"{type(e).__name__}: {one_line(e)}", "type": type(e).__name__,
                                               "attempt": attempt, "traceback": traceback.format_exc()})
            raise
        _log(d, {"attempt": attempt, "wall_s": time.time() - start, "outcome": "finished"})
        result = collect_result(run, cli, wall_seconds(d), d)
        result.update(time_steps_curve(run, cli, d))
        write_json(d / RESULT, result)
        return "finished"


def time_steps_curve(run: RunSpec, cli: Any, directory: Path) -> dict[str, Any]:
    """The row's ``timesteps``: its final weights evaluated at each T into ``<run>/timesteps/``,
    returned for the result (``timesteps``: one entry per T; ``timesteps_error``: why it failed, the
    trained run still being done). The run's loggers and energy report stay out of it, so the
    run's own metrics are not overwritten."""
    steps = run.row.timesteps
    if steps is None:
        return {}
    from dataclasses import asdict

    from lightning_snn.energy import SpikeEnergyReport
    from lightning_snn.timesteps import run_curve

    trainer: pl.Trainer = cli.trainer
    loggers, callbacks = trainer.loggers, list(trainer.callbacks)
    trainer.loggers = []
    trainer.callbacks[:] = [c for c in callbacks if not isinstance(c, SpikeEnergyReport)]
    try:
        rows = run_curve(trainer, cli.model, cli.datamodule, "final weights", steps.T, int(cli.model.hparams.T),
                         directory / "timesteps", reference=dict(steps.reference) or None)
    except Exception as e:  # noqa: BLE001 - the training result stands without its curve
        print(f"warning: no time-steps curve for {run.key}: {one_line(e)}", file=sys.stderr)
        return {"timesteps_error": f"{type(e).__name__}: {one_line(e)}"}
    finally:
        trainer.loggers = loggers
        trainer.callbacks[:] = callbacks
    return {"timesteps": [asdict(r) for r in rows]}


def _finish_wandb(opts: Options, code: int) -> None:
    """Close the run's W&B run here, so that its files are complete when the run's result is."""
    if opts.wandb_project:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=code)


def _interrupted(e: BaseException) -> bool:
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from lightning_snn.checkpoints import TrainingInterrupted

    return isinstance(e, (TrainingInterrupted, SIGTERMException, KeyboardInterrupt))


def _log(d: Path, entry: dict[str, Any]) -> None:
    with open(d / ATTEMPTS, "a") as f:
        f.write(json.dumps(entry) + "\n")


def __getattr__(name: str) -> Any:
    """The callbacks' former place (``lightning_snn.suite.execute.RunStats`` in the ``config.yaml``
    of runs started before they moved): resumed runs still resolve them."""
    if name in ("RunStats", "SuiteEnergyReport"):
        from lightning_snn.suite import callbacks

        return getattr(callbacks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
