"""Render (``--dry-run``) or submit the Ray-cluster sweep job ``tune/slurm/ray_sweep.sbatch``.

    python -m tune.slurm_submit --nodes 2 --gpus-per-node 4 --cpus-per-node 32 --time 08:00:00 \\
        --partition gpu --dry-run -- --config configs/fmnist_mlp_bptt.yaml \\
        --space tune/spaces/threshold_T.yaml --num-samples 64 --resources-per-trial cpu=8,gpu=1

Everything after ``--`` goes to ``python -m tune.sweep`` (which runs with ``--address auto`` on the
job's Ray cluster). Without ``--dry-run`` the script is written to ``--script`` and passed to
``sbatch``; with it, the script is printed. The options are checked first as
``python -m lightning_snn.slurm submit`` checks them (counts, time limit, partition known to
``sinfo``; a dry run without a reachable controller only warns), the sweep's arguments as
``tune.sweep`` checks them (from ``--workdir``: its options, space file and trial command line),
and the script is rendered by the same jinja2 renderer. Bad input is one line and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from pathlib import Path

from lightning_snn.errors import OneLineArgumentParser, UsageError, run_main
from lightning_snn.slurm import validate
from lightning_snn.slurm.submit import checked_partition, render_template

TEMPLATE = Path(__file__).resolve().parent / "slurm" / "ray_sweep.sbatch"  # package data
SWEEP_MODULE = f"{__package__}.sweep"  # `tune.sweep` in a checkout, as installed otherwise


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog=f"python -m {__package__}.slurm_submit", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--cpus-per-node", type=int, default=8)
    p.add_argument("--time", default="04:00:00")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--job-name", default="snn-sweep")
    p.add_argument("--sbatch-option", action="append", default=[],
                   help="extra #SBATCH line content, e.g. --sbatch-option=--mem=64G (repeatable)")
    p.add_argument("--workdir", default=".", help="project checkout on the shared filesystem")
    p.add_argument("--setup", default="", help="shell line run first, e.g. 'source .venv/bin/activate'")
    p.add_argument("--python", default="python", help="interpreter on the compute nodes")
    p.add_argument("--port", type=int, default=6379, help="Ray head port")
    p.add_argument("--log-dir", default="logs/slurm")
    p.add_argument("--script", default=None, help="where to write the job script (default: log dir)")
    p.add_argument("--dry-run", action="store_true", help="print the script, submit nothing")
    return p


def render(opts: argparse.Namespace, sweep_args: list[str]) -> str:
    """The job script for these options (validated first), with ``sweep_args`` shell-quoted."""
    validate.positive_int("--nodes", opts.nodes)
    validate.positive_int("--cpus-per-node", opts.cpus_per_node)
    if opts.gpus_per_node < 0:
        raise UsageError(f"--gpus-per-node must be >= 0, got {opts.gpus_per_node}")
    validate.time_limit_seconds(opts.time)
    if not 0 < opts.port < 65536:
        raise UsageError(f"--port {opts.port} (valid: 1 to 65535)")
    if "--address" in sweep_args:
        raise UsageError("the job connects the sweep to its own cluster: leave out --address "
                         "(valid: any other tune.sweep option after --)")
    workdir = Path(opts.workdir).resolve()
    if not workdir.is_dir():
        raise UsageError(f"--workdir {opts.workdir!r} does not exist (valid: the project checkout)")
    from .sweep import check as check_sweep

    with contextlib.chdir(workdir):  # the sweep's relative paths mean what they mean in the job
        check_sweep(sweep_args)
    partition = checked_partition(opts.partition, opts.dry_run) if opts.partition else None
    extra = [f"--gpus-per-node={opts.gpus_per_node}"] if opts.gpus_per_node else []
    extra += [f"--partition={partition}"] if partition else []
    extra += [f"--account={opts.account}"] if opts.account else []
    extra += list(opts.sbatch_option)
    variables = {
        "job_name": opts.job_name, "nodes": opts.nodes, "cpus_per_node": opts.cpus_per_node,
        "gpus_per_node": opts.gpus_per_node, "time": opts.time, "log_dir": str(workdir / opts.log_dir),
        "extra_sbatch": extra, "workdir": str(workdir), "setup": opts.setup, "python": opts.python,
        "port": opts.port, "sweep_module": SWEEP_MODULE, "sweep_args": sweep_args,
    }
    return render_template(TEMPLATE.parent, TEMPLATE.name, variables)


def submit(argv: list[str]) -> int:
    """Validate and render; print (``--dry-run``) or write and ``sbatch`` the script."""
    own, sweep_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    opts = build_parser().parse_args(own)
    script = render(opts, sweep_args)
    if opts.dry_run:
        print(script)
        return 0
    path = Path(opts.script or Path(opts.log_dir) / f"{opts.job_name}.sbatch")
    path.parent.mkdir(parents=True, exist_ok=True)
    Path(opts.log_dir).mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    print(f"wrote {path}", flush=True)
    return subprocess.run(["sbatch", str(path)], check=False).returncode


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad input is one line on stderr and exit status 2, nothing written."""
    return run_main(submit, argv)


if __name__ == "__main__":
    sys.exit(main())
