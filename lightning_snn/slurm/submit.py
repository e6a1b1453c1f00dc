"""``python -m lightning_snn.slurm submit``: render an sbatch script for a training config and submit it.

    python -m lightning_snn.slurm submit --config configs/mnist_convnet_bptt.yaml \
        --nodes 2 --gpus-per-node 4 --time 04:00:00 --partition gpu [--array 0-2] [--dry-run] \
        [-- --trainer.max_epochs=10 ...]

Every option is checked first (config file, node and GPU counts, time-limit format, partition
known to ``sinfo``, array spec), then the config and the arguments after ``--`` are parsed by the
training command line's own parser (LightningCLI, as the job will run it); only then is the script
written and handed to ``sbatch``. The job id goes to stdout. With ``--array``, each array task
trains with its task id as the seed. ``--dry-run`` prints the script; it needs no cluster (without
a reachable controller the partition is not checked, with a warning). Bad input is one line on
stderr and exit status 2 (``--debug`` or ``LIGHTNING_SNN_DEBUG=1``: the traceback).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from lightning_snn.errors import OneLineArgumentParser, run_main
from lightning_snn.slurm import validate
from lightning_snn.slurm.validate import SubmitError

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"  # package data: shipped in the wheel
SINGLE_NODE, MULTI_NODE = "ddp_single_node.sbatch", "ddp_multi_node.sbatch"


@dataclass
class JobSpec:
    """Everything a template needs; built only from validated options."""

    config: Path
    nodes: int
    tasks_per_node: int
    time: str
    partition: str
    accelerator: str = "gpu"
    array: str | None = None
    seed: int | None = None
    job_name: str = "lightning-snn"
    output_dir: Path = Path("runs")
    workdir: Path = field(default_factory=Path.cwd)
    python: str = sys.executable
    cpus_per_task: int = 1
    signal_lead: int = 90
    strategy: str | None = None
    sync_batchnorm: bool = False
    extra_sbatch: list[str] = field(default_factory=list)
    train_args: list[str] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node

    def template_vars(self) -> dict:
        out = self.output_dir.resolve()
        return {
            "config": str(self.config),
            "nodes": self.nodes,
            "tasks_per_node": self.tasks_per_node,
            "time": self.time,
            "partition": self.partition,
            "accelerator": self.accelerator,
            "array": self.array,
            "seed": self.seed,
            "job_name": self.job_name,
            "log_dir": str(out / self.job_name),
            "run_root": str(out / self.job_name),
            "workdir": str(self.workdir.resolve()),
            "python": self.python,
            "cpus_per_task": self.cpus_per_task,
            "signal_lead": self.signal_lead,
            # one process: Lightning's default; more: DDP (NCCL on GPUs, gloo on CPUs)
            "strategy": self.strategy or ("ddp" if self.world_size > 1 else "auto"),
            "sync_batchnorm": self.sync_batchnorm,
            "extra_sbatch": self.extra_sbatch,
            "train_args": self.train_args,
        }


def render_template(template_dir: Path, name: str, variables: dict[str, Any]) -> str:
    """Render ``template_dir/name`` with jinja2: a variable the template uses but ``variables``
    lacks is an error (not an empty string), and ``| q`` shell-quotes a value."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["q"] = lambda v: shlex.quote(str(v))
    return env.get_template(name).render(**variables)


def render(spec: JobSpec, template_dir: Path = TEMPLATE_DIR) -> str:
    """The sbatch script for ``spec``: the single-node template for one node, else the multi-node one."""
    return render_template(template_dir, SINGLE_NODE if spec.nodes == 1 else MULTI_NODE, spec.template_vars())


def job_fit_args(spec: JobSpec) -> list[str]:
    """The ``fit`` command line the job script runs (``_train.sh``), with a placeholder run dir."""
    run_dir = str(spec.output_dir.resolve() / spec.job_name / "RUN_DIR")
    args = ["fit", "--config", str(spec.config), f"--trainer.accelerator={spec.accelerator}",
            f"--trainer.devices={spec.tasks_per_node}", f"--trainer.num_nodes={spec.nodes}",
            f"--trainer.strategy={spec.template_vars()['strategy']}"]
    args += ["--trainer.sync_batchnorm=true"] if spec.sync_batchnorm else []
    args += [f"--trainer.default_root_dir={run_dir}", f"--checkpoint.dirpath={run_dir}/checkpoints",
             f"--trainer.logger.init_args.save_dir={run_dir}", "--trainer.logger.init_args.name=logs",
             "--trainer.logger.init_args.version=attempt0"]
    seed = 0 if spec.array else spec.seed
    args += [f"--seed_everything={seed}"] if seed is not None else []
    return args + list(spec.train_args)


