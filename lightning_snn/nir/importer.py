"""Import a NIR graph as a :class:`SpikingNet` that any applicable gradient strategy can fine-tune.

Nodes become this project's layers (``Affine`` -> ``TraceLinear``, ``Conv2d`` -> ``TraceConv2d``,
``AvgPool2d``, ``Flatten``, ``Scale``, ``IF`` / ``LIF`` -> :class:`~lightning_snn.neurons.LIF`,
reset by subtraction) read with the discrete-time convention of :mod:`lightning_snn.nir.export`
(``lambda = 1 - dt / tau``; ``dt`` from the file's metadata, else ``dt`` given here; the exact
leak from a node's ``leak`` metadata when it agrees with ``tau``, as this project writes). A node's
input is the sum of its incoming edges. An acyclic graph is a ``feedforward`` model run on the
whole ``[T, B, ...]`` sequence (BPTT, OTTT, DSR); a graph with a cycle (a feedback model) is a
``recurrent`` model run step by step, an edge that closes a cycle carrying the previous step's
value (BPTT, OTTT); one in the shape of an exported feedback model can also be rebuilt as that
feedback model (:func:`as_feedback_snn`: IDE, BPTT). Registered as model ``nir``
(``network_args: {path: model.nir}``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nir
import numpy as np
import torch
from torch import Tensor, nn

from lightning_snn.layers import TimeDistributed, TraceConv2d, TraceLinear
from lightning_snn.models.base import MODELS, SpikingNet
from lightning_snn.models.deep import Delay, run_step_by_step
from lightning_snn.models.init import FROM_FILE
from lightning_snn.neurons import LIF, NeuronConfig
from lightning_snn.nir.convention import leak_of_tau


class NIRImportError(ValueError):
    """A node or parameter this project cannot represent."""


class ScaleArray(nn.Module):
    """Elementwise multiplication by a fixed array (NIR ``Scale``)."""

    def __init__(self, scale: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(np.asarray(scale), dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _uniform(name: str, field: str, v: Any) -> float:
    a = np.asarray(v, dtype=np.float64)
    if a.size == 0 or not np.allclose(a, a.flat[0], rtol=1e-6, atol=0.0):
        raise NIRImportError(f"node {name!r}: {field} must be the same for every neuron, got values "
                             f"from {a.min()} to {a.max()}")
    return float(a.flat[0])


def _neuron(name: str, node: nir.NIRNode, dt: float, base: NeuronConfig) -> LIF:
    if np.any(np.asarray(node.v_reset if node.v_reset is not None else 0.0) != 0):
        raise NIRImportError(f"node {name!r}: v_reset must be 0 (reset by subtraction)")
    vth = _uniform(name, "v_threshold", node.v_threshold)
    r = _uniform(name, "r", node.r)
    if isinstance(node, nir.IF):
        if r != 1.0:
            raise NIRImportError(f"node {name!r}: IF with r = {r}; only r = 1 (v += I per step) is supported")
        leak = 1.0
    else:
        tau = _uniform(name, "tau", node.tau)
        if not np.allclose(np.asarray(node.v_leak), 0.0):
            raise NIRImportError(f"node {name!r}: v_leak must be 0")
        leak = leak_of_tau(tau, dt, (node.metadata or {}).get("leak"))
        gain = r * dt / tau  # input gain per step; this project's neuron has gain 1
        if not 0.0 < leak < 1.0 or abs(gain - 1.0) > 1e-4:
            raise NIRImportError(
                f"node {name!r}: tau = {tau}, r = {r} with dt = {dt} give leak {leak} and input gain "
                f"{gain}; need 0 < leak < 1 and r = tau / dt (gain 1)")
    cfg = NeuronConfig(**{**base.__dict__, "threshold": vth, "leak": leak,
                          "threshold_floor": min(base.threshold_floor, vth)})
    return LIF(cfg)


def _module(name: str, node: nir.NIRNode, in_shape: tuple[int, ...], dt: float, base: NeuronConfig) -> nn.Module:
    """The layer of one NIR node (stateless ones wrapped in ``TimeDistributed``)."""
    if isinstance(node, (nir.IF, nir.LIF)):
        return _neuron(name, node, dt, base)
    if isinstance(node, (nir.Affine, nir.Linear)):
        w = torch.as_tensor(np.asarray(node.weight), dtype=torch.float32)
        m = TraceLinear(w.shape[1], w.shape[0], bias=isinstance(node, nir.Affine))
        with torch.no_grad():
            m.weight.copy_(w)
            if isinstance(node, nir.Affine):
                m.bias.copy_(torch.as_tensor(np.asarray(node.bias), dtype=torch.float32))
        return TimeDistributed(m)
    if isinstance(node, nir.Conv2d):
        if isinstance(node.padding, str):
            raise NIRImportError(f"node {name!r}: string padding {node.padding!r} is not supported")
        w = torch.as_tensor(np.asarray(node.weight), dtype=torch.float32)
        m = TraceConv2d(w.shape[1] * int(node.groups), w.shape[0], tuple(w.shape[2:]),
                        stride=tuple(np.atleast_1d(node.stride).tolist()) * (2 // np.size(node.stride)),
                        padding=tuple(np.atleast_1d(node.padding).tolist()) * (2 // np.size(node.padding)),
                        dilation=tuple(np.atleast_1d(node.dilation).tolist()) * (2 // np.size(node.dilation)),
                        groups=int(node.groups), bias=True)
        with torch.no_grad():
            m.weight.copy_(w)
            m.bias.copy_(torch.as_tensor(np.asarray(node.bias), dtype=torch.float32))
        return TimeDistributed(m)
    if isinstance(node, nir.AvgPool2d):
        return TimeDistributed(nn.AvgPool2d(tuple(int(v) for v in node.kernel_size),
                                            tuple(int(v) for v in node.stride),
                                            tuple(int(v) for v in node.padding)))
    if isinstance(node, nir.Flatten):
        end = node.end_dim if node.end_dim < 0 else node.end_dim + 1  # NIR dims skip the batch
        return TimeDistributed(nn.Flatten(node.start_dim + 1, end))
    if isinstance(node, nir.Scale):
        return TimeDistributed(ScaleArray(node.scale))
    raise NIRImportError(
        f"node {name!r} of type {type(node).__name__} is not supported; supported: Input, Output, "
        f"Affine, Linear, Conv2d, AvgPool2d, Flatten, Scale, IF, LIF")


def _order(nodes: dict[str, nir.NIRNode], edges: Sequence[tuple[str, str]]) -> tuple[list[str], set[tuple[str, str]]]:
    """Topological order of the nodes and the edges that close a cycle (found by depth-first search
    from the inputs: an edge into a node still on the search path)."""
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for s, d in edges:
        succ[s].append(d)
    back: set[tuple[str, str]] = set()
    state: dict[str, int] = {}  # 1 on the path, 2 done
    post: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        for d in succ[n]:
            if state.get(d) == 1:
                back.add((n, d))
            elif d not in state:
                visit(d)
        state[n] = 2
        post.append(n)

    for n in [k for k, v in nodes.items() if isinstance(v, nir.Input)] + list(nodes):
        if n not in state:
            visit(n)
    return post[::-1], back


class NIRNet(SpikingNet):
    """A spiking network read from a NIR graph (see module doc).

    Args:
        graph: the NIR graph (one ``Input`` and one ``Output`` node).
        neuron: surrogate / trainable-threshold settings for the spiking layers; each layer's
            threshold and leak come from the file.
        dt: time step used to read LIF time constants when the file does not state one.
    """

    def __init__(self, graph: nir.NIRGraph, neuron: NeuronConfig | None = None, dt: float | None = None) -> None:
        super().__init__()
        self.initialisation = FROM_FILE  # every weight is the file's
        meta = graph.metadata or {}
        self.dt = float(meta.get("dt", dt if dt is not None else 1e-4))
        if meta.get("reset", "subtract") not in ("subtract", b"subtract"):
            raise NIRImportError(f"graph metadata says reset {meta.get('reset')!r}; only 'subtract' is supported")
        inputs = [k for k, v in graph.nodes.items() if isinstance(v, nir.Input)]
        outputs = [k for k, v in graph.nodes.items() if isinstance(v, nir.Output)]
        if len(inputs) != 1 or len(outputs) != 1:
            raise NIRImportError(f"need one Input and one Output node, got inputs {inputs}, outputs {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_shape = tuple(int(d) for d in np.asarray(graph.nodes[self.input_name].input_type["input"]))
        self.output_shape = tuple(int(d) for d in np.asarray(graph.nodes[self.output_name].output_type["output"]))
        order, back = _order(graph.nodes, graph.edges)
        self.order = [n for n in order if n not in (self.input_name, self.output_name)]
        self.edges = [tuple(e) for e in graph.edges]
        self.back = sorted(back)
        self.sources = {n: [s for s, d in self.edges if d == n and (s, d) not in back] for n in graph.nodes}
        self.delayed = {n: [s for s, d in self.back if d == n] for n in graph.nodes}
        self.kind = "recurrent" if back else "feedforward"  # type: ignore[misc]
        base = neuron or NeuronConfig()
        self.nodes = nn.ModuleDict()
        self.node_shapes: dict[str, tuple[int, ...]] = {}
        for n in self.order:
            in_type = graph.nodes[n].input_type
            shape = tuple(int(d) for d in np.asarray(next(iter(in_type.values())))) if in_type else ()
            self.node_shapes[n] = shape
            self.nodes[n] = _module(n, graph.nodes[n], shape, self.dt, base)
        self.delays = nn.ModuleDict({s: Delay() for s in sorted({s for s, _ in self.back})})
        for s, d in self.back:  # a feedback synapse's trace (OTTT) uses its target neuron's leak
            tgt = self._downstream_neuron(d)
            if tgt is not None:
                for m in self.nodes[s].modules():
                    if isinstance(m, (TraceLinear, TraceConv2d)):
                        m.__dict__["postsynaptic"] = tgt

    def _downstream_neuron(self, n: str) -> LIF | None:
        seen, todo = set(), [n]
        while todo:
            k = todo.pop(0)
            if k in self.nodes and isinstance(self.nodes[k], LIF):
                return self.nodes[k]  # type: ignore[return-value]
            seen.add(k)
            todo += [d for s, d in self.edges if s == k and d not in seen]
        return None

    def _sweep(self, x: Tensor, prev: dict[str, Tensor] | None) -> Tensor:
        vals: dict[str, Tensor] = {self.input_name: x}
        for n in self.order:
            ins = [vals[s] for s in self.sources[n]]
            if prev is not None:
                ins += [prev[s] for s in self.delayed[n] if s in prev]
            h = ins[0]
            for extra in ins[1:]:
                h = h + extra
            vals[n] = self.nodes[n](h)
        out = [vals[s] for s in self.sources[self.output_name]]
        y = out[0]
        for extra in out[1:]:
            y = y + extra
        if prev is not None:
            for s in self.delays:
                self.delays[s].push(vals[s])
        return y

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, *input_shape]`` -> per-step outputs ``[T, B, *output_shape]``."""
        if not self.back:
            return self._sweep(x, None)
        return run_step_by_step(self, self._steps, x)

    def _steps(self, x: Tensor) -> Tensor:
        outs = []
        for t in range(x.shape[0]):
            prev = {s: d.value for s, d in self.delays.items() if d.value is not None}
            outs.append(self._sweep(x[t : t + 1], prev))
        return torch.cat(outs)


