"""Run an exported NIR file in other SNN libraries next to this project's network and measure the
agreement: per library and spiking layer, the fraction of equal spikes; per library, the fraction
of equal predictions and the accuracy, next to ours (``export --verify``).

The readers of :mod:`lightning_snn.nir.readers` load the file; a library that is not installed is
skipped with a note, and one that cannot read the graph is reported with its error (the file is
already written and stays valid for the others).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import nir
import torch
from torch import Tensor, nn

from lightning_snn.neurons import LIF, weighted_rate
from lightning_snn.nir.readers import READERS, run


def record_spikes(net: nn.Module, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Outputs ``[T, B, ...]`` of ``net`` on ``x`` ``[T, B, ...]`` and the spikes of every
    spiking layer, keyed by NIR node name (the module path, '.' -> '_', without ``nodes.``)."""
    rec: dict[str, list[Tensor]] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, o, n=n: rec.setdefault(n, []).append(o.detach()))
        for n, m in net.named_modules() if isinstance(m, LIF)
    ]
    try:
        with torch.no_grad():
            y = net(x)
    finally:
        for h in hooks:
            h.remove()
    return y, {n.removeprefix("nodes.").replace(".", "_"): torch.cat(v) for n, v in rec.items()}


def record_feedback_steps(net: nn.Module, x: Tensor, step: Callable[[nn.Module, Tensor], Tensor] | None = None
                          ) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`record_spikes` of a trained feedback model (``kind == "feedback"``), run step by step
    with its own layers, as its exported graph computes it: at step t layer 1 gets ``F x[t] +
    W_fb s_L[t-1]`` (no feedback at t = 0), the output is the read-out of that step's last-layer
    spikes, ``classifier(s_L[t])``. (Its ``forward`` returns only the read-out of the
    lambda-weighted rate: the file's ``class_scores`` of these outputs.) ``step(layer, current)``
    replaces the layers' own one-step dynamics (e.g. another library's neuron rule)."""
    one_step = step or (lambda layer, current: layer.step(current))
    index = {id(n): i for i, n in enumerate(net.neurons)}
    rec: dict[int, list[Tensor]] = {i: [] for i in index.values()}

    def recorded(layer: nn.Module, current: Tensor) -> Tensor:
        s = one_step(layer, current)
        rec[index[id(layer)]].append(s.detach())
        return s

    with torch.no_grad():
        net.simulate_layers(net.prepare(x), bn="running", step=recorded, every_layer=False)
        last = rec[len(net.neurons) - 1]
        y = torch.stack([net.readout(s) for s in last])
    return y, {f"neurons_{i}": torch.stack(v) for i, v in rec.items()}


def differing(ref: dict[str, Tensor], other: dict[str, Tensor]) -> dict[str, int]:
    """Number of unequal spikes per layer (same layer names, same number of spikes)."""
    if sorted(ref) != sorted(other):
        raise ValueError(f"spiking layers differ: ours {sorted(ref)}, theirs {sorted(other)}")
    return {n: int((other[n].reshape(ref[n].shape) != ref[n]).sum()) for n in ref}


def agreement(ref: dict[str, Tensor], other: dict[str, Tensor]) -> dict[str, float]:
    """Fraction of equal spikes per layer (same layer names, same number of spikes)."""
    return {n: 1.0 - d / ref[n].numel() for n, d in differing(ref, other).items()}


def class_scores(graph: nir.NIRGraph, out: Tensor) -> Tensor:
    """The file's read-out of per-step outputs ``[T, B, classes]``: the time mean, or for an LIF
    feedback model the lambda-weighted mean (its ``readout`` and node metadata)."""
    meta = graph.metadata or {}
    if meta.get("kind") == "feedback":
        leaks = [float((n.metadata or {}).get("leak", 1.0)) for n in graph.nodes.values()
                 if isinstance(n, (nir.IF, nir.LIF))]
        return weighted_rate(out, leaks[0] if leaks else 1.0)
    return out.mean(0)


@dataclass
class Verification:
    """Agreement of each library with ours: one row per library and spiking layer."""

    rows: list[dict[str, object]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ours_accuracy: float = float("nan")
    images: int = 0
    T: int = 0

    def table(self) -> "object":
        """The rows as a ``pandas.DataFrame``."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def __str__(self) -> str:
        head = (f"NIR file run in other libraries: {self.images} images, T = {self.T}; "
                f"our accuracy {self.ours_accuracy:.4f}")
        lines = [head]
        if self.rows:
            import pandas as pd

            table = self.table()
            table["spikes equal"] = table["spikes equal"].map(lambda v: f"{v:.8f}")  # 1 in 1e8 shows
            with pd.option_context("display.width", 200, "display.max_columns", 20):
                lines.append(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        return "\n".join(lines + self.notes)


def _steps(images: Tensor, T: int) -> Tensor:
    """``[T, B, ...]``: a static image repeated at every step, event frames ``[B, T, ...]`` in order."""
    return images.transpose(0, 1) if images.dim() == 5 else images.unsqueeze(0).expand(T, *images.shape)


def verify(graph: nir.NIRGraph, images: Tensor, labels: Tensor, T: int,
           libraries: Sequence[str] = tuple(READERS), net: nn.Module | None = None,
           batch_size: int = 256) -> Verification:
    """Run ``images`` (normalised as in training; ``[B, C, H, W]`` static or ``[B, T, C, H, W]``
    event frames) for ``T`` steps through ``net`` (default: the file read by this project) and
    through the file read by each library; returns the agreement table.

    A feedback model is run step by step with its own layers (:func:`record_feedback_steps`)."""
    from lightning_snn.nir.importer import NIRNet

    unknown = [lib for lib in libraries if lib not in READERS]
    if unknown:
        raise ValueError(f"unknown libraries {unknown}; valid: {sorted(READERS)}")
    if net is None:
        net = NIRNet(graph)
    ours = record_feedback_steps if getattr(net, "kind", "") == "feedback" else record_spikes
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    result = Verification(images=len(images), T=T if images.dim() == 4 else images.shape[1])
    models: dict[str, nn.Module] = {}
    for lib in libraries:
        try:
            models[lib] = READERS[lib](graph)
        except ModuleNotFoundError as e:
            result.notes.append(f"{lib}: skipped, not installed ({e.name})")
        except Exception as e:  # noqa: BLE001 - the library's own refusal, reported per library
            result.notes.append(f"{lib}: cannot read the file: {type(e).__name__}: {e}")
    differ: dict[str, dict[str, int]] = {lib: {} for lib in models}
    size: dict[str, int] = {}
    counts: dict[str, int] = {}
    same_pred = {lib: 0 for lib in models}
    correct = {lib: 0 for lib in models}
    ours_correct = 0
    failed: set[str] = set()
    try:
        for i in range(0, len(images), batch_size):
            x = _steps(images[i:i + batch_size].to(device), T)
            y = labels[i:i + batch_size].to(device)
            out, spikes = ours(net, x)
            pred = class_scores(graph, out).argmax(-1)
            ours_correct += int((pred == y).sum())
            for n, s in spikes.items():
                counts[n] = counts.get(n, 0) + int((s != 0).sum())  # exact: an int64 count
                size[n] = size.get(n, 0) + s.numel()
            for lib, model in models.items():
                if lib in failed:
                    continue
                try:
                    out2, spikes2 = run(model.to(device), x.float(), lib)
                    diff = differing(spikes, spikes2)
                except Exception as e:  # noqa: BLE001 - reported per library, the others go on
                    result.notes.append(f"{lib}: cannot run the file: {type(e).__name__}: {e}")
                    failed.add(lib)
                    continue
                for n, d in diff.items():
                    differ[lib][n] = differ[lib].get(n, 0) + d
                pred2 = class_scores(graph, out2.reshape(out.shape)).argmax(-1)
                same_pred[lib] += int((pred2 == pred).sum())
                correct[lib] += int((pred2 == y).sum())
    finally:
        net.train(was_training)
    n_img = len(images)
    result.ours_accuracy = ours_correct / n_img
    for lib in models:
        if lib in failed:
            continue
        for n, d in differ[lib].items():
            result.rows.append({"library": lib, "layer": n, "spikes (ours)": int(counts[n]),
                                "spikes differing": d, "spikes equal": 1.0 - d / size[n],
                                "predictions equal": same_pred[lib] / n_img,
                                "accuracy": correct[lib] / n_img, "accuracy (ours)": result.ours_accuracy})
    return result