def sbatch(script: Path) -> str:
    """Submit ``script``; return the job id (``sbatch --parsable`` prints ``id[;cluster]``)."""
    res = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise SubmitError(f"sbatch rejected {script}: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout.strip().split(";")[0]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="python -m lightning_snn.slurm", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("submit", help="render an sbatch script for a config and submit it")
    p.add_argument("--config", required=True, help="training config (YAML for `python -m lightning_snn fit`)")
    p.add_argument("--nodes", type=int, default=1, help="number of nodes (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=1,
                   help="devices per node = training processes per node (with --accelerator cpu: CPU processes)")
    p.add_argument("--time", required=True, help="time limit: MM, HH:MM:SS, D-HH:MM:SS, ...")
    p.add_argument("--partition", required=True, help="SLURM partition (checked against sinfo)")
    p.add_argument("--array", default=None, help="array spec such as 0-2; each task id is the seed")
    p.add_argument("--seed", type=int, default=None, help="seed for a single job (default: the config's)")
    p.add_argument("--accelerator", choices=["gpu", "cpu"], default="gpu",
                   help="gpu requests --gpus-per-node GPUs; cpu runs DDP over gloo without GPUs")
    p.add_argument("--strategy", default=None,
                   help="trainer strategy (default: ddp for more than one process, else auto)")
    p.add_argument("--sync-batchnorm", action="store_true", help="synchronise batch-norm statistics across ranks")
    p.add_argument("--cpus-per-task", type=int, default=1, help="CPU cores per training process")
    p.add_argument("--signal-lead", type=int, default=90,
                   help="seconds before the time limit at which USR1 triggers checkpoint + requeue")
    p.add_argument("--job-name", default=None, help="job name (default: the config's file name)")
    p.add_argument("--output-dir", default="runs", help="run directories and logs go under DIR/<job-name>")
    p.add_argument("--workdir", default=None, help="directory the job runs in (default: the current one)")
    p.add_argument("--python", default=sys.executable, help="python executable of the job (default: this one)")
    p.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                   help="extra #SBATCH line, e.g. --sbatch=--mem=32G (repeatable)")
    p.add_argument("--template-dir", default=str(TEMPLATE_DIR), help="where the sbatch templates are")
    p.add_argument("--dry-run", action="store_true", help="print the rendered script; submit nothing")
    return parser


def spec_from_args(ns: argparse.Namespace, train_args: list[str]) -> JobSpec:
    """Validate every option (raising :class:`SubmitError`) and build the job spec."""
    config = validate.config_file(ns.config)
    nodes = validate.positive_int("--nodes", ns.nodes)
    per_node = validate.positive_int("--gpus-per-node", ns.gpus_per_node)
    validate.positive_int("--cpus-per-task", ns.cpus_per_task)
    limit = validate.time_limit_seconds(ns.time)
    lead = validate.signal_lead(ns.signal_lead, limit)
    array = validate.array_spec(ns.array)
    if array is not None and ns.seed is not None:
        raise SubmitError("--seed and --array exclude each other: array task ids are the seeds")
    template_dir = Path(ns.template_dir)
    if not (template_dir / SINGLE_NODE).is_file():
        raise SubmitError(f"--template-dir {str(template_dir)!r} has no {SINGLE_NODE} (valid: a folder "
                          f"with {SINGLE_NODE} and {MULTI_NODE}, default {TEMPLATE_DIR})")
    spec = JobSpec(
        config=config, nodes=nodes, tasks_per_node=per_node, time=ns.time, partition=ns.partition,
        accelerator=ns.accelerator, array=array, seed=ns.seed, job_name=ns.job_name or config.stem,
        output_dir=Path(ns.output_dir), workdir=Path(ns.workdir) if ns.workdir else Path.cwd(),
        python=ns.python, cpus_per_task=ns.cpus_per_task, signal_lead=lead, strategy=ns.strategy,
        sync_batchnorm=ns.sync_batchnorm, extra_sbatch=list(ns.sbatch), train_args=train_args,
    )
    validate.training_args(job_fit_args(spec))  # the job's own parser, before anything is rendered
    spec.partition = checked_partition(ns.partition, dry_run=ns.dry_run)
    return spec


def checked_partition(name: str, dry_run: bool) -> str:
    """``name`` checked against ``sinfo``; a dry run (which only prints) warns instead when there is
    no ``sinfo`` or no reachable controller."""
    if dry_run:
        try:
            known = validate.cluster_partitions()
        except SubmitError as e:
            print(f"warning: partition {name!r} not checked: {e}", file=sys.stderr)
            return name
        return validate.partition(name, known)
    return validate.partition(name, validate.cluster_partitions())


def submit(argv: list[str]) -> int:
    """Validate, render, and print (``--dry-run``) or submit; raises :class:`SubmitError`."""
    train_args: list[str] = []
    if "--" in argv:  # everything after `--` belongs to the training command line
        i = argv.index("--")
        argv, train_args = argv[:i], argv[i + 1:]
    ns = build_parser().parse_args(argv)
    spec = spec_from_args(ns, train_args)
    script = render(spec, Path(ns.template_dir))
    if ns.dry_run:
        sys.stdout.write(script)
        return 0
    dest = spec.output_dir / spec.job_name / "sbatch"
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{time.strftime('%Y%m%d-%H%M%S')}-{time.monotonic_ns() % 10**6:06d}.sbatch"
    path.write_text(script)
    job_id = sbatch(path)
    print(f"submitted job {job_id}: {spec.world_size} process(es) on {spec.nodes} node(s), script {path}",
          file=sys.stderr)
    print(job_id)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for invalid options: one line, nothing submitted)."""
    return run_main(submit, argv)
