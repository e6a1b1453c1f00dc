"""The time-steps curves of a suite's rows (rows with ``timesteps``, see ``spec``): every run's
curve from its result file -> ``timesteps.csv`` (one line per run and T), a section of
``results.md`` (per row and T: our mean ± std over seeds next to the paper's value) and
``timesteps_<row>.png`` (the four panels of :func:`lightning_snn.timesteps.plot`, means over seeds,
the paper's accuracies as markers)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from lightning_snn.suite.execute import RESULT
from lightning_snn.suite.spec import Options, Suite

CURVE_COLUMNS = ["row", "seed", "T", "training_T", "samples", "acc", "loss", "spikes", "sops", "macs",
                 "energy_pj", "ann_energy_pj", "paper_acc"]


def curve_table(suite: Suite, opts: Options) -> pd.DataFrame:
    """One line per (finished run, T) of the rows that ask for a curve; accuracies in percent."""
    lines = []
    for row in suite.rows:
        if row.timesteps is None:
            continue
        paper = dict(row.timesteps.reference)
        for f in sorted((Path(opts.root) / suite.name / row.name).glob(f"seed*/{RESULT}")):
            result = json.loads(f.read_text())
            for point in result.get("timesteps") or []:
                lines.append({**point, "row": row.name, "seed": result["seed"], "acc": 100 * point["acc"],
                              "paper_acc": paper.get(point["T"])})
    return pd.DataFrame(lines, columns=CURVE_COLUMNS)


def write_curves(suite: Suite, opts: Options, out: Path) -> str:
    """Write ``timesteps.csv`` and a PNG per row under ``out``; return the Markdown section for
    ``results.md`` (empty when no row asks for a curve)."""
    from lightning_snn.timesteps import TimeStepRow, plot

    asked = [r for r in suite.rows if r.timesteps is not None]
    if not asked:
        return ""
    table = curve_table(suite, opts)
    table.to_csv(out / "timesteps.csv", index=False)
    parts = ["\n## Accuracy against inference time steps\n"]
    for row in asked:
        steps = row.timesteps
        mine = table[table["row"] == row.name]
        paper = dict(steps.reference)
        source = f" Paper: {steps.source}." if steps.source else ""
        if mine.empty:
            parts.append(f"\n`{row.name}`: no curve yet (T = {list(steps.T)}).{source}\n")
            continue
        g = mine.groupby("T")
        mean, std, n = g.mean(numeric_only=True), g.std(ddof=1, numeric_only=True), g.size()
        shown = pd.DataFrame({
            "T": mean.index,
            "ours acc %": [f"{m:.2f}" + (f" ± {s:.2f}" if k > 1 else "") for m, s, k in
                           zip(mean["acc"], std["acc"].fillna(0.0), n)],
            "n": n.values,
            "paper acc %": [f"{paper[t]:.2f}" if t in paper else "-" for t in mean.index],
            "spikes": [f"{v:.4g}" for v in mean["spikes"]],
            "SOPs": [f"{v:.4g}" for v in mean["sops"]],
            "energy nJ": [f"{v / 1e3:.4g}" for v in mean["energy_pj"]],
        })
        trained = sorted(set(mine.loc[mine["training_T"].astype(bool), "T"]))
        parts.append(f"\n`{row.name}` (trained at T = {', '.join(map(str, trained)) or '?'}; counts per "
                     f"sample){source}\n\n" + shown.to_markdown(index=False) + "\n")
        rows = [TimeStepRow(T=int(t), training_T=t in trained, samples=int(mean.loc[t, "samples"]),
                            acc=mean.loc[t, "acc"] / 100, loss=mean.loc[t, "loss"], spikes=mean.loc[t, "spikes"],
                            sops=mean.loc[t, "sops"], macs=mean.loc[t, "macs"], energy_pj=mean.loc[t, "energy_pj"],
                            ann_energy_pj=mean.loc[t, "ann_energy_pj"]) for t in mean.index]
        plot(rows, out / f"timesteps_{row.name}.png",
             f"suite {suite.name}, row {row.name}: mean over {int(n.max())} seed(s)", paper or None)
    return "".join(parts)
