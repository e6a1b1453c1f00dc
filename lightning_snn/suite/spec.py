"""Suite files: a paper's results table as data.

A suite (``configs/suites/<name>.yaml``) lists rows; a row is an ordinary training config (plus
optional command-line overrides) and the paper's reference for it::

    description: IDE (Xiao et al., NeurIPS 2021), Tables 1-3
    seeds: [0, 1, 2]
    rows:
      - name: fmnist_f400_if_t5
        config: ../ide/fmnist_f400_if_t5.yaml     # relative to the suite file
        overrides: []                             # optional: options of the fit command line
        seeds: [0]                                # optional: this row's seeds
        reference:
          metric: test/acc                        # accuracies in percent in suite files
          value: 90.04                            # null: the paper's value is not known
          std: 0.09                               # null: not reported
          seeds: 5                                # runs the paper averaged (null: not stated)
          protocol: final                         # final | best_epoch | measured (memory rows)
          grade: primary                          # how far the value can be trusted (below)
          source: "Xiao et al., NeurIPS 2021 (IDE), Table 1"
          note: "..."                             # optional
        timesteps: [1, 2, 4, 8]                   # optional: the final weights also evaluated at
                                                  # each T (``lightning_snn.timesteps``), or
        # timesteps: {T: [1, 2, 4], reference: {1: 58.9, 2: 62.6, 4: 64.5}, source: "..."}
        init_from: ann_stage                      # optional: start from the final weights of this
                                                  # row's run of the same seed (fit --init_from);
                                                  # launchers start it after that run
          time: 6.35                              # optional: the paper's training time (ratio rows)
        baseline: other_row                       # optional: report this row as a ratio to that one

A row with a ``baseline`` (the ``memory`` suite's) is reported as ratios to that row: ours (our
mean over its mean) next to the paper's (``value`` over the baseline's ``value``, ``time`` over its
``time``); its verdict is whether ours is at or below the paper's memory ratio.

A reference value carries a ``grade``: ``primary`` (the authors' README, code or abstract),
``secondary`` (reprinted identically by two or more independent later sources), ``single-source``
(one later source only) or ``conflict`` (sources disagree; the value is the majority's, the note names
the other). A verdict against a ``single-source`` or ``conflict`` value is provisional
(:data:`PROVISIONAL_GRADES`).

Every key is checked (unknown keys, duplicate rows, missing configs, no seeds are one-line
errors) before anything runs. One (row, seed) pair is a :class:`RunSpec`: the description every
launcher shares.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lightning_snn.errors import UsageError

SUITES_DIR = Path("configs") / "suites"
PROTOCOLS = ("final", "best_epoch", "measured")
GRADES = ("primary", "secondary", "single-source", "conflict")
PROVISIONAL_GRADES = frozenset({"single-source", "conflict"})
_NAME = re.compile(r"^[a-z0-9_]+$")


class SuiteError(UsageError):
    """A suite file or a suite command's option is invalid; the message names it and the valid form."""


@dataclass(frozen=True)
class Reference:
    """The paper's number for a row, and how it was obtained."""

    metric: str = "test/acc"
    value: float | None = None
    std: float | None = None
    seeds: int | None = None
    protocol: Literal["final", "best_epoch"] = "final"
    source: str = ""
    note: str = ""
    grade: Literal["primary", "secondary", "single-source", "conflict"] | None = None
    time: float | None = None  # the paper's training time (any unit; memory rows compare its ratio)

    @property
    def provisional(self) -> bool:
        """A verdict against this value is provisional: one later source only, or sources disagree."""
        return self.grade in PROVISIONAL_GRADES


@dataclass(frozen=True)
class TimeSteps:
    """A row's time-steps curve: the inference T to evaluate its final weights at, and the paper's
    accuracy (percent) at some of them."""

    T: tuple[int, ...]
    reference: tuple[tuple[int, float], ...] = ()
    source: str = ""


@dataclass(frozen=True)
class Row:
    """One line of the table: a config, its overrides, its seeds, the paper's reference."""

    name: str
    config: Path
    overrides: tuple[str, ...]
    seeds: tuple[int, ...]
    reference: Reference
    timesteps: TimeSteps | None = None
    init_from: str | None = None  # the row whose final weights this row starts from
    baseline: str | None = None  # a row of the same suite this one is compared with as a ratio


@dataclass(frozen=True)
class Suite:
    """A loaded suite file."""

    name: str
    path: Path
    description: str
    seeds: tuple[int, ...]
    rows: tuple[Row, ...]

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise SuiteError(f"suite {self.name!r} has no row {name!r} (valid: {', '.join(r.name for r in self.rows)})")

    def select(self, rows: list[str] | None = None, seeds: list[int] | None = None) -> list["RunSpec"]:
        """The runs of ``rows`` (default: all) for ``seeds`` (default: each row's own), every run
        after the run it starts from (``init_from``)."""
        chosen = [self.row(n) for n in rows] if rows else list(self.rows)
        runs = [RunSpec(self.name, r, s) for r in chosen for s in (seeds if seeds else r.seeds)]
        return sorted(runs, key=lambda run: self.stage(run.row.name))

    def stage(self, name: str) -> int:
        """0 for a row that starts from scratch, else one more than the row it starts from."""
        row = self.row(name)
        return 0 if row.init_from is None else 1 + self.stage(row.init_from)


