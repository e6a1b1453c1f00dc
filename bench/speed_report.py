"""Markdown tables and the images/s-against-T plot of ``bench/speed.py``'s results.

    python bench/speed_report.py results/a/speed.json results/b/speed.json --out results/all
merges the JSON of several runs (same machine) into one ``speed.json``, ``speed.md`` and ``speed.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def _fmt(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def write_table(results: dict[str, Any], path: Path) -> None:
    """One table for BPTT (both frameworks side by side, speed-up and peak memory) and one for the
    other strategies (lightning-snn only)."""
    env = results["env"]
    cfg = env["config"]
    lines = [
        f"Device: {env['device']}; torch {env['torch']}; SpikingJelly {env['spikingjelly']} "
        f"(neurons: {env['sj_backend']}); lightning-snn neuron back end: {env['lsnn_backend']}. "
        f"Batch {cfg['batch']}, width x{cfg['width']}, 3x32x32 input, IF neuron, sigmoid surrogate "
        f"alpha 4; median of {cfg['repeats']} runs of {cfg['iters']} steps after {cfg['warmup']} "
        "warm-up steps, frameworks alternating.",
        "",
        "| network | precision | mode | T | lightning-snn img/s | SpikingJelly img/s | speed-up "
        "| lightning-snn peak MiB | SpikingJelly peak MiB | max grad rel diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    cells: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in results["rows"]:
        if r["strategy"] == "bptt":
            cells[(r["network"], r["precision"], r["mode"], r["T"])][r["framework"]] = r
    for (net, prec, mode, T), fw in cells.items():
        a, b = fw.get("lightning-snn"), fw.get("spikingjelly")
        speed = a["images_per_s"] / b["images_per_s"] if a and b else None
        lines.append(
            f"| {net} | {prec} | {mode} | {T} | {_fmt(a and a['images_per_s'])} "
            f"| {_fmt(b and b['images_per_s'])} | {_fmt(speed, 2)}x "
            f"| {_fmt(a and a['peak_mib'], 1)} | {_fmt(b and b['peak_mib'], 1)} "
            f"| {(a or b or {}).get('max_grad_rel_diff', float('nan')):.1e} |"
        )
    others = [r for r in results["rows"] if r["strategy"] != "bptt"]
    if others:
        lines += ["", "Other strategies (lightning-snn):", "",
                  "| strategy | network | precision | T | img/s | ms/step | peak MiB |",
                  "|---|---|---|---|---|---|---|"]
        for r in others:
            lines.append(f"| {r['strategy']} | {r['network']} | {r['precision']} | {r['T']} "
                         f"| {_fmt(r['images_per_s'])} | {_fmt(r['ms_per_step'], 1)} "
                         f"| {_fmt(r['peak_mib'], 1)} |")
    if results["errors"]:
        lines += ["", "Not measured:", ""]
        lines += [f"- {e.get('strategy')} {e.get('network', '')} T={e.get('T')} {e.get('precision')} "
                  f"{e.get('mode')}: {e['error'].splitlines()[0][:200]}" for e in results["errors"]]
    path.write_text("\n".join(lines) + "\n")


def write_plot(results: dict[str, Any], path: Path) -> None:
    """Images/s against T: one panel per network (and one for the other strategies), one line per
    framework / back end / precision / mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env = results["env"]
    panels: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in results["rows"]:
        if r["strategy"] == "bptt":
            back = env["lsnn_backend"] if r["framework"] == "lightning-snn" else env["sj_backend"]
            label = f"{r['framework']} ({back}) {r['precision']} {r['mode']}"
            panels[f"{r['network']} BPTT"][label].append((r["T"], r["images_per_s"]))
        else:
            label = f"{r['strategy']} ({r['network']}) {r['precision']}"
            panels["lightning-snn, other strategies"][label].append((r["T"], r["images_per_s"]))
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels.items()):
        ts: set[int] = set()
        for label, pts in sorted(lines.items()):
            pts.sort()
            ts.update(t for t, _ in pts)
            style = "--" if label.startswith("spikingjelly") else "-"
            ax.plot([t for t, _ in pts], [v for _, v in pts], style, marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(ts), [str(t) for t in sorted(ts)])
        ax.set_yscale("log")
        ax.set_xlabel("T (time steps)")
        ax.set_ylabel("images / s")
        ax.set_title(title)
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"training step, {env['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def merge(paths: list[Path]) -> dict[str, Any]:
    """Rows and errors of several runs; the environment of the first (its config is per run)."""
    runs = [json.loads(p.read_text()) for p in paths]
    env = dict(runs[0]["env"])
    devices = {r["env"]["device"] for r in runs}
    if len(devices) > 1:
        raise ValueError(f"runs from different devices cannot share a table: {sorted(devices)}")
    return {"env": env, "rows": [row for r in runs for row in r["rows"]],
            "errors": [e for r in runs for e in r["errors"]]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=None, help="folder (default: that of the first file)")
    args = p.parse_args(argv)
    missing = [str(j) for j in args.json if not j.is_file()]
    if missing:
        p.error(f"no such result file: {missing}")
    out = args.out or args.json[0].parent
    out.mkdir(parents=True, exist_ok=True)
    results = merge(args.json)
    if len(args.json) > 1:
        (out / "speed.json").write_text(json.dumps(results, indent=2))
    write_table(results, out / "speed.md")
    try:
        write_plot(results, out / "speed.png")
    except ImportError as e:
        print(f"no plot: {e}", file=sys.stderr)
    print((out / "speed.md").read_text())


if __name__ == "__main__":
    main()
