"""Checks of submit options, each failing with a message that names the bad value and the valid form.

Everything here runs before a script is written or ``sbatch`` is called, so bad input never
reaches the queue.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from lightning_snn.errors import UsageError, one_line


class SubmitError(UsageError):
    """A submit option is invalid; the message says which value and what is accepted."""


# sbatch --time: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (and UNLIMITED / INFINITE)
_TIME_FORMS = "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (e.g. 30, 02:00:00, 1-12:00:00)"
_TIME_RE = re.compile(
    r"^(?:(?P<m1>\d+)"
    r"|(?P<m2>\d+):(?P<s2>[0-5]?\d)"
    r"|(?P<h3>\d+):(?P<m3>[0-5]?\d):(?P<s3>[0-5]?\d)"
    r"|(?P<d4>\d+)-(?P<h4>\d+)"
    r"|(?P<d5>\d+)-(?P<h5>\d+):(?P<m5>[0-5]?\d)"
    r"|(?P<d6>\d+)-(?P<h6>\d+):(?P<m6>[0-5]?\d):(?P<s6>[0-5]?\d))$"
)
_ARRAY_RE = re.compile(r"^\d+(-\d+(:\d+)?)?(,\d+(-\d+(:\d+)?)?)*(%\d+)?$")


def positive_int(name: str, value: int) -> int:
    """``value`` if it is a positive integer, else an error naming ``name``."""
    if value <= 0:
        raise SubmitError(f"{name} must be a positive integer, got {value}")
    return value


def time_limit_seconds(value: str) -> int | None:
    """Seconds in a SLURM ``--time`` value (None for UNLIMITED); an error for any other form."""
    if value.upper() in ("UNLIMITED", "INFINITE"):
        return None
    m = _TIME_RE.match(value.strip())
    if not m:
        raise SubmitError(f"--time {value!r} is not a SLURM time limit; use {_TIME_FORMS}")
    g = {k: int(v) for k, v in m.groupdict().items() if v is not None}
    days = g.get("d4", g.get("d5", g.get("d6", 0)))
    hours = g.get("h3", g.get("h4", g.get("h5", g.get("h6", 0))))
    minutes = g.get("m1", g.get("m2", g.get("m3", g.get("m5", g.get("m6", 0)))))
    seconds = g.get("s2", g.get("s3", g.get("s6", 0)))
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise SubmitError(f"--time {value!r} is zero; use a positive limit in {_TIME_FORMS}")
    return total


def signal_lead(lead: int, limit_s: int | None) -> int:
    """The USR1 lead time must be positive and shorter than the time limit (else it fires at once)."""
    positive_int("--signal-lead", lead)
    if limit_s is not None and lead >= limit_s:
        raise SubmitError(
            f"--signal-lead {lead} s is not shorter than the time limit ({limit_s} s): the requeue "
            f"signal would arrive at the start; use a longer --time or a smaller --signal-lead"
        )
    return lead


def config_file(path: str) -> Path:
    """The training config as an absolute path; an error if it is missing or not a file."""
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "does not exist"
        raise SubmitError(f"--config {path!r} {what}; give a training YAML such as configs/<name>.yaml")
    return p.resolve()


def array_spec(value: str | None) -> str | None:
    """A SLURM ``--array`` index spec (``0-4``, ``1,3,5``, ``0-9:2%2``); task ids become seeds."""
    if value is None:
        return None
    if not _ARRAY_RE.match(value):
        raise SubmitError(
            f"--array {value!r} is not a SLURM array spec; use e.g. 0-4, 1,3,5 or 0-9:2%2 "
            f"(each task id is used as the seed)"
        )
    return value


def cluster_partitions() -> list[str]:
    """Partition names that ``sinfo`` reports on this cluster."""
    if shutil.which("sinfo") is None:
        raise SubmitError("sinfo not found: SLURM's client tools are not installed on this machine")
    res = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise SubmitError(f"sinfo failed (is the SLURM controller reachable?): {res.stderr.strip()}")
    return sorted({line.strip() for line in res.stdout.splitlines() if line.strip()})


def partition(name: str, known: list[str]) -> str:
    """``name`` if the cluster has that partition, else an error listing the ones it has."""
    if name not in known:
        raise SubmitError(
            f"unknown partition {name!r}; partitions on this cluster (sinfo): {', '.join(known) or 'none'}"
        )
    return name



def training_args(args: list[str]) -> None:
    """``args`` (``fit --config ...``) parsed by the training command line's own parser, as the
    job will run it: a YAML syntax error or a bad option value is an error here, not on the node."""
    from lightning_snn.cli_check import check_args

    try:
        check_args(args)
    except UsageError as e:
        raise SubmitError(f"the training command line rejects the config or the arguments after --: {e}") from e
