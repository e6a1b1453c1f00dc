"""Read an exported NIR file in another SNN library, as a ready module of that library that
computes this project's network.

Each ``read_<library>(graph)`` takes a graph (or a ``.nir`` path) written by
:mod:`lightning_snn.nir.export` and returns the library's own module, run one time step at a time
on a batch: ``y, state = model(x_t, state)`` with ``x_t`` of shape ``[B, *input_shape]`` (the
normalised input, see the file's ``input_mean`` / ``input_std`` metadata) and ``state = None`` at
the first step. :func:`run` runs it over ``[T, B, ...]`` and records every spiking layer.

What each library reads differently from the file, and what the reader does about it:

- all: NIR's ``Flatten`` dims index the *unbatched* shape; snnTorch and Norse pass them to
  ``torch.nn.Flatten`` unchanged, so the reader shifts them by one (batched input).
- snnTorch 1.0.0 ``import_from_nir``: ``IF`` becomes ``Leaky(beta=0.9, init_hidden=False)`` (a
  leak the file does not have, and a ``(spikes, membrane)`` tuple its graph then passes on: the
  MLP file crashes); the reader sets ``beta = 1``, ``init_hidden = True`` and ``reset_delay =
  True`` (the reset of step t-1 subtracted at step t: exactly v -= Vth after a spike). ``LIF``
  gets ``reset_mechanism="zero"``, ``beta = 1 - 1e-4 / tau`` and a threshold divided by
  ``r 1e-4 / tau`` (its dt is hard-coded): the reader sets subtraction, the file's threshold and
  ``beta = 1 - dt / tau`` with the file's ``dt`` and ``tau`` (the node's metadata
  gives its exact value only where it agrees with ``tau``), the reset right after the spike, and no second reset "owed" by a post-reset
  potential still above threshold (snnTorch subtracts it before the next spike test). An
  ``LIF <-> Affine`` cycle (a feedback model) is rewired by snnTorch so that the input passes
  through the recurrent weight; an identity ``Flatten`` on the cycle keeps the file's wiring.
  Remaining difference: snnTorch fires at ``v > Vth`` (ours ``v >= Vth``), which differs only
  when the potential equals the threshold exactly.
- Norse 1.1.0 ``from_nir``: no ``AvgPool2d``: average pools become sum pools with the ``1/k^2``
  folded into the next synaptic node (exact for the non-negative spikes they see). ``LIFBoxCell``
  integrates ``v += dt/tau (i - v)`` and ignores ``r``: its input gain is ``dt/tau = 1 - lambda``
  instead of 1, so the reader scales its threshold by ``1 - lambda`` (same spikes, a membrane
  scaled by ``1 - lambda``) and resets by subtraction. Remaining difference: Norse's ``IAFCell``
  always resets to ``v_reset`` (0) and has no subtraction: ``IF`` files agree only in part.
- SpikingJelly 2.0 ``import_from_nir``: refuses ``IF`` unless ``r = 1/dt`` (it reads ``r`` as
  ``dt`` per step) and reads ``v_reset = 0`` as a hard reset; the reader writes ``r = 1/dt`` into a
  copy of the graph and sets ``v_reset = None`` (SpikingJelly's soft reset: subtraction).

A library that is not installed raises :class:`ModuleNotFoundError` naming it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nir
import numpy as np
import torch
from torch import Tensor, nn

from lightning_snn.nir.convention import leak_of_tau

DEFAULT_DT = 1e-4


def _graph(graph: nir.NIRGraph | str | Path) -> nir.NIRGraph:
    return copy.deepcopy(graph) if isinstance(graph, nir.NIRGraph) else nir.read(str(graph))


def _dt(graph: nir.NIRGraph) -> float:
    return float((graph.metadata or {}).get("dt", DEFAULT_DT))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The importers' prints, warnings and log lines about parameters converted here."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def batched_flatten(graph: nir.NIRGraph) -> nir.NIRGraph:
    """``Flatten`` nodes with their non-negative dims shifted by one (a leading batch dim)."""
    for name, node in graph.nodes.items():
        if isinstance(node, nir.Flatten):
            shift = lambda d: d + 1 if d >= 0 else d  # noqa: E731
            graph.nodes[name] = nir.Flatten(input_type=node.input_type, start_dim=shift(node.start_dim),
                                            end_dim=shift(node.end_dim))
    return graph


def avgpool_as_sumpool(graph: nir.NIRGraph) -> nir.NIRGraph:
    """Each ``AvgPool2d`` as a ``SumPool2d``, the synaptic node after it (through ``Flatten``)
    taking the ``1/k^2`` in its weights. Exact for non-negative pool inputs (spikes)."""
    for name, node in list(graph.nodes.items()):
        if not isinstance(node, nir.AvgPool2d):
            continue
        graph.nodes[name] = nir.SumPool2d(kernel_size=node.kernel_size, stride=node.stride, padding=node.padding)
        todo = [d for s, d in graph.edges if s == name]
        while todo:
            d = todo.pop()
            n = graph.nodes[d]
            if isinstance(n, nir.Flatten):
                todo += [e for s, e in graph.edges if s == d]
            elif isinstance(n, (nir.Affine, nir.Conv2d)):
                n.weight = n.weight / float(np.prod(node.kernel_size))
            else:
                raise ValueError(f"average pool {name!r} feeds {type(n).__name__}: cannot fold its 1/k^2")
    return nir.NIRGraph(nodes=graph.nodes, edges=graph.edges, metadata=graph.metadata)


def unrewired_cycles(graph: nir.NIRGraph) -> nir.NIRGraph:
    """An identity ``Flatten`` inserted on every ``LIF -> Affine -> LIF`` cycle, so that snnTorch
    does not turn it into its RNN subgraph (which feeds the input through the recurrent weight)."""
    for lif, w in [(a, b) for a, b in graph.edges if (b, a) in graph.edges]:
        if isinstance(graph.nodes[lif], (nir.LIF, nir.CubaLIF)) and isinstance(graph.nodes[w], (nir.Affine, nir.Linear)):
            ident = f"{w}_identity"
            n = graph.nodes[w].weight.shape[0]
            graph.nodes[ident] = nir.Flatten(input_type={"input": np.array([n])}, start_dim=0, end_dim=-1)
            graph.edges = [e for e in graph.edges if tuple(e) != (w, lif)] + [(w, ident), (ident, lif)]
    return graph


# ------------------------------------------------------------------------------ snnTorch
def read_snntorch(graph: nir.NIRGraph | str | Path) -> nn.Module:
    """The graph in snnTorch (``snntorch.import_nir.import_from_nir``), conventions converted."""
    g = batched_flatten(unrewired_cycles(_graph(graph)))
    dt = _dt(g)
    with _quiet():
        from snntorch.import_nir import import_from_nir

        model = import_from_nir(copy.deepcopy(g))  # it rewrites the graph in place
    for name, m in spiking_layers(model, "snntorch").items():
        node = g.nodes[name]
        m.init_hidden = True
        # snnTorch divides the threshold by r * 1e-4 / tau (its input gain with its own dt)
        m.threshold = torch.tensor(float(np.asarray(node.v_threshold).flat[0]))
        m.reset_mechanism = "subtract"
        m.state_function = m._base_sub  # v = beta v + I - reset * Vth
        if isinstance(node, nir.IF):
            m.beta = torch.tensor(1.0)
            m.reset_delay = True  # the reset of step t-1 taken at step t: exactly ours for IF
        else:
            # the file's tau decides the leak (its metadata's exact value only where they agree)
            leak = leak_of_tau(float(np.asarray(node.tau).flat[0]), dt, (node.metadata or {}).get("leak"))
            m.beta = torch.tensor(leak)
            # reset right after the spike (v -= Vth), and no second reset "owed" by a post-reset
            # potential still above threshold (snnTorch's mem_reset on the stored potential)
            m.reset_delay = False
            m.mem_reset = torch.zeros_like
    return model


# ------------------------------------------------------------------------------ Norse
def read_norse(graph: nir.NIRGraph | str | Path) -> nn.Module:
    """The graph in Norse (``norse.torch.from_nir`` with the file's ``dt``), conventions converted."""
    g = batched_flatten(avgpool_as_sumpool(_graph(graph)))
    dt = _dt(g)
    with _quiet():  # importing Norse warns about torch.jit.script
        import norse.torch as norse
        from norse.torch.functional.reset import reset_subtract

        model = norse.from_nir(g, dt=dt)
    for m in spiking_layers(model, "norse").values():
        if type(m).__name__ == "LIFBoxCell":
            gain = dt * m.p.tau_mem_inv  # Norse's input gain 1 - lambda
            m.p = m.p._replace(v_th=m.p.v_th * gain, reset_method=reset_subtract)
    return model


# ------------------------------------------------------------------------------ SpikingJelly
def read_spikingjelly(graph: nir.NIRGraph | str | Path) -> nn.Module:
    """The graph in SpikingJelly 2.0 (``nir_exchange.import_from_nir``, single-step mode),
    conventions converted."""
    g = _graph(graph)
    dt = _dt(g)
    for name, node in g.nodes.items():
        if isinstance(node, nir.IF):  # SpikingJelly reads IF as v += r dt I
            g.nodes[name] = nir.IF(r=np.full_like(node.r, 1.0 / dt), v_threshold=node.v_threshold,
                                   v_reset=node.v_reset, metadata=node.metadata)
    with _quiet():
        from spikingjelly.activation_based.nir_exchange import import_from_nir

        model = import_from_nir(g, dt=dt, step_mode="s")
    for m in spiking_layers(model, "spikingjelly").values():
        m.module.v_reset = None  # soft reset: v -= Vth after a spike
    return model


READERS: dict[str, Callable[[Any], nn.Module]] = {
    "snntorch": read_snntorch, "norse": read_norse, "spikingjelly": read_spikingjelly,
}
"""Library name -> reader."""

_SPIKING = {"snntorch": ("Leaky",), "norse": ("LIFBoxCell", "IAFCell"), "spikingjelly": ("_NIRStatefulModule",)}


def spiking_layers(model: nn.Module, library: str) -> dict[str, nn.Module]:
    """The spiking modules of a model read by ``read_<library>``, keyed by NIR node name."""
    kinds = _SPIKING[library]
    return {n.split(".")[-1]: m for n, m in model.named_modules() if type(m).__name__ in kinds}


def _spikes_of(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


def run(model: nn.Module, x: Tensor, library: str) -> tuple[Tensor, dict[str, Tensor]]:
    """Run a model read by ``read_<library>`` from rest over ``x`` ``[T, B, *input_shape]``;
    returns the outputs ``[T, B, ...]`` and the spikes ``[T, B, ...]`` of every spiking layer."""
    cells = spiking_layers(model, library)
    rec: dict[str, list[Tensor]] = {n: [] for n in cells}
    hooks = [c.register_forward_hook(lambda _m, _i, o, n=n: rec[n].append(_spikes_of(o).detach()))
             for n, c in cells.items()]
    for c in cells.values():
        if hasattr(c, "reset_mem"):  # snnTorch keeps its state on the module
            c.reset_mem()
    state, ys = None, []
    try:
        with torch.no_grad():
            for t in range(x.shape[0]):
                y, state = model(x[t], state)
                ys.append(y)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(ys), {n: torch.stack(v) for n, v in rec.items()}
