"""Run a NIR file with snnTorch and with Norse, and with this project, recording every spiking
layer, for the cross-library checks of ``test_nir.py``.

Conventions converted here (each is a difference of the other library, not of the file):

- Both importers apply NIR's ``Flatten`` dims (which index the *unbatched* shape) to the tensor
  they are given, so samples are fed one at a time, unbatched.
- snnTorch 1.0.0 imports ``IF`` as ``Leaky(beta=0.9, init_hidden=False)``: a leak the file does not
  have, and a ``(spikes, membrane)`` tuple that its own graph then passes to the next layer. We set
  ``beta = 1`` and ``init_hidden = True`` (what the later snnTorch fix does).
- snnTorch imports ``LIF`` with ``reset_mechanism="zero"`` (NIR >= 1.0.6 wording); the file says
  ``reset = subtract`` in its metadata, so the reset is set back to subtraction. Its LIF uses
  ``dt = 1e-4`` (hard-coded), the export's default ``dt``.
- Norse's ``LIFBoxCell`` integrates ``v += dt/tau (i - v)`` and ignores ``r``: its input gain is
  ``dt/tau = 1 - lambda`` instead of 1, so its threshold is scaled by ``1 - lambda`` (the same
  spikes, a membrane scaled by ``1 - lambda``), and its reset set to subtraction.
- Norse maps ``SumPool2d`` but not ``AvgPool2d``: average pools are given to it as sum pools
  with the 1/k^2 folded into the next synaptic node (:func:`avgpool_as_sumpool`).
- Norse's ``IAFCell`` always resets to ``v_reset`` (0): no parameter converts that to
  subtraction, so IF agreement with Norse is measured, not converted.
"""

from __future__ import annotations

import copy
import logging
import warnings

import torch
from torch import Tensor, nn

from lightning_snn.neurons import LIF


