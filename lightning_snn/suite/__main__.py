"""``python -m lightning_snn.suite {run,status,report} SUITE``: a paper's results table as one command.

    python -m lightning_snn.suite run smoke --launcher local [--parallel 2] [--rows a,b] [--seeds 0,1]
    python -m lightning_snn.suite run ide --launcher slurm --partition gpu --time 1-00:00:00 --max-concurrent 8
    python -m lightning_snn.suite run ide --launcher ray --address auto --resources-per-run cpu=8,gpu=1
    python -m lightning_snn.suite run ide --dry-run          # the plan: runs, state, estimated device-hours
    python -m lightning_snn.suite status ide
    python -m lightning_snn.suite report ide [--wandb-project P]
    python -m lightning_snn.suite publish ide               # finished results -> results/ide/, tables rebuilt

SUITE is a name under ``configs/suites`` or a suite file. Runs live in ``<root>/<suite>/<row>/seed<k>``
(``--root``, default ``runs/suites``). Options after ``--`` go to every run's ``fit`` command line
(``-- --trainer.max_epochs 2`` for a quick pass: the report marks those runs ``shortened``). A finished
run is never trained again, an interrupted one resumes from its checkpoint, a failed one is retried
only with ``--retry-failed``; a run trained by another launch (its lock is held) is left alone.
Everything is checked before anything starts (the suite file, every row's command line); bad input
is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lightning_snn.errors import OneLineArgumentParser, run_main
from lightning_snn.rundirs import require_writable
from lightning_snn.suite.spec import Options, RunSpec, Suite, SuiteError, load_suite

if TYPE_CHECKING:
    from lightning_snn.suite.launchers import SlurmOptions

STATES = ("done", "running", "interrupted", "pending", "failed", "invalid", "not run")


def _csv(kind: type) -> "argparse._ActionType":  # type: ignore[name-defined]
    def parse(text: str) -> list:
        try:
            return [kind(p) for p in text.split(",") if p.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}")
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m lightning_snn.suite", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("suite", help="a suite name (configs/suites/<name>.yaml) or a suite file")
        q.add_argument("--root", default="runs/suites", help="where run folders live (default runs/suites)")
        q.add_argument("--rows", type=_csv(str), default=None, help="comma-separated row names (default all)")
        q.add_argument("--seeds", type=_csv(int), default=None, help="comma-separated seeds (default each row's)")

    run = sub.add_parser("run", help="train every (row, seed) run that is not done")
    common(run)
    run.add_argument("--launcher", choices=["local", "slurm", "ray"], default="local")
    run.add_argument("--dry-run", action="store_true", help="print the plan (and the SLURM script); start nothing")
    run.add_argument("--no-measure", action="store_true", help="dry run: do not time steps for the estimate")
    run.add_argument("--retry-failed", action="store_true", help="train failed runs again")
    run.add_argument("--wandb-project", default=None, help="log each run to W&B, grouped by suite and row")
    run.add_argument("--parallel", type=int, default=1, help="local: runs at a time")
    run.add_argument("--partition", default=None, help="slurm: partition (checked against sinfo)")
    run.add_argument("--time", default=None, help="slurm: time limit of one run (e.g. 1-00:00:00)")
    run.add_argument("--gpus-per-run", type=int, default=1, help="slurm: devices (= processes) per run")
    run.add_argument("--cpus-per-task", type=int, default=1, help="slurm: CPU cores per training process")
    run.add_argument("--accelerator", choices=["gpu", "cpu"], default="gpu", help="slurm: device kind")
    run.add_argument("--max-concurrent", type=int, default=None, help="slurm: array tasks running at once")
    run.add_argument("--signal-lead", type=int, default=90, help="slurm: seconds before the limit to checkpoint")
    run.add_argument("--sbatch", action="append", default=[], metavar="OPTION", help="slurm: extra #SBATCH line")
    run.add_argument("--address", default=None, help="ray: cluster address (auto: the running cluster)")
    run.add_argument("--num-cpus", type=int, default=None, help="ray: CPUs of a local Ray")
    run.add_argument("--resources-per-run", default="cpu=1", help="ray: e.g. cpu=8,gpu=1")
    run.add_argument("--max-failures", type=int, default=0, help="ray: retries of a failing run")

    status = sub.add_parser("status", help="per row: done / running / failed / interrupted / pending")
    common(status)

    report = sub.add_parser("report", help="results.csv, results.md and results.png from the runs' results")
    common(report)
    report.add_argument("--out", default=None, help="folder of the report (default <root>/<suite>)")
    report.add_argument("--wandb-project", default=None, help="also log the tables and plot to W&B")

    pub = sub.add_parser("publish", help="copy finished results into the repository's results/ and rebuild its tables")
    common(pub)
    pub.add_argument("--to", default="results", help="the published results folder (default results)")
    pub.add_argument("--readme", default="README.md", help="README whose 'Reproduced so far' block is rewritten")

    ex = sub.add_parser("execute", help="train one run (what every launcher starts)")
    ex.add_argument("suite")
    ex.add_argument("--row", required=True)
    ex.add_argument("--seed", type=int, required=True)
    ex.add_argument("--root", default="runs/suites")
    ex.add_argument("--retry-failed", action="store_true")
    ex.add_argument("--wandb-project", default=None)
    return p


def _runs(suite: Suite, ns: argparse.Namespace) -> list[RunSpec]:
    if ns.seeds is not None and not ns.seeds:
        raise SuiteError("--seeds is empty (valid: comma-separated integers, e.g. 0,1)")
    bad = [s for s in ns.seeds or [] if not 0 <= s < 2**32]  # Lightning's seed range
    if bad:
        raise SuiteError(f"--seeds {','.join(map(str, bad))}: a seed must be in [0, 2^32) (valid: e.g. 0,1)")
    return suite.select(ns.rows, ns.seeds)


def cmd_run(suite: Suite, ns: argparse.Namespace, opts: Options) -> int:
    from lightning_snn.suite import launchers, plan

    slurm = None
    if ns.launcher == "slurm":
        slurm = _slurm_options(ns)
        opts.extra = [f"--trainer.accelerator={ns.accelerator}", f"--trainer.devices={ns.gpus_per_run}",
                      "--trainer.num_nodes=1", *([] if ns.gpus_per_run == 1 else ["--trainer.strategy=ddp"]),
                      *opts.extra]
    if ns.parallel < 1:
        raise SuiteError(f"--parallel {ns.parallel} (valid: an integer >= 1)")
    if not ns.dry_run:  # a dry run writes nothing
        require_writable(opts.root, "--root")
    runs = _runs(suite, ns)
    checks: dict[str, plan.RowCheck] = {}
    for r in runs:  # every row's command line and data, before anything starts
        if r.row.name not in checks:
            checks[r.row.name] = plan.check_row(r.row, opts, r.seed)
    todo, lines = [], []
    for r in runs:
        state, detail = plan.run_state(r, opts)
        missing = checks[r.row.name].missing_data
        if missing:
            state, detail = "not run", missing
        elif state in ("pending", "interrupted") or (state == "failed" and opts.retry_failed):
            todo.append(r)
        lines.append((r, state, detail))
    if ns.dry_run and not ns.no_measure:
        _check_measurable(todo, checks, ns.launcher)
    if ns.dry_run:
        print_plan(suite, lines, checks, opts, measure=not ns.no_measure, launcher=ns.launcher,
                   parallel=ns.parallel)
        if ns.launcher == "slurm" and todo:
            launchers.run_slurm(suite, todo, opts, slurm, dry_run=True)
        return 0
    for r, state, detail in lines:
        if r not in todo:
            print(f"{r.key}: {state}{': ' + detail if detail else ''}", flush=True)
    if not todo:
        return 0 if all(s == "done" for _, s, _ in lines) else 1
    if ns.launcher == "local":
        return launchers.run_local(suite, todo, opts, ns.parallel)
    if ns.launcher == "slurm":
        launchers.run_slurm(suite, todo, opts, slurm, dry_run=False)
        return 0
    from lightning_snn_tune.sweep import parse_resources

    try:
        resources = parse_resources(ns.resources_per_run)
    except argparse.ArgumentTypeError as e:
        raise SuiteError(f"--resources-per-run: {e}") from None
    return launchers.run_ray(suite, todo, opts, resources, ns.address, ns.num_cpus, ns.max_failures)


def _check_measurable(todo: list[RunSpec], checks: dict, launcher: str) -> None:
    """A dry run times a few steps of each row on this machine, with the device its runs will use: a
    GPU run on a machine without one is refused before anything is timed, naming what gives the plan."""
    from lightning_snn.suite.plan import gpu_here

    gpu_rows = [r.row.name for r in todo if str(checks[r.row.name].config.trainer.accelerator) in ("gpu", "cuda")]
    if not gpu_rows or gpu_here():
        return
    cpu = "--accelerator cpu" if launcher == "slurm" else "-- --trainer.accelerator cpu"
    raise SuiteError(f"--dry-run: the step-time estimate of {', '.join(dict.fromkeys(gpu_rows))} times steps on "
                     f"a GPU, and this machine has none (valid: --no-measure for the plan without the estimate, "
                     f"or {cpu} to estimate on this machine's CPUs)")


def _slurm_options(ns: argparse.Namespace) -> "SlurmOptions":
    from lightning_snn.slurm import validate
    from lightning_snn.suite.launchers import SlurmOptions

    if not ns.partition or not ns.time:
        raise SuiteError("--launcher slurm needs --partition and --time (e.g. --partition gpu --time 1-00:00:00)")
    limit = validate.time_limit_seconds(ns.time)
    validate.positive_int("--gpus-per-run", ns.gpus_per_run)
    validate.positive_int("--cpus-per-task", ns.cpus_per_task)
    if ns.max_concurrent is not None:
        validate.positive_int("--max-concurrent", ns.max_concurrent)
    return SlurmOptions(ns.partition, ns.time, ns.gpus_per_run, ns.cpus_per_task, ns.accelerator,
                        ns.max_concurrent, validate.signal_lead(ns.signal_lead, limit), list(ns.sbatch))


def print_plan(suite: Suite, lines: list, checks: dict, opts: Options, measure: bool, launcher: str,
               parallel: int = 1) -> None:
    """Per row: its runs by state, the devices of one run, the steps of one run, the measured time
    of a step, and the estimated device-hours of the runs left to train."""
    import pandas as pd

    from lightning_snn.suite import plan

    table, total = [], 0.0
    for name in dict.fromkeys(r.row.name for r, _, _ in lines):
        mine = [(r, state, detail) for r, state, detail in lines if r.row.name == name]
        c = checks[name]
        t = c.config.trainer
        states = pd.Series([state for _, state, _ in mine]).value_counts()
        todo = int(states.get("pending", 0) + states.get("interrupted", 0))
        steps = plan.steps_per_run(c.config, c.train_size)
        seconds, hours = None, None
        if c.missing_data:
            timing = c.missing_data.split(". Run `")[0]  # the reason, without the set-up hint
        elif steps is None:
            timing = "unknown number of steps"
        elif not measure:
            timing = "not measured (--no-measure)"
        elif not todo:
            timing, hours = "nothing left to train", 0.0
        else:
            measured = plan.measure_step_seconds(mine[0][0].row, opts, mine[0][0].seed,
                                                 parallel=parallel if launcher == "local" else 1)
            seconds, timing = measured.seconds, measured.note()
            hours = todo * steps * seconds * int(t.devices if isinstance(t.devices, int) else 1) / 3600.0
            total += hours
        table.append({"row": name, "runs": len(mine), **{k: int(v) for k, v in states.items()},
                      "devices/run": f"{t.accelerator}:{t.devices}", "steps/run": steps if steps is not None else "-",
                      "s/step": f"{seconds:.3f}" if seconds is not None else "-",
                      "est. device-hours": f"{hours:.3g}" if hours is not None else "?",
                      "stage": f"{suite.stage(name) + 1}" + (f" (from {suite.row(name).init_from})"
                                                              if suite.row(name).init_from else ""),
                      "note": timing})
    left = sum(1 for _, s, _ in lines if s in ("pending", "interrupted"))
    print(f"suite {suite.name} ({suite.path}): {len(lines)} runs, {left} to train with the {launcher} launcher, "
          f"runs in {Path(opts.root).resolve() / suite.name}")
    frame = pd.DataFrame(table)
    states = [k for k in STATES if k in frame]
    rest = [k for k in frame if k not in states and k not in ("row", "runs")]
    print(frame[["row", "runs", *states, *rest]].fillna({k: 0 for k in states}).astype({k: int for k in states})
          .to_markdown(index=False))
    print(f"estimated device-hours of the runs left to train (rows with an estimate): {total:.3g}")


def cmd_status(suite: Suite, ns: argparse.Namespace, opts: Options) -> int:
    import pandas as pd

    from lightning_snn.suite import plan

    lines = [{"run": r.key, **dict(zip(("state", "detail"), plan.run_state(r, opts)))} for r in _runs(suite, ns)]
    table = pd.DataFrame(lines)
    counts = table.assign(row=[x.split("/")[0] for x in table["run"]]).pivot_table(
        index="row", columns="state", values="run", aggfunc="count", fill_value=0)
    print(table.to_markdown(index=False))
    print()
    print(counts.reset_index().to_markdown(index=False))
    return 0


def cmd_report(suite: Suite, ns: argparse.Namespace, opts: Options) -> int:
    from lightning_snn.suite.report import write_report

    if ns.rows:
        suite = Suite(suite.name, suite.path, suite.description, suite.seeds,
                      tuple(suite.row(n) for n in ns.rows))
    require_writable(ns.out or opts.root, "--out" if ns.out else "--root")
    rows, runs = write_report(suite, opts, Path(ns.out) if ns.out else None)
    out = Path(ns.out or Path(opts.root) / suite.name)
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.csv'} ({len(runs)} runs), {out / 'results.md'}, {out / 'results.png'}")
    return 0


def cmd_publish(suite: Suite, ns: argparse.Namespace, opts: Options) -> int:
    from lightning_snn.suite import publish
    from lightning_snn.suite.report import write_report

    to = Path(ns.to)
    require_writable(to, "--to")
    copied = publish.copy_results(suite, opts.root, to)
    write_report(suite, Options(root=to))
    (to / publish.SUMMARY).write_text(publish.summary(to))
    print(f"published {len(copied)} new result(s) of {suite.name} into {to / suite.name}; rebuilt its "
          f"results.csv / .md / .png and {to / publish.SUMMARY}")
    readme = Path(ns.readme)
    text = readme.read_text() if readme.is_file() else ""
    if publish.BEGIN in text and publish.END in text:
        head, rest = text.split(publish.BEGIN, 1)
        readme.write_text(head + publish.readme_block(to) + rest.split(publish.END, 1)[1])
        print(f"rewrote the reproduced-results block of {readme}")
    return 0


def cmd_execute(suite: Suite, ns: argparse.Namespace, opts: Options) -> int:
    from lightning_snn.checkpoints import TrainingInterrupted
    from lightning_snn.suite.execute import BUSY_EXIT, execute

    require_writable(opts.root, "--root")
    try:
        state = execute(suite.select([ns.row], [ns.seed])[0], opts)
    except TrainingInterrupted as stop:  # checkpoint saved (SIGTERM / SIGUSR1): resumable, not failed
        print(f"interrupted: {stop}", file=sys.stderr)
        return 128 + stop.signum
    return BUSY_EXIT if state == "busy" else (1 if state == "failed" else 0)


def suite_main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ns = build_parser().parse_args(argv)
    suite = load_suite(ns.suite)
    opts = Options(root=Path(ns.root), extra=extra, retry_failed=getattr(ns, "retry_failed", False),
                   wandb_project=getattr(ns, "wandb_project", None))
    return {"run": cmd_run, "status": cmd_status, "report": cmd_report, "publish": cmd_publish,
            "execute": cmd_execute}[ns.command](
        suite, ns, opts)


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input is one line on stderr and exit status 2, before anything starts."""
    return run_main(suite_main, argv)


if __name__ == "__main__":
    sys.exit(main())
