"""Spike and energy report: per spiking layer and per sample, firing rate, spikes, synaptic
operations (SOPs) and energy, next to the same network run as an ANN.

Counting rules (per sample, over the T steps of the strategy's run):

- ``spikes``: spikes emitted by the layer; ``rate`` = spikes / (neurons x T).
- ``SOPs`` = sum over neurons of spikes x fan-out, the fan-out of a neuron being the number of
  synapses it drives in the next synaptic layer(s) (exact per position for convolutions, padding
  borders included; through average pools, flatten, scales and residual sums). Each is one
  accumulate (AC): spikes are binary.
- ``MACs`` of a layer: the (input element, nonzero weight) pairs that meet, the positions the SOPs
  count: a convolution's zero padding is no input and costs nothing.
- ``MACs``: a synaptic layer fed with analogue values (the input layer, or a layer after a residual
  sum of analogue currents) does every multiply-accumulate: once per sample for a static image
  (its current is the same at every step, computed once, as this project runs it), at each of the
  T steps for event frames (and, conservatively, for analogue layers after the input).
- ANN: the same network with activations instead of spikes, one pass: every synaptic layer's MACs.
- Energy, 45 nm CMOS (Horowitz, ISSCC 2014; the figures SNN papers use): 0.9 pJ per AC and
  4.6 pJ per MAC.

The network's structure (which layer feeds which synapses) is read from its NIR graph
(:mod:`lightning_snn.nir.export`), so the report covers every model that can be exported.

Counting conventions (``convention``): ``project`` is the one above. ``neurobench`` counts as
NeuroBench 2.3.0 does (:mod:`lightning_snn.neurobench_counts`): per connection layer, the
(nonzero input, nonzero weight) pairs of every one of the T steps, ACs where the step's input is
binary and MACs otherwise. It differs from ``project`` in two places: the input layer of a static
image does its MACs at every step (x T), and a layer after an average pool of spikes does MACs on
the nonzero pooled values instead of spikes x fan-out ACs. Both conventions add the
convention-free figures NeuroBench reports: accuracy, activation sparsity (1 - spikes / (spiking
neurons x T x samples)), footprint (bytes of parameters and buffers) and connection sparsity.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from lightning_snn.neurobench_counts import NeuroBenchOps, connection_sparsity, footprint_bytes
from lightning_snn.neurons import LIF

CONVENTIONS = ("project", "neurobench")

E_AC_PJ = 0.9  # energy of one 32-bit accumulate, 45 nm
E_MAC_PJ = 4.6  # energy of one 32-bit multiply-accumulate, 45 nm


@dataclass
class LayerRow:
    """One row of the report (all counts per sample)."""

    layer: str
    kind: str  # "spiking" or "analogue-input" (project); "spiking" or "synaptic" (neurobench)
    neurons: int
    rate: float
    spikes: float
    fan_out: float  # mean synapses per neuron into the next synaptic layer(s)
    sops: float
    macs: float
    energy_pj: float
    spike_count: int = 0  # all spikes of the layer over every sample, exact (int64)
    dense: float = float("nan")  # neurobench: every input x every weight, all T steps (NeuroBench's Dense)
    convention: str = "project"


# ------------------------------------------------------------------------------ structure
_SYNAPTIC = ("Affine", "Linear", "Conv2d")


def _dense_macs(leaf: nn.Module, in_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one synaptic layer for one input: the (input element, nonzero
    weight) pairs that meet, the same positions the SOPs count. A convolution's zero padding is
    no input (a border output sums fewer products), and a diagonal 1x1 conv made from a batch norm
    does C, not C^2."""
    ones = (leaf.weight != 0).float()  # 1 per synapse
    x = torch.ones(1, *in_shape)
    with torch.no_grad():
        if isinstance(leaf, nn.Linear):
            y = torch.nn.functional.linear(x, ones)
        else:
            y = torch.nn.functional.conv2d(x, ones, None, leaf.stride, leaf.padding, leaf.dilation, leaf.groups)
    return int(round(float(y.sum())))


