"""Accuracy, spikes, synaptic operations and energy of one trained network against the number of
time steps it is run for at inference (the "latency" curves papers draw: DSR's Fig. 3, OTTT's
ImageNet sweep of a T = 6 model tested at T = 1 ... 12).

The checkpoint's weights are evaluated unchanged at each ``T``; only the strategy's number of
steps differs (the length of the forward simulation for IDE / SPIDE, the number of event frames
for event data). Spikes, SOPs and energy are counted by the spike / energy report
(:class:`lightning_snn.energy.SpikeEnergyReport`), so the curve and the report agree by
construction. Written: ``timesteps.csv`` (one row per T) and ``timesteps.png`` (four panels:
accuracy, spikes, SOPs and energy per sample against T, the training T marked).
"""

from __future__ import annotations

import csv
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

if TYPE_CHECKING:  # the curve's CSV rows and plot are read by `suite report` without Lightning
    import pytorch_lightning as pl

from lightning_snn.errors import UsageError, one_line

CSV_NAME, PNG_NAME = "timesteps.csv", "timesteps.png"


@dataclass
class TimeStepRow:
    """One evaluation of the checkpoint at ``T`` steps (counts per sample; NaN: not counted)."""

    T: int
    training_T: bool  # the T the checkpoint was trained with
    samples: int
    acc: float
    loss: float
    spikes: float
    sops: float
    macs: float
    energy_pj: float
    ann_energy_pj: float


def check_time_steps(values: Any) -> list[int]:
    """``--T``: a non-empty list of distinct positive integers, returned sorted; else one line."""
    valid = "(valid: distinct integers >= 1, e.g. --T 1 2 4 6 8)"
    if not isinstance(values, (list, tuple)) or not values:
        raise UsageError(f"--T {values!r}: give the time steps to evaluate {valid}")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad:
        raise UsageError(f"--T {list(values)}: {bad[0]!r} is not a positive integer {valid}")
    if len(set(values)) != len(values):
        raise UsageError(f"--T {list(values)}: a time step is repeated {valid}")
    return sorted(values)


@contextmanager
def run_at(module: pl.LightningModule, T: int) -> Iterator[None]:
    """Run ``module``'s strategy (and so the report, which reads ``strategy.T``) for ``T`` steps,
    restoring its own T afterwards. The weights and every other setting are untouched."""
    strategy = module.strategy
    before = strategy.T
    strategy.T = T
    try:
        yield
    finally:
        strategy.T = before


def datamodule_at(datamodule: Optional[pl.LightningDataModule], T: int) -> Optional[pl.LightningDataModule]:
    """The data module for ``T`` steps: the same one for static images (repeated at every step), a
    copy binning ``T`` frames per recording for event data (one frame per step)."""
    spec = getattr(datamodule, "spec", None)
    if datamodule is None or spec is None or getattr(spec, "events", None) is None:
        return datamodule
    return type(datamodule)(**{**dict(datamodule.hparams), "frames": T})


def sweep(trainer: pl.Trainer, module: pl.LightningModule, datamodule: Optional[pl.LightningDataModule],
          time_steps: Sequence[int], training_T: int, out_dir: Path, split: str = "test",
          count: bool = True) -> list[TimeStepRow]:
    """Evaluate ``module`` at every T of ``time_steps`` on ``split``; each T's spike report (table,
    CSV, PNG) goes to ``out_dir/T<k>/``. ``count=False``: accuracy only (a network the report
    cannot count: spikes, SOPs and energy are NaN)."""
    from lightning_snn.energy import SpikeEnergyReport

    rows = []
    for T in time_steps:
        cb = SpikeEnergyReport(out_dir=str(out_dir / f"T{T}"), stages=(("test",) if split == "test" else ("validate",)))
        if count:
            trainer.callbacks.append(cb)
        try:
            with run_at(module, T):
                run = trainer.test if split == "test" else trainer.validate
                (metrics,) = run(module, datamodule=datamodule_at(datamodule, T), verbose=False)
        finally:
            if count:
                trainer.callbacks.remove(cb)
        stage = "test" if split == "test" else "val"
        t = cb.totals
        nan = float("nan")
        rows.append(TimeStepRow(
            T=T, training_T=T == training_T, samples=int(t.get("samples", 0)),
            acc=float(metrics[f"{stage}/acc"]), loss=float(metrics[f"{stage}/loss"]),
            spikes=t.get("spikes", nan), sops=t.get("sops", nan), macs=t.get("snn_macs", nan),
            energy_pj=t.get("snn_energy_pj", nan), ann_energy_pj=t.get("ann_energy_pj", nan)))
    return rows


