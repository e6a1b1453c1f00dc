"""Render (``--dry-run``) or submit the Ray-cluster sweep job ``tune/slurm/ray_sweep.sbatch``.

    python -m tune.slurm_submit --nodes 2 --gpus-per-node 4 --cpus-per-node 32 --time 08:00:00 \\
        --partition gpu --dry-run -- --config configs/fmnist_mlp_bptt.yaml \\
        --space tune/spaces/threshold_T.yaml --num-samples 64 --resources-per-trial cpu=8,gpu=1

Everything after ``--`` goes to ``python -m tune.sweep`` (which runs with ``--address auto`` on the
job's Ray cluster). Without ``--dry-run`` the script is written to ``--script`` and passed to
``sbatch``; with it, the script is printed.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "slurm" / "ray_sweep.sbatch"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tune.slurm_submit", description=__doc__,
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
    """The job script for these options, with ``sweep_args`` shell-quoted."""
    if opts.nodes < 1:
        raise SystemExit("--nodes must be >= 1")
    if "--address" in sweep_args:
        raise SystemExit("the job connects the sweep to its own cluster: leave out --address")
    workdir = Path(opts.workdir).resolve()
    extra = [f"--gpus-per-node={opts.gpus_per_node}"] if opts.gpus_per_node else []
    extra += [f"--partition={opts.partition}"] if opts.partition else []
    extra += [f"--account={opts.account}"] if opts.account else []
    extra += list(opts.sbatch_option)
    fields = {
        "job_name": opts.job_name, "nodes": str(opts.nodes),
        "cpus_per_node": str(opts.cpus_per_node), "gpus_per_node": str(opts.gpus_per_node),
        "time": opts.time, "log_dir": str(workdir / opts.log_dir),
        "sbatch_extra": "\n".join(f"#SBATCH {e}" for e in extra),
        "workdir": shlex.quote(str(workdir)), "setup": opts.setup, "python": opts.python,
        "port": str(opts.port), "sweep_args": shlex.join(sweep_args),
    }
    text = TEMPLATE.read_text()
    for key, value in fields.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
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


if __name__ == "__main__":
    sys.exit(main())