def _leaf(m: nn.Module) -> nn.Module:
    return m[0] if isinstance(m, TimeDistributed) else m


def as_feedback_snn(net: NIRNet, neuron: NeuronConfig | None = None, norm_range: float = 1.0) -> SpikingNet:
    """The feedback-model form (:class:`~lightning_snn.models.feedback.FeedbackSNN`, kind
    ``feedback``: IDE and BPTT) of an imported graph with the shape of an exported feedback model::

        input -> [Flatten] -> Affine/Conv2d -> LIF_1 -> (Conv2d -> LIF_l)* -> [Flatten] -> Affine -> output
                                                ^------ Affine/Conv2d (no bias) <------ LIF_L

    Batch norms were folded into the synaptic biases, so the model has none; the feedback weight
    is restricted to spectral norm ``<= norm_range`` as in training (a larger one is an error).
    """
    from lightning_snn.models.feedback import FeedbackSNN

    if len(net.back) != 1:
        raise NIRImportError(f"a feedback model has one recurrent edge; this graph has {net.back}")
    fb, first = net.back[0]
    succ = {n: [d for s, d in net.edges if s == n and (s, d) not in net.back] for n in net.nodes}
    succ[net.input_name] = [d for s, d in net.edges if s == net.input_name]

    def walk(n: str) -> str:
        (nxt,) = succ[n] if len(succ[n]) == 1 else (None,)
        if nxt is None:
            raise NIRImportError(f"node {n!r} feeds {succ[n]}; a feedback model is a chain")
        return nxt

    input_ops, n = [], walk(net.input_name)
    while n != first:
        input_ops.append(_leaf(net.nodes[n]))
        n = walk(n)
    hidden, lifs, n = [], [net.nodes[first]], first
    while True:
        nxt = [d for d in succ[n] if d != fb]
        if len(nxt) != 1:
            raise NIRImportError(f"node {n!r} feeds {succ[n]}; a feedback model is a chain")
        nxt_mod = _leaf(net.nodes[nxt[0]]) if nxt[0] in net.nodes else None
        after = succ.get(nxt[0], [])
        if isinstance(nxt_mod, nn.Conv2d) and len(after) == 1 and isinstance(net.nodes[after[0]], LIF):
            hidden.append((nxt_mod, nn.Identity()))
            n = after[0]
            lifs.append(net.nodes[n])
            continue
        break
    if fb not in succ[n]:
        raise NIRImportError(f"the recurrent edge leaves {fb!r}, not the last spiking layer {n!r}")
    head, k = [], nxt[0]
    while k != net.output_name:
        head.append(_leaf(net.nodes[k]))
        k = walk(k)
    classifier = [m for m in head if not isinstance(m, nn.Flatten)]
    fb_op = _leaf(net.nodes[fb])
    if len(classifier) != 1 or not isinstance(classifier[0], nn.Linear):
        raise NIRImportError(f"the read-out after {n!r} must be [Flatten] -> Affine, got {head}")
    if not any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in input_ops):
        raise NIRImportError(f"no input synapse before {first!r}: {input_ops}")
    if getattr(fb_op, "bias", None) is not None and fb_op.bias.detach().abs().max() > 0:
        raise NIRImportError(f"feedback node {fb!r} has a bias; a feedback model's feedback map has none")
    leaks = {float(m.leak) for m in lifs}
    if len(leaks) != 1:
        raise NIRImportError(f"a feedback model has one leak for all layers; the graph has {sorted(leaks)}")
    model = FeedbackSNN(nn.Sequential(*input_ops), nn.Identity(), hidden, fb_op, classifier[0],
                        lifs[0].config, dropout=0.0, norm_range=norm_range, official_init=False)
    with torch.no_grad():
        w = fb_op.weight.detach().clone()
        if float(torch.linalg.matrix_norm(model.feedback._matrix(w), ord=2)) > norm_range * (1 + 1e-4):
            raise NIRImportError(f"feedback node {fb!r} has spectral norm above norm_range {norm_range}")
        for dst, src in zip(model.neurons, lifs):
            dst.threshold.copy_(src.threshold)
    return model


def read_nir(path: str | Path) -> nir.NIRGraph:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NIR file {str(path)!r} does not exist")
    return nir.read(str(path))


@MODELS.register("nir")
def nir_model(input_shape: Sequence[int], num_classes: int, path: str, neuron: NeuronConfig | None = None,
              dt: float | None = None, feedback: bool = True, norm_range: float = 1.0) -> SpikingNet:
    """A model read from the NIR file ``path``; its input shape and number of outputs must match
    the data (``input_shape``, ``num_classes``). With ``feedback`` (default) a graph with one
    recurrent edge in the shape of an exported feedback model becomes a feedback model (IDE, BPTT);
    otherwise a cyclic graph runs step by step as a ``recurrent`` model (BPTT, OTTT)."""
    net = NIRNet(read_nir(path), neuron, dt)
    if tuple(input_shape) != net.input_shape:
        raise NIRImportError(f"{path}: graph input shape {net.input_shape} does not match the data's {tuple(input_shape)}")
    if net.output_shape != (num_classes,):
        raise NIRImportError(f"{path}: graph output shape {net.output_shape} does not match {num_classes} classes")
    return as_feedback_snn(net, neuron, norm_range) if feedback and net.back else net