@dataclass(frozen=True)
class RunSpec:
    """One (row, seed) run of a suite: what every launcher starts, in ``<root>/<suite>/<row>/seed<k>``."""

    suite: str
    row: Row
    seed: int

    @property
    def key(self) -> str:
        return f"{self.row.name}/seed{self.seed}"

    def source(self, suite: "Suite") -> "RunSpec | None":
        """The run whose final weights this one starts from (``init_from``: same seed)."""
        return None if self.row.init_from is None else RunSpec(self.suite, suite.row(self.row.init_from), self.seed)

    def directory(self, root: Path) -> Path:
        return Path(root) / self.suite / self.row.name / f"seed{self.seed}"


def resolve(suite: str) -> Path:
    """A suite name (``configs/suites/<name>.yaml`` under the current directory) or a file path."""
    path = Path(suite)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise SuiteError(f"suite file {suite!r} does not exist (valid: a YAML file, or a name in {SUITES_DIR})")
        return path
    path = SUITES_DIR / f"{suite}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SUITES_DIR.glob("*.yaml")) if SUITES_DIR.is_dir() else []
        raise SuiteError(f"unknown suite {suite!r}: {path} does not exist (valid: "
                         f"{', '.join(known) or f'a suite file, or run from the checkout holding {SUITES_DIR}'})")
    return path


