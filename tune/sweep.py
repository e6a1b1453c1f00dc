"""Sweep launcher: ``python -m tune.sweep --config configs/<x>.yaml --space tune/spaces/<y>.yaml``.

Runs ``--num-samples`` trials of the ordinary fit (see :mod:`tune.trial`) on a local Ray, or on a
running cluster with ``--address auto`` (see ``tune/slurm/``). Trials that raise are reported as
failed and the sweep goes on; the driver then exits 1 (also when no trial reported the metric), 0
only when every trial finished. The launcher's arguments are saved in the experiment directory, so a
driver that died is continued with ``--resume --name <name> [--storage-path <dir>]``: finished trials
are kept, unfinished ones continue from their last checkpoint.

Options after ``--`` (or any ``--model.*``, ``--data.*``, ``--trainer.*`` option) are passed to every
trial's command line, e.g. ``-- --trainer.limit_train_batches=50 --data.num_workers=0``.

Everything is checked before Ray starts and before anything is written: the launcher's options, the
space file (strict YAML, not empty, known distributions), and a trial's whole command line (the
config, the options after ``--`` and every value of a ``choice`` / ``grid``, both bounds of a
continuous range) parsed by the training command line's own parser, with the model and data module
built from it. Bad input is one line on stderr and exit status 2 (``--debug`` or ``LIGHTNING_SNN_DEBUG=1``:
the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from lightning_snn.errors import OneLineArgumentParser, UsageError, run_main
from .space import load_space
from .trial import TrialSpec, make_trainable, trial_args

ARGS_FILE = "sweep_args.json"


def parse_resources(text: str) -> dict[str, float]:
    """``cpu=1,gpu=0.5`` -> ``{"cpu": 1.0, "gpu": 0.5}``."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if not value:
            raise argparse.ArgumentTypeError(f"resources: expected key=value, got {part!r}")
        out[key.strip()] = float(value)
        if not out[key.strip()] >= 0:
            raise argparse.ArgumentTypeError(f"resources: {part!r} is negative (valid: amounts >= 0)")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m tune.sweep", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="experiment config (YAML of python -m lightning_snn fit)")
    p.add_argument("--space", help="search space YAML (tune/spaces/*.yaml)")
    p.add_argument("--num-samples", type=int, default=4, help="trials (per grid point)")
    p.add_argument("--scheduler", choices=["asha", "fifo"], default="asha")
    p.add_argument("--search", choices=["random", "optuna"], default="random")
    p.add_argument("--resources-per-trial", type=parse_resources, default={"cpu": 1.0},
                   help="e.g. cpu=1 or cpu=4,gpu=1 (trial GPUs are Ray resources)")
    p.add_argument("--max-concurrent", type=int, default=0, help="0: as many as resources allow")
    p.add_argument("--metric", default="val/acc")
    p.add_argument("--mode", choices=["max", "min"], default="max")
    p.add_argument("--max-epochs", type=int, default=None, help="override trainer.max_epochs")
    p.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before a trial can stop")
    p.add_argument("--max-failures", type=int, default=0, help="retries of a failing trial")
    p.add_argument("--name", default=None, help="experiment name (default: sweep-<time>)")
    p.add_argument("--storage-path", default="logs/tune", help="experiment parent directory")
    p.add_argument("--resume", action="store_true",
                   help="continue the experiment --name under --storage-path after a killed driver")
    p.add_argument("--restart-errored", action="store_true",
                   help="with --resume: run failed trials again from scratch")
    p.add_argument("--wandb-project", default=None, help="log every trial to this W&B project")
    p.add_argument("--wandb-tags", nargs="*", default=[])
    p.add_argument("--address", default=None, help="Ray cluster address (auto: the running cluster)")
    p.add_argument("--num-cpus", type=int, default=None, help="local Ray only: CPUs it may use")
    p.add_argument("--seed", type=int, default=0, help="seed of the search algorithm")
    return p


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Launcher options vs options for every trial (after ``--`` or ``--model.``/``--data.``/...)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    trial_prefixes = ("--model.", "--data.", "--trainer.", "--seed_everything")
    own, trial = [], []
    for a in argv:
        (trial if a.startswith(trial_prefixes) else own).append(a)
    return own, trial


def make_scheduler(kind: str, max_epochs: int | None, grace: int) -> TrialScheduler:
    if kind == "fifo":
        return FIFOScheduler()
    # max_t past the last epoch: a trial that reaches the end finishes on its own (its loggers
    # close normally) instead of being stopped by the scheduler at its final report.
    return ASHAScheduler(time_attr="training_iteration", max_t=(max_epochs or 100) + 1,
                         grace_period=grace, reduction_factor=2)