def countable(module: pl.LightningModule) -> str | None:
    """Why the report cannot count this network's operations (``None``: it can)."""
    from lightning_snn.energy import NetworkCounts

    try:
        NetworkCounts(module.net, tuple(module.hparams.input_shape))
    except Exception as e:  # noqa: BLE001 - a layer NIR cannot express: accuracy only
        return one_line(e)
    return None


def write_csv(rows: Sequence[TimeStepRow], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(TimeStepRow)])
        w.writeheader()
        for r in rows:
            w.writerow(asdict(r))


def read_csv(path: Path) -> list[TimeStepRow]:
    """The rows of a ``timesteps.csv`` (as written by :func:`write_csv`)."""
    out = []
    with open(path) as f:
        for r in csv.DictReader(f):
            out.append(TimeStepRow(T=int(r["T"]), training_T=r["training_T"] == "True", samples=int(r["samples"]),
                                   **{k: float(r[k]) for k in ("acc", "loss", "spikes", "sops", "macs",
                                                               "energy_pj", "ann_energy_pj")}))
    return out


def format_table(rows: Sequence[TimeStepRow]) -> str:
    head = f"{'T':>4}  {'acc %':>7}{'spikes':>12}{'SOPs':>12}{'MACs':>12}{'energy nJ':>12}"
    lines = [head, "-" * len(head)]
    for r in rows:
        mark = "*" if r.training_T else " "
        lines.append(f"{r.T:>4}{mark} {100 * r.acc:>7.2f}{r.spikes:>12.1f}{r.sops:>12.4g}{r.macs:>12.4g}"
                     f"{r.energy_pj / 1e3:>12.4g}")
    lines.append("* the checkpoint's training T; counts per sample")
    return "\n".join(lines)


def plot(rows: Sequence[TimeStepRow], path: Path, heading: str = "",
         reference: dict[int, float] | None = None, reference_label: str = "paper") -> None:
    """Four panels against T: accuracy (with ``reference`` accuracies in percent as markers),
    spikes, SOPs and energy per sample; a dashed line at the training T."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ts = [r.T for r in rows]
    trained = [r.T for r in rows if r.training_T]
    panels = [("accuracy (%)", [100 * r.acc for r in rows]), ("spikes per sample", [r.spikes for r in rows]),
              ("SOPs per sample", [r.sops for r in rows]), ("energy per sample (nJ)", [r.energy_pj / 1e3 for r in rows])]
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.4))
    for ax, (label, ys) in zip(axes.flat, panels):
        ax.plot(Ts, ys, "o-", color="tab:blue", label="this run")
        for t in trained:
            ax.axvline(t, color="gray", ls="--", lw=1, label=f"training T = {t}")
        ax.set_xlabel("time steps T at inference")
        ax.set_ylabel(label)
        ax.set_xticks(sorted(set(Ts) | set(reference or {})))
        ax.grid(alpha=0.3)
    if reference:
        ks = sorted(reference)
        axes.flat[0].plot(ks, [reference[k] for k in ks], "x--", color="tab:red", label=reference_label)
    axes.flat[0].legend(fontsize=7)
    if heading:
        fig.suptitle(heading, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def heading(module: pl.LightningModule, datamodule: Any, weights: str) -> str:
    dataset = str(getattr(datamodule, "hparams", {}).get("dataset", "data"))
    model = str(module.hparams.get("network", type(module.net).__name__))
    strategy = str(module.hparams.get("strategy", ""))
    return f"{model} ({strategy}) on {dataset}: {weights} evaluated at each T"


def run_curve(trainer: pl.Trainer, module: pl.LightningModule, datamodule: Optional[pl.LightningDataModule],
              weights: str, time_steps: Sequence[int], training_T: int, out_dir: Path,
              split: str = "test", reference: dict[int, float] | None = None) -> list[TimeStepRow]:
    """The whole command: sweep, print the table, write ``timesteps.csv`` / ``timesteps.png``
    (``weights``: what is evaluated, for the title; ``reference``: the paper's accuracies, %)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    why = countable(module)
    if why:
        print(f"warning: spikes / SOPs / energy not counted for this network ({why}); accuracy only",
              file=sys.stderr)
    rows = sweep(trainer, module, datamodule, time_steps, training_T, out_dir, split, count=why is None)
    if trainer.is_global_zero:
        print(format_table(rows))
        write_csv(rows, out_dir / CSV_NAME)
        plot(rows, out_dir / PNG_NAME, heading(module, datamodule, weights), reference)
        print(f"wrote {out_dir / CSV_NAME} and {out_dir / PNG_NAME}")
    return rows
