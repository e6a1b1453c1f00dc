"""Results kept in the repository: finished runs' result files copied into ``results/<suite>/``, the
suite's report rebuilt there from them, and one summary table of every reproduced row.

The result files are the only input: ``results.csv`` / ``results.md`` / ``results.png`` and the
summary are rebuilt from them by the same code (a test checks the committed ones are), so a table in
``results/`` cannot be edited by hand without the test failing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from lightning_snn.atomic import write_json
from lightning_snn.suite.execute import RESULT
from lightning_snn.suite.spec import Options, Suite, SuiteError, load_suite

SUMMARY = "summary.md"
BEGIN, END = "<!-- reproduced:begin -->", "<!-- reproduced:end -->"


CHECKOUT = Path(__file__).resolve().parents[2]


def portable(result: dict, base: Path = CHECKOUT) -> dict:
    """``result`` with the absolute paths of its command line (``args``) made relative to the
    checkout ``base`` (or reduced to their name outside it): a published result names no machine's
    folders."""
    def rel(arg: str) -> str:
        if not arg.startswith("/"):
            return arg
        path = Path(arg)
        try:
            return str(path.relative_to(base))
        except ValueError:
            return path.name
    return {**result, "args": [rel(a) for a in result.get("args", [])]} if "args" in result else dict(result)


def copy_results(suite: Suite, runs_root: Path, to: Path) -> list[Path]:
    """Copy every finished run's result file of ``suite`` from ``runs_root`` into ``to`` (its
    command line's paths made :func:`portable`); a file already there is kept (an identical one is
    skipped, a different one is an error: a published result is never replaced silently). Returns
    the files copied."""
    copied = []
    for row in suite.rows:
        for src in sorted((runs_root / suite.name / row.name).glob(f"seed*/{RESULT}")):
            dst = to / suite.name / row.name / src.parent.name / RESULT
            result = portable(json.loads(src.read_text()))
            if dst.is_file():
                if json.loads(dst.read_text()) != result:
                    raise SuiteError(f"{dst} exists and differs from {src}: a published result is never replaced "
                                     "(remove it first if the new run is meant to replace it)")
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            write_json(dst, result)
            copied.append(dst)
    return copied


def published_suites(results: Path) -> list[Suite]:
    """The suites with a folder under ``results`` (by name: ``configs/suites/<name>.yaml``)."""
    return [load_suite(d.name) for d in sorted(results.iterdir()) if d.is_dir() and (d / "results.md").is_file()]


def summary(results: Path) -> str:
    """One markdown table of every row with at least one published run, over all suites."""
    from lightning_snn.suite.report import row_table, run_table

    frames, ratios = [], []
    for suite in published_suites(results):
        rows = row_table(suite, run_table(suite, Options(root=results)))
        rows = rows[rows["n"] > 0]
        measured = rows["protocol"] == "measured"  # memory / time rows: compared as ratios, in their own table
        if measured.any():
            ratios.append(f"`{suite.name}`: {int(measured.sum())} measured rows, compared as ratios in "
                          f"[results/{suite.name}/results.md](results/{suite.name}/results.md)")
        frames.append(rows[~measured].assign(suite=suite.name))
    if not frames or all(f.empty for f in frames):
        return "No published results yet.\n"
    table = pd.concat([f for f in frames if not f.empty], ignore_index=True)

    def pm(m: float | None, s: float | None) -> str:
        if m is None or pd.isna(m):
            return "unknown"
        return f"{m:.2f}" + ("" if s is None or pd.isna(s) else f" ± {s:.2f}")

    shown = pd.DataFrame({
        "suite": table["suite"], "row": table["row"],
        "metric": table["metric"] + " (" + table["protocol"] + ")",
        "ours": [pm(m, s) for m, s in zip(table["mean"], table["std"])], "n": table["n"],
        "paper": [pm(m, s) for m, s in zip(table["paper"], table["paper_std"])],
        **({"grade": table["grade"].fillna("-")} if "grade" in table else {}),
        "verdict": table["verdict"],
    })
    tail = "".join(f"\n{line}.\n" for line in ratios)
    return shown.to_markdown(index=False) + "\n" + tail


def readme_block(results: Path) -> str:
    """The README's "Reproduced so far" block, between its markers."""
    return f"{BEGIN}\n{summary(results)}{END}"