def make_search(kind: str, metric: str, mode: str, seed: int, max_concurrent: int) -> Any:
    if kind == "random":
        return None  # Tune's basic variant generator samples the space
    try:
        from ray.tune.search.optuna import OptunaSearch
        import optuna  # noqa: F401
    except ImportError as exc:  # pragma: no cover - optuna is in requirements.txt
        raise UsageError(f"--search optuna needs the optuna package (pip install optuna): {exc} "
                         "(valid: --search random without it)")
    import optuna

    search = OptunaSearch(metric=metric, mode=mode, sampler=optuna.samplers.TPESampler(seed=seed))
    if max_concurrent:
        from ray.tune.search import ConcurrencyLimiter

        search = ConcurrencyLimiter(search, max_concurrent=max_concurrent)
    return search


def _spec(opts: argparse.Namespace, trial_overrides: list[str], name: str, exp_dir: Path) -> TrialSpec:
    return TrialSpec(
        config=str(Path(opts.config).resolve()), output_dir=str(exp_dir), overrides=trial_overrides, cwd=os.getcwd(),
        max_epochs=opts.max_epochs, sweep_name=name, wandb_project=opts.wandb_project,
        wandb_tags=list(opts.wandb_tags),
    )


def _at_least(name: str, value: int | None, low: int, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if value is None or value < low:
        raise UsageError(f"{name} {value} (valid: an integer >= {low})")


def space_values(domain: Any) -> list[Any]:
    """The values of a space entry the check builds: every value of ``choice`` / ``grid``, both
    bounds of a continuous range (``randint``'s upper bound is exclusive), or the constant."""
    from ray.tune.search.sample import Categorical, Float, Integer

    if isinstance(domain, dict) and "grid_search" in domain:
        return list(domain["grid_search"])
    if isinstance(domain, Categorical):
        return list(domain.categories)
    if isinstance(domain, Float):
        return [domain.lower, domain.upper]
    if isinstance(domain, Integer):
        return [domain.lower, domain.upper - 1]
    return [domain]


def check_space(spec: TrialSpec, space: dict[str, Any], space_file: str, exp_dir: Path) -> int:
    """Build a trial (parse its command line, build its model and data module) for every value of
    every space key: the first value of every key, then each other value of one key at a time
    (values of different keys are not combined). Returns the number of trials built."""
    from lightning_snn.cli_check import check_args

    values = {key: space_values(domain) for key, domain in space.items()}
    base = {key: vals[0] for key, vals in values.items()}
    configs = [(None, None, base)] + [(key, v, {**base, key: v}) for key, vals in values.items() for v in vals[1:]]
    for key, value, config in configs:
        try:
            check_args(trial_args(spec, config, str(exp_dir / "trials" / "check"), "check", "check"), build=True)
        except UsageError as e:
            what = f"its value {key}={value!r}" if key else f"its first values {base}"
            raise UsageError(f"the space {space_file} fails a trial with {what} (the config, the options "
                             f"after -- and the space together): {e}") from e
    return len(configs)


def validate(opts: argparse.Namespace, trial_overrides: list[str], name: str, exp_dir: Path
             ) -> tuple[TrialSpec, dict[str, Any]]:
    """Check every option and the trials' command lines before Ray starts; the spec and the space."""
    for flag, value in (("--config", opts.config), ("--space", opts.space)):
        if not value:
            raise UsageError(f"{flag} is required (valid: --config configs/<x>.yaml --space "
                             "tune/spaces/<y>.yaml, or --resume --name <name>)")
        if not Path(value).is_file():
            raise UsageError(f"{flag} {value!r} does not exist (valid: a YAML file)")
    _at_least("--num-samples", opts.num_samples, 1)
    _at_least("--max-epochs", opts.max_epochs, 1, none_ok=True)
    _at_least("--grace-period", opts.grace_period, 1)
    _at_least("--max-failures", opts.max_failures, 0)
    _at_least("--max-concurrent", opts.max_concurrent, 0)
    _at_least("--num-cpus", opts.num_cpus, 1, none_ok=True)
    if (exp_dir / ARGS_FILE).exists():
        raise UsageError(f"{exp_dir} holds a sweep already (valid: --resume it or pick another --name)")
    spec = _spec(opts, trial_overrides, name, exp_dir)
    if opts.metric not in spec.metrics:
        raise UsageError(f"--metric {opts.metric!r} is not reported by the trials (valid: {', '.join(spec.metrics)})")
    space = load_space(opts.space)
    check_space(spec, space, opts.space, exp_dir)
    return spec, space


def start_ray(address: str | None, num_cpus: int | None) -> None:
    """Connect to a cluster (``address``) or start a local Ray limited to ``num_cpus``."""
    if ray.is_initialized():
        return
    # Workers of a local Ray inherit this environment (PYTHONPATH, WANDB_MODE...); on a cluster
    # every node's `ray start` must see the same one (see tune/slurm/).
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    # Ray starts its worker processes at niceness 15; a trial is the training itself, so on a machine
    # that runs anything else it would get almost no CPU (a 30 s suite launch took 7 min beside two
    # busy processes). Workers at the driver's priority unless RAY_worker_niceness says otherwise.
    os.environ.setdefault("RAY_worker_niceness", "0")
    if address:
        ray.init(address=address, **kwargs)
    else:  # "local": a new Ray of its own, even where another one runs on this machine
        ray.init(address="local", num_cpus=num_cpus, **kwargs)


def check(argv: list[str]) -> None:
    """Everything :func:`run` checks before it starts Ray, without starting it or writing."""
    own, trial_overrides = split_args(argv)
    opts = build_parser().parse_args(own)
    if opts.resume:
        if not opts.name:
            raise UsageError("--resume needs --name (valid: the name of an experiment under --storage-path)")
        return
    name = opts.name or "check"
    validate(opts, trial_overrides, name, Path(opts.storage_path).resolve() / name)


def run(argv: list[str]) -> tuple[tune.ResultGrid, bool]:
    """Run (or resume) the sweep; its results and whether any trial reported the metric."""
    own, trial_overrides = split_args(argv)
    opts = build_parser().parse_args(own)
    storage = Path(opts.storage_path).resolve()
    if opts.resume:
        if not opts.name:
            raise UsageError("--resume needs --name (valid: the name of an experiment under --storage-path)")
        exp_dir = storage / opts.name
        saved_file = exp_dir / ARGS_FILE
        if not saved_file.is_file():
            raise UsageError(f"--resume: {saved_file} not found; nothing to resume under {exp_dir} "
                             f"(valid: an experiment name under {storage})")
        saved = json.loads(saved_file.read_text())
        spec = TrialSpec(**saved["spec"])
        start_ray(opts.address or saved.get("address"), opts.num_cpus or saved.get("num_cpus"))
        trainable = make_trainable(spec, saved["resources"])
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=opts.restart_errored)
        metric, mode = saved["metric"], saved["mode"]
    else:
        name = opts.name or time.strftime("sweep-%Y%m%d-%H%M%S")
        exp_dir = storage / name
        spec, space = validate(opts, trial_overrides, name, exp_dir)
        search = make_search(opts.search, opts.metric, opts.mode, opts.seed, opts.max_concurrent)
        exp_dir.mkdir(parents=True, exist_ok=True)
        (exp_dir / ARGS_FILE).write_text(json.dumps({
            "argv": argv, "spec": asdict(spec), "resources": opts.resources_per_trial,
            "metric": opts.metric, "mode": opts.mode, "address": opts.address,
            "num_cpus": opts.num_cpus,
        }, indent=2))
        start_ray(opts.address, opts.num_cpus)
        trainable = make_trainable(spec, opts.resources_per_trial)
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=opts.metric, mode=opts.mode, num_samples=opts.num_samples,
                scheduler=make_scheduler(opts.scheduler, opts.max_epochs, opts.grace_period),
                search_alg=search,
                max_concurrent_trials=opts.max_concurrent or None,
                reuse_actors=False,  # a fresh worker per trial: no state (W&B run, seeds) carried over
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=str(storage), verbose=1,
                failure_config=tune.FailureConfig(max_failures=opts.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
        metric, mode = opts.metric, opts.mode
    results = tuner.fit()
    return results, report(results, metric, mode, exp_dir)


def report(results: tune.ResultGrid, metric: str, mode: str, exp_dir: Path) -> bool:
    """Print every trial's state and the best trial's config and metric, write ``best.json``;
    ``False`` (and say so) when no trial reported ``metric``."""
    print(f"\nsweep {exp_dir}: {len(results)} trials, {results.num_errors} failed", flush=True)
    best, best_value = None, None
    for r in results:
        state = "FAILED" if r.error else "ok"
        value = r.metrics.get(metric) if r.metrics else None
        config = r.config
        params = Path(r.path) / "params.json"
        if config is None and params.is_file():  # a trial that failed before reporting
            config = json.loads(params.read_text())
        print(f"  {r.path.rsplit('/', 1)[-1]}: {state} {metric}={value} config={config}")
        if r.error:
            print(f"    error: {str(r.error).strip().splitlines()[-1][:300]}")
        frame = r.metrics_dataframe
        if frame is not None and metric in frame and frame[metric].notna().any():
            v = float(frame[metric].max() if mode == "max" else frame[metric].min())
            if best_value is None or (v > best_value if mode == "max" else v < best_value):
                best, best_value = r, v
    if best is None:
        print(f"no trial reported {metric}: no best trial (see the errors above)", flush=True)
        return False
    summary = {"metric": metric, "mode": mode, "best_value": best_value,
               "config": best.config, "trial_dir": best.path,
               "checkpoint": best.checkpoint.path if best.checkpoint else None}
    (exp_dir / "best.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"best trial: {metric}={best_value:.4f} config={best.config}")
    print(f"best checkpoint: {summary['checkpoint']}", flush=True)
    return True


def sweep(argv: list[str]) -> int:
    """Run the sweep; 0 if every trial finished, 1 if any failed or none reported the metric (the
    best of the others is still reported and written)."""
    results, reported = run(argv)
    ray.shutdown()
    return 0 if results.num_errors == 0 and reported else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad input is one line on stderr and exit status 2, before Ray starts."""
    return run_main(sweep, argv)


if __name__ == "__main__":
    sys.exit(main())