def _fan_out_map(net: Any, start: str) -> Tensor:
    """Synapses driven by each element of node ``start``'s output, counted through the
    non-synaptic nodes downstream (pools, flatten, scales, sums) into the next synaptic nodes."""
    from lightning_snn.nir.importer import ScaleArray

    shape = net.node_shapes[start]
    x = torch.ones(1, 1, *shape, requires_grad=True)
    vals = {start: x}
    total = x.new_zeros(())
    todo = [start]
    while todo:
        n = todo.pop(0)
        for s, d in net.edges:
            if s != n or d == net.output_name or d in vals:
                continue
            m = net.nodes[d]
            leaf = m[0] if hasattr(m, "__getitem__") and not isinstance(m, LIF) else m
            if isinstance(leaf, (nn.Linear, nn.Conv2d)):
                # 1 per nonzero weight: each (input, output) pair with a synapse counts once
                ones = (leaf.weight != 0).to(x.dtype)
                v = vals[n]
                if isinstance(leaf, nn.Linear):
                    out = torch.nn.functional.linear(v, ones)
                else:
                    out = torch.nn.functional.conv2d(v.flatten(0, 1), ones, None, leaf.stride, leaf.padding,
                                                     leaf.dilation, leaf.groups)
                total = total + out.sum()
            elif isinstance(leaf, LIF):
                continue
            else:
                v = vals[n]
                if isinstance(leaf, nn.AvgPool2d):  # sum pool: a neuron reaches its pool cell(s)
                    k = leaf.kernel_size if isinstance(leaf.kernel_size, tuple) else (leaf.kernel_size,) * 2
                    y = m(v) * (k[0] * k[1])
                elif isinstance(leaf, ScaleArray):
                    y = v  # a scale changes weights, not connectivity
                else:
                    y = m(v)
                vals[d] = y
                todo.append(d)
    if total.requires_grad:
        total.backward()
        return x.grad[0, 0].detach()
    return torch.zeros(shape)


class NetworkCounts:
    """Fan-out of every spiking layer and the MACs of the synaptic layers, from the NIR graph."""

    def __init__(self, net: nn.Module, input_shape: tuple[int, ...]) -> None:
        # evaluation loops run under inference mode: the fan-outs are gradients, so leave it
        with torch.inference_mode(False), torch.enable_grad():
            self._build(net, input_shape)

    def _build(self, net: nn.Module, input_shape: tuple[int, ...]) -> None:
        from lightning_snn.nir.export import to_nir
        from lightning_snn.nir.importer import NIRNet

        graph = to_nir(net, input_shape)
        self.graph = graph
        imported = NIRNet(graph)
        self.fan_out: dict[str, Tensor] = {}
        for name in imported.order:
            if isinstance(imported.nodes[name], LIF):
                self.fan_out[name] = _fan_out_map(imported, name)
        # analogue-fed synaptic nodes: reachable from the input, or from another synaptic node,
        # without passing a spiking layer
        self.ann_macs: dict[str, int] = {}
        self.analogue_macs: dict[str, int] = {}
        self.input_fed: set[str] = set()  # analogue layers fed by the network input itself
        for n in imported.order:
            node = graph.nodes[n]
            if type(node).__name__ in _SYNAPTIC:
                macs = _dense_macs(imported.nodes[n][0], imported.node_shapes[n])
                self.ann_macs[n] = macs
                src = self._analogue_source(imported, n)
                if src:
                    self.analogue_macs[n] = macs
                    if src == "input":
                        self.input_fed.add(n)

    @staticmethod
    def _analogue_source(net: Any, n: str) -> str | None:
        """``input`` / ``synaptic`` when node ``n`` is reached from the input / another synaptic
        node without a spiking layer in between, else ``None``."""
        seen, todo = set(), [s for s, d in net.edges if d == n]
        while todo:
            s = todo.pop()
            if s in seen:
                continue
            seen.add(s)
            if s == net.input_name:
                return "input"
            node = net.nodes[s]
            if isinstance(node, LIF):
                continue
            leaf = node[0] if hasattr(node, "__getitem__") else node
            if isinstance(leaf, (nn.Linear, nn.Conv2d)):
                return "synaptic"
            todo += [a for a, d in net.edges if d == s]
        return None


