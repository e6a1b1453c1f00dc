"""A suite's results table: every run's result file -> ``results.csv`` (one line per run) and
``results.md`` (per row: mean ± std over seeds next to the paper's value ± std and its grade, the
difference, a verdict), a PNG, and optionally a W&B summary run. It only reads the runs' result files, so it can
be rebuilt at any time from any launcher's runs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from lightning_snn.suite.execute import RESULT, read_result
from lightning_snn.suite.spec import Options, Reference, Suite

RUN_COLUMNS = ["row", "seed", "metric", "protocol", "value", "final", "best", "best_epoch", "epochs",
               "shortened", "wall_s", "device", "devices", "device_hours", "peak_memory_gb", "peak_memory_kind",
               "images_per_s", "sops_per_sample", "energy_uj_per_sample", "step_memory_gb", "step_memory_kind",
               "step_s"]
RATIO_VERDICTS = ("reproduced", "below", "above", "at or below")


def verdict(mean: float | None, std: float | None, n: int, ref: Reference, any_shortened: bool) -> str:
    """``not run`` (no result), ``shortened`` (a run trained less than the row asks), ``unknown`` (no
    paper value), ``reproduced`` (the paper's value is inside our mean ± 2 std, or ours inside the
    paper's ± range), else ``below`` / ``above``."""
    if n == 0 or mean is None or math.isnan(mean):
        return "not run"
    if any_shortened:
        return "shortened"
    if ref.value is None:
        return "unknown"
    ours = 2 * (std if std is not None and not math.isnan(std) else 0.0)
    if abs(ref.value - mean) <= ours or (ref.std is not None and abs(mean - ref.value) <= ref.std):
        return "reproduced"
    lower_is_better = not ref.metric.endswith("acc")
    return "below" if (mean < ref.value) != lower_is_better else "above"


def graded_verdict(plain: str, ref: Reference) -> str:
    """``plain`` with `` (provisional)`` appended where it compares against a value that only one
    later source gives or that sources disagree on (``Reference.provisional``)."""
    if ref.provisional and plain in RATIO_VERDICTS:
        return f"{plain} (provisional)"
    return plain


def run_table(suite: Suite, opts: Options) -> pd.DataFrame:
    """One line per finished run of the suite's rows."""
    lines = []
    for row in suite.rows:
        for f in sorted((Path(opts.root) / suite.name / row.name).glob(f"seed*/{RESULT}")):
            seed = f.parent.name.removeprefix("seed")
            if not seed.isdigit():  # not a run's folder (e.g. "seed-1"): never a result
                continue
            lines.append(read_result(f.parent, row.name, int(seed)))  # identity from the folder
    return pd.DataFrame(lines, columns=RUN_COLUMNS)


def _mean(runs: pd.DataFrame, row: str, column: str) -> float | None:
    values = pd.to_numeric(runs.loc[runs["row"] == row, column], errors="coerce").dropna()
    return float(values.mean()) if len(values) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratio_table(suite: Suite, runs: pd.DataFrame) -> pd.DataFrame:
    """Per row with a ``baseline``: our step memory and step time as ratios to the baseline row's
    (means over seeds), the paper's ratios (``value`` and ``time`` over the baseline's), and the
    verdict: ``at or below`` (our memory ratio <= the paper's) or ``above``; ``provisional`` where
    either paper value is single-source or conflicting."""
    out = []
    for row in suite.rows:
        if row.baseline is None:
            continue
        base = suite.row(row.baseline)
        ref, bref = row.reference, base.reference
        ours = _ratio(_mean(runs, row.name, "step_memory_gb"), _mean(runs, base.name, "step_memory_gb"))
        ours_time = _ratio(_mean(runs, row.name, "step_s"), _mean(runs, base.name, "step_s"))
        paper = _ratio(ref.value, bref.value)
        paper_time = _ratio(ref.time, bref.time)
        plain = ("not run" if ours is None else "unknown" if paper is None
                 else "at or below" if ours <= paper else "above")
        weak = ref if ref.provisional else bref
        out.append({"row": row.name, "baseline": base.name, "memory_ratio": ours, "paper_memory_ratio": paper,
                    "time_ratio": ours_time, "paper_time_ratio": paper_time, "grade": ref.grade,
                    "verdict": graded_verdict(plain, weak)})
    return pd.DataFrame(out, columns=["row", "baseline", "memory_ratio", "paper_memory_ratio", "time_ratio",
                                      "paper_time_ratio", "grade", "verdict"])


def row_table(suite: Suite, runs: pd.DataFrame) -> pd.DataFrame:
    """Per row: our mean ± std over seeds, n, the paper's value ± std, the difference, the verdict
    (for rows compared as ratios, the ratio's verdict, and ``baseline`` for their baselines)."""
    ratios = ratio_table(suite, runs).set_index("row")["verdict"].to_dict()
    baselines = {r.baseline for r in suite.rows if r.baseline}
    out = []
    for row in suite.rows:
        ref = row.reference
        mine = runs[runs["row"] == row.name]
        values = mine["value"].dropna().astype(float)
        n = len(values)
        mean = float(values.mean()) if n else None
        std = float(values.std(ddof=1)) if n > 1 else None  # one run has no spread: shown without ±
        out.append({
            "row": row.name, "metric": ref.metric, "protocol": ref.protocol, "n": n, "mean": mean, "std": std,
            "paper": ref.value, "paper_std": ref.std, "paper_n": ref.seeds, "grade": ref.grade,
            "diff": mean - ref.value if mean is not None and ref.value is not None else None,
            "verdict": (ratios[row.name] if row.name in ratios else "baseline" if row.name in baselines and n
                        else graded_verdict(verdict(mean, std, n, ref, bool(mine["shortened"].any())), ref)),
            "device_hours": float(mine["device_hours"].sum()) if n else None,
            "source": ref.source,
        })
    return pd.DataFrame(out)


def _pm(mean: Any, std: Any, digits: int = 2) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None and not math.isnan(std) else "")