def ours(net: nn.Module, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Outputs ``[T, B, ...]`` and the spikes of every spiking layer, keyed by node name."""
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
    # the node name of a layer: its module path with '.' -> '_' (NIRNet keeps them under "nodes.")
    return y, {n.removeprefix("nodes.").replace(".", "_"): torch.cat(v) for n, v in rec.items()}


def _per_sample(model: nn.Module, cells: dict[str, nn.Module], x: Tensor, spikes_of) -> tuple[Tensor, dict[str, Tensor]]:
    """Run ``model(x_t, state) -> (y, state)`` sample by sample, T steps each, from rest."""
    T, B = x.shape[:2]
    ys, rec = [], {n: [] for n in cells}
    for b in range(B):
        cur: dict[str, list[Tensor]] = {n: [] for n in cells}
        hooks = [c.register_forward_hook(lambda _m, _i, o, n=n: cur[n].append(spikes_of(o).detach()))
                 for n, c in cells.items()]
        for c in cells.values():
            if hasattr(c, "reset_mem"):
                c.reset_mem()
        state, yb = None, []
        try:
            with torch.no_grad():
                for t in range(T):
                    y, state = model(x[t, b], state)
                    yb.append(y)
        finally:
            for h in hooks:
                h.remove()
        ys.append(torch.stack(yb))
        for n in cells:
            rec[n].append(torch.stack(cur[n]))
    return torch.stack(ys, 1), {n: torch.stack(v, 1) for n, v in rec.items()}


def run_snntorch(graph, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The graph imported by ``snntorch.import_nir.import_from_nir`` (conventions converted)."""
    import snntorch as snn
    from snntorch.import_nir import import_from_nir

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = import_from_nir(copy.deepcopy(graph))  # it rewrites the graph in place
    cells = {n.split(".")[-1]: m for n, m in model.named_modules() if isinstance(m, snn.Leaky)}
    for m in cells.values():
        if not m.init_hidden:  # IF import: Leaky(beta=0.9, init_hidden=False)
            m.beta = torch.tensor(1.0)
            m.init_hidden = True
        m.reset_mechanism = "subtract"
        m.state_function = m._base_sub
    return _per_sample(model, cells, x, lambda o: o[0] if isinstance(o, tuple) else o)


def run_norse(graph, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The graph imported by ``norse.torch.from_nir(dt=1e-4)`` (LIF conventions converted)."""
    import norse.torch as norse
    from norse.torch.functional.reset import reset_subtract

    dt = float(graph.metadata.get("dt", 1e-4))
    logging.disable(logging.WARNING)  # "r is expected to be 1": r is converted below
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = norse.from_nir(avgpool_as_sumpool(graph), dt=dt)
    finally:
        logging.disable(logging.NOTSET)
    cells: dict[str, nn.Module] = {}
    for n, m in model.named_modules():
        kind = type(m).__name__
        if kind == "LIFBoxCell":
            gain = dt * m.p.tau_mem_inv  # Norse's input gain 1 - lambda
            m.p = m.p._replace(v_th=m.p.v_th * gain, reset_method=reset_subtract)
            cells[n.split(".")[-1]] = m
        elif kind == "IAFCell":
            cells[n.split(".")[-1]] = m
    return _per_sample(model, cells, x, lambda o: o[0])


def agreement(ref: dict[str, Tensor], other: dict[str, Tensor]) -> dict[str, float]:
    """Fraction of equal spikes per layer (same layer names, same number of spikes)."""
    assert sorted(ref) == sorted(other), (sorted(ref), sorted(other))
    return {n: float((other[n].reshape(ref[n].shape) == ref[n]).float().mean()) for n in ref}


# ------------------------------------------------------------------------------ the other rules
# Our network run with another library's neuron update, to show that a remaining mismatch is
# exactly that rule (and not an error of the file): the state is kept on the layer (``layer.v``)
# so a model run step by step continues from it.
def snntorch_rule(layer: LIF, x: Tensor) -> Tensor:
    """snnTorch ``Leaky(reset_mechanism="subtract", reset_delay=False)``: the reset owed by a
    post-reset potential above threshold is subtracted *before* the spike test, strict ``>``."""
    thr = layer.vth().detach()
    mem = torch.zeros_like(x[0]) if layer.v is None else layer.v
    out = []
    for t in range(x.shape[0]):
        owed = (mem > thr).to(x.dtype)
        mem = layer.leak * mem + x[t] - owed * thr
        spk = (mem > thr).to(x.dtype)
        mem = mem - (spk - owed) * thr
        out.append(spk)
    layer.v = mem
    return torch.stack(out)


def norse_if_rule(layer: LIF, x: Tensor) -> Tensor:
    """Norse ``IAFCell``: v += I, spike if v > Vth, then v = 0 (reset to v_reset)."""
    thr = layer.vth().detach()
    v = torch.zeros_like(x[0]) if layer.v is None else layer.v
    out = []
    for t in range(x.shape[0]):
        v = layer.leak * v + x[t]
        z = (v > thr).to(x.dtype)
        v = v * (1 - z)
        out.append(z)
    layer.v = v
    return torch.stack(out)


def ours_with_rule(net: nn.Module, x: Tensor, rule) -> dict[str, Tensor]:
    """Spikes of ``net`` with every spiking layer running ``rule``."""
    from lightning_snn.neurons import neuron_dynamics, reset_states

    reset_states(net)
    try:
        with neuron_dynamics(net, rule):
            return ours(net, x)[1]
    finally:
        reset_states(net)


def snntorch_rnn_rewiring(graph):
    """The graph as snnTorch 1.0.0 runs it: ``_create_rnn_subgraph`` turns an LIF <-> Affine cycle
    into a subgraph whose input edge goes into the recurrent weight (input -> W_rec -> LIF) instead
    of into the LIF, so the LIF receives W_rec (x + s[t-1])."""
    import nir

    g = copy.deepcopy(graph)
    for lif, w in [(a, b) for a, b in g.edges if (b, a) in g.edges]:
        if isinstance(g.nodes[lif], (nir.LIF, nir.CubaLIF)) and isinstance(g.nodes[w], (nir.Affine, nir.Linear)):
            g.edges = [(s, w) if d == lif and s != w else (s, d) for s, d in g.edges]
    return g


def avgpool_as_sumpool(graph):
    """Norse 1.1.0 maps ``SumPool2d`` (as ``LPPool2d(p=1)``, a sum of |x|) but not ``AvgPool2d``:
    each average pool becomes a sum pool and the synaptic node after it (through ``Flatten``) takes
    the 1/k^2 in its weights. Exact for the non-negative spikes our pools see."""
    import nir
    import numpy as np

    g = copy.deepcopy(graph)
    for name, node in list(g.nodes.items()):
        if not isinstance(node, nir.AvgPool2d):
            continue
        g.nodes[name] = nir.SumPool2d(kernel_size=node.kernel_size, stride=node.stride, padding=node.padding)
        todo = [d for s, d in g.edges if s == name]
        while todo:
            d = todo.pop()
            n = g.nodes[d]
            if isinstance(n, nir.Flatten):
                todo += [e for s, e in g.edges if s == d]
            elif isinstance(n, (nir.Affine, nir.Conv2d)):
                n.weight = n.weight / float(np.prod(node.kernel_size))
            else:
                raise ValueError(f"average pool {name!r} feeds {type(n).__name__}: cannot fold its 1/k^2")
    return nir.NIRGraph(nodes=g.nodes, edges=g.edges, metadata=g.metadata)