# ------------------------------------------------------------------------------ the report
def build_rows(counts: NetworkCounts, spikes: dict[str, Tensor], elem_steps: dict[str, float],
               samples: float, T: int, analogue_steps: int) -> tuple[list[LayerRow], dict[str, float]]:
    """Rows per layer and the totals, from per-neuron spike sums over ``samples`` samples;
    layers fed by the input count their MACs ``analogue_steps`` times (1 for a static image, T for
    event frames), other analogue-fed layers T times."""
    rows: list[LayerRow] = []
    for n, macs in counts.analogue_macs.items():
        per = float(macs * (analogue_steps if n in counts.input_fed else T))
        rows.append(LayerRow(n, "analogue-input", 0, float("nan"), 0.0, float("nan"), 0.0, per, per * E_MAC_PJ))
    for n, fan in counts.fan_out.items():
        s = spikes.get(n)
        if s is None:
            continue
        # counts are int64 and sums float64: float32 holds integers exactly only up to 2^24
        s = s.to(fan.device).reshape(fan.shape)
        total = int(s.sum(dtype=torch.int64))
        sops = float((s.double() * fan.double()).sum()) / samples
        rows.append(LayerRow(
            n, "spiking", fan.numel(), total / max(elem_steps[n], 1.0), total / samples,
            float(fan.double().mean()), sops, 0.0, sops * E_AC_PJ, total,
        ))
    return rows, _totals(rows, float(sum(counts.ann_macs.values())), T, samples)


def _totals(rows: list[LayerRow], ann_macs: float, T: int, samples: float) -> dict[str, float]:
    """Per-sample totals of ``rows`` and of the ANN of the same network (``ann_macs``), with the
    energy of each (E = SOPs x E_AC + MACs x E_MAC) and their ratio."""
    sops = sum(r.sops for r in rows)
    macs = sum(r.macs for r in rows)
    totals = {
        "spikes": sum(r.spikes for r in rows), "spike_count": sum(r.spike_count for r in rows),
        "sops": sops, "snn_macs": macs,
        "snn_energy_pj": sops * E_AC_PJ + macs * E_MAC_PJ,
        "ann_macs": ann_macs, "ann_energy_pj": ann_macs * E_MAC_PJ, "T": float(T), "samples": samples,
    }
    totals["energy_ratio_snn_over_ann"] = totals["snn_energy_pj"] / totals["ann_energy_pj"] if ann_macs else float("nan")
    return totals


def build_neurobench_rows(ops: NeuroBenchOps, spikes: dict[str, Tensor], elem_steps: dict[str, float],
                          samples: float, T: int, ann_macs: float) -> tuple[list[LayerRow], dict[str, float]]:
    """Rows and totals under the ``neurobench`` convention: each spiking layer's spikes and rate,
    each connection layer's effective ACs, MACs and dense operations per sample (NeuroBench's
    ``Effective_ACs``, ``Effective_MACs``, ``Dense``); ``ann_macs``: the ANN of the same network,
    as in the ``project`` convention."""
    rows: list[LayerRow] = []
    for n in ops.layers:
        ac, mac, dense = ops.acs[n] / samples, ops.macs[n] / samples, ops.dense[n] / samples
        rows.append(LayerRow(n, "synaptic", 0, float("nan"), 0.0, float("nan"), ac, mac,
                             ac * E_AC_PJ + mac * E_MAC_PJ, 0, dense, "neurobench"))
    for n, s in spikes.items():
        total = int(s.sum(dtype=torch.int64))
        rows.append(LayerRow(n, "spiking", s.numel(), total / max(elem_steps[n], 1.0), total / samples,
                             float("nan"), 0.0, 0.0, 0.0, total, float("nan"), "neurobench"))
    totals = _totals(rows, ann_macs, T, samples)
    totals["dense"] = sum(r.dense for r in rows if r.kind == "synaptic")
    return rows, totals