def markdown(suite: Suite, rows: pd.DataFrame, runs: pd.DataFrame) -> str:
    """``results.md``: the table a paper would print, with the run cost beside it."""
    shown = pd.DataFrame({
        "row": rows["row"], "metric": rows["metric"] + " (" + rows["protocol"] + ")",
        "ours (mean ± std)": [_pm(m, s) for m, s in zip(rows["mean"], rows["std"])],
        "n": rows["n"],
        "paper": [_pm(m, s) if m is not None and not pd.isna(m) else "unknown"
                  for m, s in zip(rows["paper"], rows["paper_std"])],
        "grade": [g if isinstance(g, str) else "-" for g in rows["grade"]],
        "diff": [f"{d:+.2f}" if d is not None and not pd.isna(d) else "-" for d in rows["diff"]],
        "verdict": rows["verdict"],
        "device-hours": [f"{h:.3f}" if h is not None and not pd.isna(h) else "-" for h in rows["device_hours"]],
    })
    devices = ", ".join(sorted(set(runs["device"].dropna()))) or "none"
    head = (f"# Suite `{suite.name}`\n\n{suite.description}\n\n"
            f"{len(runs)} runs finished; devices: {devices}. Accuracies in percent; `ours` is the mean ± "
            "sample std over seeds of the row's metric under the row's protocol (`final`: the final "
            "weights on the test split; `best_epoch`: the best epoch of the test curve). `grade`: how far the "
            "paper's value can be trusted (`primary`: the authors' README, code or abstract; `secondary`: "
            "reprinted identically by two or more later sources; `single-source`: one later source; "
            "`conflict`: sources disagree); a verdict against a `single-source` or `conflict` value is "
            "provisional.\n\n")
    text = head + shown.to_markdown(index=False) + "\n"
    ratios = ratio_table(suite, runs)
    if len(ratios):
        kinds = ", ".join(sorted(set(runs["step_memory_kind"].dropna()))) or "none measured"
        r = lambda v: f"{v:.2f}" if v is not None and not pd.isna(v) else "-"  # noqa: E731
        table = pd.DataFrame({
            "row": ratios["row"], "baseline": ratios["baseline"],
            "memory (ours)": [r(v) for v in ratios["memory_ratio"]],
            "memory (paper)": [r(v) for v in ratios["paper_memory_ratio"]],
            "time (ours)": [r(v) for v in ratios["time_ratio"]],
            "time (paper)": [r(v) for v in ratios["paper_time_ratio"]],
            "grade": [g if isinstance(g, str) else "-" for g in ratios["grade"]],
            "verdict": ratios["verdict"],
        })
        text += ("\n## Ratios to the baseline row\n\nPeak memory of a training step and time per step, "
                 "each as the ratio of the row's mean to its baseline row's (the same net, data shapes and "
                 "batch; ratios transfer across machines where absolute figures do not), next to the "
                 "paper's ratio of its reported figures. Verdict: `at or below` when our memory ratio is at "
                 f"or below the paper's. Memory measured as: {kinds}.\n\n" + table.to_markdown(index=False) + "\n")
    return text