def _keys(where: str, data: Any, allowed: set[str], required: set[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise SuiteError(f"{where} must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise SuiteError(f"{where}: unknown key {unknown[0]!r} (valid: {', '.join(sorted(allowed))})")
    missing = sorted(required - set(data))
    if missing:
        raise SuiteError(f"{where}: missing key {missing[0]!r}")
    return data


def _seeds(where: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(s, int) and not isinstance(s, bool)
                                                          and s >= 0 for s in value):
        raise SuiteError(f"{where}: seeds must be a non-empty list of integers >= 0, got {value!r}")
    if len(set(value)) != len(value):
        raise SuiteError(f"{where}: seeds {value!r} repeat a seed")
    return tuple(value)


def _number(where: str, value: Any, positive: bool = False) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (positive and value < 0):
        raise SuiteError(f"{where} must be a {'non-negative ' if positive else ''}number or null, got {value!r}")
    return float(value)


def _reference(where: str, data: Any) -> Reference:
    d = _keys(where, data, {"metric", "value", "std", "seeds", "protocol", "source", "note", "grade", "time"},
              {"metric", "value", "protocol", "source"})
    if d["protocol"] not in PROTOCOLS:
        raise SuiteError(f"{where}.protocol {d['protocol']!r} (valid: {', '.join(PROTOCOLS)})")
    grade = d.get("grade")
    if grade is not None and grade not in GRADES:
        raise SuiteError(f"{where}.grade {grade!r} (valid: {', '.join(GRADES)})")
    if grade is not None and d["value"] is None:
        raise SuiteError(f"{where}.grade {grade!r} without a value (valid: a grade only beside a number; "
                         "value: null has none)")
    seeds = d.get("seeds")
    if seeds is not None and (not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1):
        raise SuiteError(f"{where}.seeds must be a positive integer or null, got {seeds!r}")
    return Reference(metric=str(d["metric"]), value=_number(f"{where}.value", d["value"]),
                     std=_number(f"{where}.std", d.get("std"), positive=True), seeds=seeds,
                     protocol=d["protocol"], source=str(d["source"]), note=str(d.get("note") or ""),
                     grade=grade, time=_number(f"{where}.time", d.get("time"), positive=True))


def _positive_ints(where: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in value) or len(set(value)) != len(value):
        raise SuiteError(f"{where} must be a non-empty list of distinct integers >= 1, got {value!r}")
    return tuple(sorted(value))


def _timesteps(where: str, data: Any) -> TimeSteps:
    """``[1, 2, 4]`` or ``{T: [...], reference: {T: accuracy %}, source: ...}``."""
    if isinstance(data, list):
        return TimeSteps(_positive_ints(where, data))
    d = _keys(where, data, {"T", "reference", "source"}, {"T"})
    steps = _positive_ints(f"{where}.T", d["T"])
    ref = d.get("reference") or {}
    if not isinstance(ref, dict):
        raise SuiteError(f"{where}.reference must map T to an accuracy in percent, got {ref!r}")
    pairs = []
    for t, v in ref.items():
        if t not in steps:
            raise SuiteError(f"{where}.reference: T {t!r} is not one of {where}.T {list(steps)}")
        pairs.append((int(t), _number(f"{where}.reference[{t}]", v)))
    return TimeSteps(steps, tuple(sorted(pairs)), str(d.get("source") or ""))


def load_suite(suite: str | Path) -> Suite:
    """Read and check a suite file (a path or a name under ``configs/suites``)."""
    from lightning_snn.yamlfile import load_yaml

    path = resolve(str(suite))
    data = load_yaml(path)  # strict: a key twice, a tab, not UTF-8, empty: one line naming file and line
    if data is None:
        raise SuiteError(f"suite file {path} is empty (valid: description, seeds, rows)")
    top = _keys(f"suite {path}", data, {"description", "seeds", "rows"}, {"rows"})
    default_seeds = _seeds(f"{path}", top["seeds"]) if "seeds" in top else None
    if not isinstance(top["rows"], list) or not top["rows"]:
        raise SuiteError(f"{path}: rows must be a non-empty list of rows")
    rows: list[Row] = []
    for i, item in enumerate(top["rows"]):
        where = f"{path} row {i + 1}"
        d = _keys(where, item, {"name", "config", "overrides", "seeds", "reference", "timesteps", "init_from",
                                "baseline"},
                  {"name", "config", "reference"})
        name = d["name"]
        where = f"{path} row {name!r}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise SuiteError(f"{where}: name must match [a-z0-9_]+")
        if any(r.name == name for r in rows):
            raise SuiteError(f"{path}: duplicate row {name!r} (valid: each row name once)")
        config = (path.parent / str(d["config"])).resolve()
        if not config.is_file():
            raise SuiteError(f"{where}: config {d['config']!r} does not exist ({config}; valid: a path "
                             "relative to the suite file)")
        overrides = d.get("overrides") or []
        if not isinstance(overrides, list) or not all(isinstance(o, str) and o.startswith("--") for o in overrides):
            raise SuiteError(f"{where}: overrides must be a list of '--key=value' options, got {overrides!r}")
        if "seeds" in d:
            seeds = _seeds(where, d["seeds"])
        elif default_seeds is not None:
            seeds = default_seeds
        else:
            raise SuiteError(f"{where}: no seeds (valid: a suite-level 'seeds' list or one on the row)")
        steps = _timesteps(f"{where} timesteps", d["timesteps"]) if d.get("timesteps") is not None else None
        source = d.get("init_from")
        if source is not None and not isinstance(source, str):
            raise SuiteError(f"{where}: init_from must be the name of another row, got {source!r}")
        baseline = d.get("baseline")
        if baseline is not None and (not isinstance(baseline, str) or baseline == name):
            raise SuiteError(f"{where}: baseline must name another row of the suite, got {baseline!r}")
        rows.append(Row(name, config, tuple(overrides), seeds, _reference(f"{where} reference", d["reference"]),
                        steps, source, baseline))
    _check_sources(path, rows)
    names = [r.name for r in rows]
    for r in rows:
        if r.baseline is not None and r.baseline not in names:
            raise SuiteError(f"{path} row {r.name!r}: baseline {r.baseline!r} is not a row of the suite "
                             f"(valid: {', '.join(n for n in names if n != r.name)})")
    return Suite(path.stem, path.resolve(), str(top.get("description") or ""), default_seeds or (), tuple(rows))


def _check_sources(path: Path, rows: list[Row]) -> None:
    """Every ``init_from`` names another row that has the row's seeds, and no row starts from itself
    through a chain."""
    by_name = {r.name: r for r in rows}
    for r in rows:
        if r.init_from is None:
            continue
        src = by_name.get(r.init_from)
        if src is None or src is r:
            raise SuiteError(f"{path} row {r.name!r}: init_from {r.init_from!r} is not another row of the suite "
                             f"(valid: {', '.join(n for n in by_name if n != r.name)})")
        lacking = sorted(set(r.seeds) - set(src.seeds))
        if lacking:
            raise SuiteError(f"{path} row {r.name!r}: starts from row {src.name!r}, which has no seed {lacking[0]} "
                             f"(valid: seeds of {src.name!r}: {list(src.seeds)})")
        seen, cur = {r.name}, src
        while cur.init_from is not None:
            if cur.init_from in seen or cur.name in seen:
                raise SuiteError(f"{path} row {r.name!r}: init_from forms a cycle through {cur.name!r}")
            seen.add(cur.name)
            if cur.init_from not in by_name:
                break  # reported for that row
            cur = by_name[cur.init_from]


@dataclass
class Options:
    """What a launch adds to every run: options after ``--`` and where the runs live."""

    root: Path = Path("runs") / "suites"
    extra: list[str] = field(default_factory=list)
    retry_failed: bool = False
    wandb_project: str | None = None