def format_table(rows: list[LayerRow], totals: dict[str, float]) -> str:
    head = f"{'layer':<22}{'kind':<16}{'neurons':>9}{'rate':>8}{'spikes':>11}{'fan-out':>9}{'SOPs':>13}{'MACs':>13}{'energy nJ':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        rate = "-" if math.isnan(r.rate) else f"{r.rate:.4f}"
        fan = "-" if math.isnan(r.fan_out) else f"{r.fan_out:.1f}"
        lines.append(f"{r.layer:<22}{r.kind:<16}{r.neurons:>9}{rate:>8}{r.spikes:>11.1f}{fan:>9}"
                     f"{r.sops:>13.4g}{r.macs:>13.4g}{r.energy_pj / 1e3:>11.4g}")
    lines.append("-" * len(head))
    conv = rows[0].convention if rows else "project"
    if conv == "neurobench":
        lines.append(f"neurobench convention: {totals['sops']:.6g} effective ACs, {totals['snn_macs']:.6g} effective "
                     f"MACs, {totals['dense']:.6g} dense operations per sample (input layer x T, MACs after pools)")
    if "activation_sparsity" in totals:
        lines.append(f"accuracy {totals['accuracy']:.4f}, activation sparsity {totals['activation_sparsity']:.6f}, "
                     f"connection sparsity {totals['connection_sparsity']:.4f}, "
                     f"footprint {int(totals['footprint_bytes']):,} bytes")
    lines.append(f"SNN [{conv} convention] (T={int(totals['T'])}, per sample over {int(totals['samples'])} samples): "
                 f"{totals['spikes']:.1f} spikes ({totals['spike_count']:,} in all), "
                 f"{totals['sops']:.4g} SOPs x {E_AC_PJ} pJ + "
                 f"{totals['snn_macs']:.4g} MACs x {E_MAC_PJ} pJ = {totals['snn_energy_pj'] / 1e3:.4g} nJ")
    lines.append(f"ANN (same network, one pass): {totals['ann_macs']:.4g} MACs x {E_MAC_PJ} pJ = "
                 f"{totals['ann_energy_pj'] / 1e3:.4g} nJ; SNN / ANN energy = {totals['energy_ratio_snn_over_ann']:.3f}")
    return "\n".join(lines)


# columns of the total rows only: the convention-free figures NeuroBench reports
TOTAL_COLUMNS = ("accuracy", "activation_sparsity", "connection_sparsity", "footprint_bytes")


def write_csv(rows: list[LayerRow], totals: dict[str, float], path: Path) -> None:
    """One row per layer and the totals (``total_snn``, ``total_ann``); the ``convention`` column
    names the counting convention of every row."""
    conv = rows[0].convention if rows else "project"
    names = list(asdict(rows[0]).keys()) if rows else [f.name for f in LayerRow.__dataclass_fields__.values()]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*names, *TOTAL_COLUMNS])
        w.writeheader()
        for r in rows:
            w.writerow(asdict(r))
        extra = {k: totals[k] for k in TOTAL_COLUMNS if k in totals}
        w.writerow({"layer": "total_snn", "kind": "snn", "spikes": totals["spikes"],
                    "spike_count": totals["spike_count"], "sops": totals["sops"],
                    "macs": totals["snn_macs"], "energy_pj": totals["snn_energy_pj"],
                    "dense": totals.get("dense", float("nan")), "convention": conv, **extra})
        w.writerow({"layer": "total_ann", "kind": "ann", "macs": totals["ann_macs"], "energy_pj": totals["ann_energy_pj"],
                    "convention": conv})


def title(totals: dict[str, float], model: str, dataset: str, convention: str = "project") -> str:
    """The chart's title: what was measured, the counting convention and the energy per sample,
    SNN vs ANN."""
    return (f"{model}, T = {int(totals['T'])}, {dataset}, {convention} convention: "
            f"{totals['snn_energy_pj'] / 1e3:.4g} nJ per sample "
            f"(SNN) vs {totals['ann_energy_pj'] / 1e3:.4g} nJ (ANN), ratio {totals['energy_ratio_snn_over_ann']:.3f}")


def _bar(v: float) -> float:
    """A bar's height on the log axis: none (NaN) for a zero count."""
    return v if v > 0 else float("nan")