def plot(rows: pd.DataFrame, path: Path) -> None:
    """Per row: our mean with ± std error bars, the paper's value as a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(rows) + 2), 3.5))
    x = range(len(rows))
    mean = pd.to_numeric(rows["mean"], errors="coerce")
    std = pd.to_numeric(rows["std"], errors="coerce").fillna(0.0)
    ax.errorbar(x, mean, yerr=std, fmt="o", capsize=4, label="ours (mean ± std)")
    paper = pd.to_numeric(rows["paper"], errors="coerce")
    ax.errorbar(x, paper, yerr=pd.to_numeric(rows["paper_std"], errors="coerce").fillna(0.0), fmt="x",
                color="C3", capsize=3, label="paper")
    ax.set_xticks(list(x), rows["row"], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(", ".join(sorted(set(rows["metric"]))))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def log_wandb(suite: Suite, rows: pd.DataFrame, runs: pd.DataFrame, png: Path, project: str, out: Path) -> None:
    """A summary run in the suite's W&B group with both tables and the plot."""
    import wandb

    run = wandb.init(project=project, group=suite.name, job_type="suite-report", name=f"{suite.name}/report",
                     dir=str(out), reinit=True)
    run.log({"suite/rows": wandb.Table(dataframe=rows.astype(object).where(rows.notna(), None)),
             "suite/runs": wandb.Table(dataframe=runs.astype(object).where(runs.notna(), None)),
             "suite/plot": wandb.Image(str(png))})
    run.finish()


def write_report(suite: Suite, opts: Options, out: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``results.csv``, ``results.md`` and ``results.png`` under ``out`` (default the suite's run
    folder) and return (rows, runs)."""
    runs = run_table(suite, opts)
    if runs.empty:  # nothing to report: say where it looked, create nothing
        from lightning_snn.suite.spec import SuiteError

        raise SuiteError(f"suite {suite.name}: no finished run under {Path(opts.root) / suite.name} "
                         "(valid: --root where `suite run` wrote the runs, or `suite run` first)")
    out = Path(out or Path(opts.root) / suite.name)
    out.mkdir(parents=True, exist_ok=True)
    rows = row_table(suite, runs)
    runs.to_csv(out / "results.csv", index=False)
    from lightning_snn.suite.curves import write_curves  # rows with ``timesteps``: their curves

    (out / "results.md").write_text(markdown(suite, rows, runs) + write_curves(suite, opts, out))
    plot(rows, out / "results.png")
    if opts.wandb_project:
        log_wandb(suite, rows, runs, out / "results.png", opts.wandb_project, out)
    return rows, runs