def plot(rows: list[LayerRow], path: Path, heading: str = "") -> None:
    """Bar charts: firing rate per spiking layer; operations per sample per layer (the SOPs of
    spiking layers, the MACs of analogue-fed ones such as the input layer, log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spk = [r for r in rows if r.kind == "spiking"]
    names = [r.layer for r in spk]
    fig, (a, b) = plt.subplots(1, 2, figsize=(max(7, 0.6 * len(rows) + 5), 4.4))
    a.bar(range(len(names)), [r.rate for r in spk], color="tab:blue")
    a.set_title("firing rate")
    a.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    if rows and rows[0].convention == "neurobench":  # per connection layer: effective ACs and MACs
        syn = [r for r in rows if r.kind == "synaptic"]
        pos = range(len(syn))
        b.bar([i - 0.2 for i in pos], [_bar(r.sops) for r in syn], width=0.4, color="tab:orange")
        b.bar([i + 0.2 for i in pos], [_bar(r.macs) for r in syn], width=0.4, color="tab:green")
        b.set_title("per sample: MACs (green), ACs (orange)", fontsize=9)
        b.set_xticks(pos, [r.layer for r in syn], rotation=60, ha="right", fontsize=7)
    else:
        ops = [(r.layer, r.macs, "tab:green") if r.kind != "spiking" else (r.layer, r.sops, "tab:orange") for r in rows]
        b.bar(range(len(ops)), [_bar(v) for _, v, _ in ops], color=[c for _, _, c in ops])
        b.set_title("per sample: MACs (green), SOPs (orange)", fontsize=9)
        b.set_xticks(range(len(ops)), [n for n, _, _ in ops], rotation=60, ha="right", fontsize=7)
    b.set_yscale("log")
    if heading:
        fig.suptitle(heading, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class SpikeEnergyReport(pl.Callback):
    """Count spikes, SOPs and MACs over an evaluation run and write the report.

    Spikes are read by hooks on the spiking layers (the multi-step ``forward`` and the single-step
    ``step``), so the numerics are unchanged. At the end of the run the table is printed, written as
    ``<out_dir>/<prefix>.csv`` and ``<prefix>.png`` (bar chart), and logged to a W&B logger if the
    trainer has one.

    Args:
        out_dir: where the CSV and PNG go (default: the trainer's log dir, else ``.``).
        stages: ``test`` and / or ``validate`` runs to report on.
        prefix: file-name stem and W&B key prefix.
        convention: ``project`` (this project's counting) or ``neurobench`` (NeuroBench 2.3.0's:
            input-layer MACs at every step, MACs after average pools of spikes; module doc).
    """

    def __init__(self, out_dir: str | None = None, stages: tuple[str, ...] = ("test",),
                 prefix: str = "spike_report", convention: str = "project") -> None:
        bad = set(stages) - {"test", "validate"}
        if bad:
            raise ValueError(f"stages must be 'test' and/or 'validate', got {sorted(bad)}")
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
        self.out_dir, self.stages, self.prefix, self.convention = out_dir, tuple(stages), prefix, convention
        self._ops: NeuroBenchOps | None = None
        self._stage = "test"
        self._hooks: list[Any] = []
        self._layers: dict[str, LIF] = {}
        self.rows: list[LayerRow] = []
        self.totals: dict[str, float] = {}
        self.title = ""

    # -------------------------------------------------------------- recording
    def _record(self, name: str, s: Tensor, leading: int) -> None:
        # a spike is a nonzero output (DSR may emit spikes of value Vth); counted in int64, exact
        per = (s.detach() != 0).sum(dim=tuple(range(leading)), dtype=torch.int64)
        self._spikes[name] = per if name not in self._spikes else self._spikes[name] + per
        self._elem_steps[name] = self._elem_steps.get(name, 0) + s.numel()

    def _attach(self, pl_module: pl.LightningModule, stage: str = "test") -> None:
        net = pl_module.net
        self._stage = stage
        self._counts = NetworkCounts(net, tuple(pl_module.hparams.input_shape))
        if self.convention == "neurobench":
            kind = getattr(net, "kind", "feedforward")
            if kind != "feedforward":  # feedback / recurrent synapses are not all connection modules
                raise ValueError(f"--convention neurobench counts feed-forward networks; {type(net).__name__} is "
                                 f"{kind} (valid: a feed-forward network, or --convention project)")
            self._ops = NeuroBenchOps(net, int(pl_module.strategy.T))
            self._ops.attach()
        self._spikes: dict[str, Tensor] = {}
        self._elem_steps: dict[str, int] = {}
        self._samples = 0
        self._events = False
        for path, m in net.named_modules():
            if not isinstance(m, LIF):
                continue
            name = path.removeprefix("nodes.").replace(".", "_")
            self._layers[name] = m

            def fwd(_m: Any, _i: Any, out: Tensor, name: str = name) -> None:
                self._record(name, out, 2)

            def step(x: Tensor, name: str = name, orig: Any = m.step) -> Tensor:
                s = orig(x)
                self._record(name, s, 1)
                return s

            self._hooks.append(m.register_forward_hook(fwd))
            m.step = step  # type: ignore[method-assign]

    def _detach(self) -> None:
        if self._ops is not None:
            self._ops.detach()
        for h in self._hooks:
            h.remove()
        self._hooks = []
        for m in self._layers.values():
            m.__dict__.pop("step", None)
        self._layers = {}

    def _batch(self, batch: Any) -> None:
        if self._hooks:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            self._samples += int(x.shape[0])
            self._events = x.dim() == 5  # [B, T, C, H, W] event frames, a new input every step
            if self._ops is not None:
                self._ops.start_batch(int(x.shape[0]))

    def _batch_end(self) -> None:
        if self._hooks and self._ops is not None:
            self._ops.end_batch()

    def _accuracy(self, pl_module: pl.LightningModule) -> float:
        """The evaluation's accuracy so far (the module's ``test_acc`` / ``val_acc`` metric)."""
        metric = getattr(pl_module, "test_acc" if self._stage == "test" else "val_acc", None)
        try:
            return float(metric.compute()) if metric is not None and metric.update_called else float("nan")
        except Exception:  # noqa: BLE001 - a module without the metric: the report has no accuracy
            return float("nan")

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._hooks:
            return
        ops = self._ops
        self._detach()
        self._ops = None
        strategy = trainer.strategy
        samples = float(strategy.reduce(torch.tensor(self._samples, dtype=torch.int64, device=pl_module.device),
                                        reduce_op="sum"))
        spikes = {n: strategy.reduce(v, reduce_op="sum") for n, v in self._spikes.items()}
        elem = {n: float(strategy.reduce(torch.tensor(v, dtype=torch.int64, device=pl_module.device),
                                         reduce_op="sum"))
                for n, v in self._elem_steps.items()}
        T = int(pl_module.strategy.T)
        self.rows, self.totals = build_rows(self._counts, spikes, elem, max(samples, 1.0), T,
                                            T if self._events else 1)
        if ops is not None:
            for d in (ops.acs, ops.macs, ops.dense):
                for n, v in d.items():
                    d[n] = int(strategy.reduce(torch.tensor(v, dtype=torch.int64, device=pl_module.device),
                                               reduce_op="sum"))
            self.rows, self.totals = build_neurobench_rows(ops, spikes, elem, max(samples, 1.0), T,
                                                           self.totals["ann_macs"])
        fired = sum(int(v.sum(dtype=torch.int64)) for v in spikes.values())
        self.totals.update({
            "accuracy": self._accuracy(pl_module),
            # NeuroBench ActivationSparsity: zero outputs / all outputs of the spiking layers, all steps
            "activation_sparsity": 1.0 - fired / sum(elem.values()) if elem else float("nan"),
            "connection_sparsity": connection_sparsity(pl_module.net),
            "footprint_bytes": float(footprint_bytes(pl_module.net)),
        })
        if not trainer.is_global_zero:
            return
        table = format_table(self.rows, self.totals)
        print(table)
        out = Path(self.out_dir or trainer.log_dir or ".")
        out.mkdir(parents=True, exist_ok=True)
        write_csv(self.rows, self.totals, out / f"{self.prefix}.csv")
        dm = getattr(trainer, "datamodule", None)
        dataset = str(getattr(dm, "hparams", {}).get("dataset", type(dm).__name__ if dm else "data"))
        model = str(pl_module.hparams.get("network", type(pl_module.net).__name__))
        self.title = title(self.totals, model, dataset, self.convention)
        plot(self.rows, out / f"{self.prefix}.png", self.title)
        self._log_wandb(trainer, out / f"{self.prefix}.png")

    def _log_wandb(self, trainer: pl.Trainer, png: Path) -> None:
        from pytorch_lightning.loggers import WandbLogger

        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger):
                import wandb

                cols = list(asdict(self.rows[0]).keys())
                table = wandb.Table(columns=cols, data=[list(asdict(r).values()) for r in self.rows])
                lg.experiment.log({f"{self.prefix}/table": table, f"{self.prefix}/chart": wandb.Image(str(png))})
                lg.experiment.summary.update({f"{self.prefix}/{k}": v for k, v in self.totals.items()})

    # -------------------------------------------------------------- Lightning hooks
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "test" in self.stages:
            self._attach(pl_module, "test")

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:  # type: ignore[no-untyped-def]
        self._batch(batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # type: ignore[no-untyped-def]
        self._batch_end()

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, pl_module)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "validate" in self.stages and not trainer.sanity_checking:
            self._attach(pl_module, "validate")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:  # type: ignore[no-untyped-def]
        self._batch(batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # type: ignore[no-untyped-def]
        self._batch_end()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, err: BaseException) -> None:
        self._detach()
