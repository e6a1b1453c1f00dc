"""Export a trained spiking network to NIR (the Neuromorphic Intermediate Representation, ``nir`` 1.0).

Discrete-time convention written into every file (graph and neuron-node metadata). NIR is
continuous-time; this project's neuron (``lightning_snn.neurons``) is the forward-Euler step of
NIR's LIF with time step ``dt``::

    v[t] = lambda * v[t-1] + I[t];  s[t] = H(v[t] - Vth);  v[t] <- v[t] - Vth * s[t]

- LIF (lambda < 1): ``tau = dt / (1 - lambda)``, ``r = tau / dt = 1 / (1 - lambda)`` (so the
  per-step input gain ``r * dt / tau`` is 1), ``v_leak = 0``, ``v_threshold = Vth``.
- IF (lambda = 1): ``r = 1`` read per step (``v[t] = v[t-1] + r I[t]``, no dt, as snnTorch and
  Norse import it), ``v_threshold = Vth``.
- Reset by subtraction. NIR >= 1.0.6 documents reset *to* ``v_reset``, which this project does
  not do; ``v_reset = 0`` is written and the metadata key ``reset = "subtract"`` states the rule.
- Spikes are in {0, 1}, fire at ``v >= Vth``; static input is fed unchanged at every step; the
  class score is the mean over the T steps of the output node (lambda-weighted for LIF feedback
  models).

Batch norm (running statistics) and weight standardisation are folded into the preceding
convolution / affine map; a batch norm that follows no such map (pre-activation ResNets) becomes a
depthwise 1x1 convolution. Residual sums become a unit ``Scale`` node (NIR adds the inputs of a
node with several incoming edges). Feedback models get a recurrent edge (last spiking layer ->
feedback map -> first spiking layer, one step later). A layer with no NIR counterpart raises
:class:`NIRExportError` naming it.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nir
import numpy as np
import torch
from torch import Tensor, nn

from lightning_snn.layers import Scale, TimeDistributed, TraceSynapse
from lightning_snn.models.base import SpikingNet
from lightning_snn.neurons import LIF

if TYPE_CHECKING:
    from lightning_snn.nir.importer import NIRNet

DEFAULT_DT = 1e-4  # s; snnTorch's NIR import hard-codes this step for LIF time constants


class NIRExportError(ValueError):
    """A layer or parameter that NIR 1.0 cannot express."""


def convention(dt: float) -> dict[str, Any]:
    """Metadata stating this project's discrete-time reading of the NIR neuron nodes."""
    return {
        "producer": "lightning-snn",
        "dt": float(dt),
        "reset": "subtract",
        "spike_condition": "v >= v_threshold",
        "if_input_gain": "v[t] = v[t-1] + r * I[t] (no dt)",
        "lif_discretisation": "forward Euler: v[t] = (1 - dt/tau) v[t-1] + (r dt/tau) I[t]",
        "input_encoding": "static input repeated at every step",
        "readout": "mean over time of the output node",
    }


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy().copy()


class GraphBuilder:
    """Nodes and edges of the graph under construction; node names are the modules' paths."""

    def __init__(self) -> None:
        self.nodes: dict[str, nir.NIRNode] = {}
        self.edges: list[tuple[str, str]] = []
        self.shapes: dict[str, tuple[int, ...]] = {}  # output shape (unbatched) of each node

    def name(self, path: str) -> str:
        base = path.replace(".", "_") or "node"
        name, i = base, 1
        while name in self.nodes:
            i += 1
            name = f"{base}_{i}"
        return name

    def add(self, path: str, node: nir.NIRNode, srcs: Sequence[str], shape: Sequence[int]) -> str:
        name = self.name(path)
        self.nodes[name] = node
        self.edges += [(s, name) for s in srcs]
        self.shapes[name] = tuple(int(d) for d in shape)
        return name

    def graph(self, metadata: dict[str, Any]) -> nir.NIRGraph:
        return nir.NIRGraph(nodes=self.nodes, edges=self.edges, metadata=metadata)


# ------------------------------------------------------------------------------ leaf converters
def _out_shape(module: nn.Module, shape: Sequence[int]) -> tuple[int, ...]:
    with torch.no_grad():
        p = next(iter(module.parameters()), None)
        x = torch.zeros(1, *shape, device=p.device if p is not None else None)
        return tuple(module(x).shape[1:])


def neuron_node(layer: LIF, shape: Sequence[int], dt: float) -> nir.NIRNode:
    """IF / LIF node of a spiking layer (parameters broadcast to the layer's shape)."""
    vth = float(layer.vth().detach())
    leak = float(layer.leak)
    full = lambda v: np.full(tuple(shape), v, dtype=np.float32)  # noqa: E731
    meta = {"reset": "subtract", "dt": float(dt), "leak": leak}
    if leak == 1.0:
        return nir.IF(r=full(1.0), v_threshold=full(vth), v_reset=full(0.0), metadata=meta)
    tau = dt / (1.0 - leak)  # lambda = 1 - dt / tau
    return nir.LIF(tau=full(tau), r=full(tau / dt), v_leak=full(0.0), v_threshold=full(vth),
                   v_reset=full(0.0), metadata=meta)


def _weight(m: nn.Module) -> Tensor:
    return m.effective_weight() if isinstance(m, TraceSynapse) else m.weight


def affine_node(w: Tensor, b: Tensor | None) -> nir.Affine:
    b = torch.zeros(w.shape[0]) if b is None else b
    return nir.Affine(weight=_np(w), bias=_np(b))


def conv_node(m: nn.Conv2d, shape: Sequence[int], w: Tensor | None = None,
              b: Tensor | None = None) -> nir.Conv2d:
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise NIRExportError(f"conv with padding {m.padding!r} / mode {m.padding_mode!r}: only numeric zero padding")
    w = _weight(m) if w is None else w
    b = (m.bias if m.bias is not None else torch.zeros(w.shape[0])) if b is None else b
    return nir.Conv2d(input_shape=tuple(shape[1:]), weight=_np(w), stride=tuple(m.stride),
                      padding=tuple(m.padding), dilation=tuple(m.dilation), groups=m.groups,
                      bias=_np(b))


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    # eval-mode BN: y = g (x - mu) / sqrt(var + eps) + beta = scale * x + shift
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else torch.rsqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
    return scale.detach(), shift.detach()


def fold_scale_shift(node: nir.NIRNode, scale: np.ndarray, shift: np.ndarray) -> nir.NIRNode:
    """``scale * node(x) + shift`` per output unit / channel, folded into an Affine or Conv2d."""
    if isinstance(node, nir.Affine):
        return nir.Affine(weight=node.weight * scale[:, None], bias=node.bias * scale + shift)
    assert isinstance(node, nir.Conv2d)
    return nir.Conv2d(input_shape=node.input_shape, weight=node.weight * scale[:, None, None, None],
                      stride=node.stride, padding=node.padding, dilation=node.dilation,
                      groups=node.groups, bias=node.bias * scale + shift)


def flatten_leaves(module: nn.Module, path: str) -> list[tuple[str, nn.Module]]:
    """The leaf modules of nested ``Sequential`` / ``TimeDistributed`` containers, in order."""
    if isinstance(module, nn.Sequential):  # TimeDistributed is a Sequential
        out: list[tuple[str, nn.Module]] = []
        for name, child in module.named_children():
            out += flatten_leaves(child, f"{path}.{name}" if path else name)
        return out
    return [(path, module)]


def chain(b: GraphBuilder, leaves: Sequence[tuple[str, nn.Module]], src: str, dt: float) -> str:
    """Convert a chain of leaf modules fed by node ``src``; returns the last node's name.

    A batch norm right after an affine / conv made by this chain is folded into it; otherwise it
    becomes a per-channel map (a depthwise 1x1 conv, or a diagonal affine for 1-d features).
    """
    local: set[str] = set()  # nodes made here: only these can absorb a batch norm
    shape = b.shapes[src]
    replicate = 1  # pending channel replication of a 1x1 -> o x o adaptive pool
    for i, (path, m) in enumerate(leaves):
        if isinstance(m, (nn.Dropout, nn.Identity)) or (isinstance(m, Scale) and m.scale == 1.0):
            continue  # identities at inference
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            scale, shift = (_np(t) for t in _bn_affine(m))
            if src in local and isinstance(b.nodes[src], (nir.Affine, nir.Conv2d)):
                b.nodes[src] = fold_scale_shift(b.nodes[src], scale, shift)
                continue
            if len(shape) == 1:
                node = nir.Affine(weight=np.diag(scale), bias=shift)
            else:
                # a 1x1 conv with a diagonal weight (NIR's type inference ignores conv groups)
                w = np.diag(scale)[:, :, None, None]
                node = nir.Conv2d(input_shape=tuple(shape[1:]), weight=w, stride=1, padding=0,
                                  dilation=1, groups=1, bias=shift)
        elif isinstance(m, LIF):
            node = neuron_node(m, shape, dt)
        elif isinstance(m, nn.Linear):
            w = _weight(m)
            if replicate > 1:  # the features came replicated (see AdaptiveAvgPool2d): sum weights
                w = w.reshape(w.shape[0], -1, replicate).sum(-1)
                replicate = 1
            node = affine_node(w, m.bias)
        elif isinstance(m, nn.Conv2d) and type(m) is not nn.ConvTranspose2d:
            node = conv_node(m, shape)
        elif isinstance(m, nn.AvgPool2d):
            if m.ceil_mode or (m.padding not in (0, (0, 0)) and not m.count_include_pad):
                raise NIRExportError(f"layer {path!r} ({m!r}): NIR's AvgPool2d has no ceil_mode / count_include_pad=False")
            pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
            node = nir.AvgPool2d(kernel_size=np.array(pair(m.kernel_size)),
                                 stride=np.array(pair(m.stride or m.kernel_size)),
                                 padding=np.array(pair(m.padding)))
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            out = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,) * 2
            h, w = shape[1:]
            nxt = [type(n) for _, n in leaves[i + 1 : i + 3]]
            if (h, w) == (1, 1) and len(nxt) == 2 and issubclass(nxt[0], nn.Flatten) and issubclass(nxt[1], nn.Linear):
                # 1x1 -> o x o replicates each channel o*o times; the next Linear absorbs it by
                # summing its weights over the replicas (DSR's DVS VGG-11 on 48x48 frames)
                replicate = out[0] * out[1]
                continue
            if any(o is None or s % o for s, o in zip((h, w), out)):
                raise NIRExportError(f"layer {path!r} ({m!r}): input {h}x{w} is not a multiple of the output size")
            k = (h // out[0], w // out[1])
            node = nir.AvgPool2d(kernel_size=np.array(k), stride=np.array(k), padding=np.array((0, 0)))
        elif isinstance(m, nn.Flatten):
            # NIR's dims index the unbatched shape: torch Flatten(1, -1) -> NIR Flatten(0, -1)
            end = m.end_dim if m.end_dim < 0 else m.end_dim - 1
            node = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=m.start_dim - 1, end_dim=end)
        elif isinstance(m, Scale):
            node = nir.Scale(scale=np.full(tuple(shape), m.scale, dtype=np.float32))
        else:
            raise NIRExportError(
                f"layer {path!r} ({m!r}) has no NIR 1.0 node; exportable layers: Linear, Conv2d, "
                f"BatchNorm (folded), AvgPool2d, AdaptiveAvgPool2d (divisible), Flatten, Dropout, "
                f"Scale, IF/LIF (no upsampling, transposed convolution or max pooling)"
            )
        if isinstance(m, LIF):
            new_shape = tuple(shape)
        elif isinstance(m, nn.Linear):
            new_shape = (m.out_features,)
        else:
            new_shape = _out_shape(m, shape)
        src = b.add(path, node, [src], new_shape)
        local.add(src)
        shape = new_shape
    return src


def sum_node(b: GraphBuilder, path: str, srcs: Sequence[str]) -> str:
    """A residual sum: a unit ``Scale`` node whose incoming edges NIR adds."""
    shape = b.shapes[srcs[0]]
    return b.add(path, nir.Scale(scale=np.ones(shape, dtype=np.float32)), srcs, shape)


def scale_last(b: GraphBuilder, name: str, factor: float) -> None:
    """Multiply the output of affine / conv node ``name`` by a scalar (folded into it)."""
    node = b.nodes[name]
    c = node.weight.shape[0]
    b.nodes[name] = fold_scale_shift(node, np.full(c, factor, np.float32), np.zeros(c, np.float32))


# ------------------------------------------------------------------------------ model exporters
Exporter = Callable[[SpikingNet, GraphBuilder, str, float], str]
EXPORTERS: dict[type, Exporter] = {}
"""Model class -> function adding the model's nodes after the input node; returns the last node."""


def register_exporter(*classes: type) -> Callable[[Exporter], Exporter]:
    def add(fn: Exporter) -> Exporter:
        for c in classes:
            EXPORTERS[c] = fn
        return fn
    return add


def _register_builtin() -> None:
    from lightning_snn.models import deep, feedback, feedforward

    @register_exporter(feedforward._Sequential, deep.SpikingVGG11WS)
    def _seq(net: SpikingNet, b: GraphBuilder, src: str, dt: float) -> str:
        return chain(b, flatten_leaves(net.layers, "layers"), src, dt)

    def _block(blk: nn.Module, path: str, b: GraphBuilder, src: str, dt: float) -> str:
        if isinstance(blk, deep.PreActBlock):
            s = chain(b, [(f"{path}.bn1", blk.bn1[0]), (f"{path}.lif1", blk.lif1)], src, dt)
            main = chain(b, flatten_leaves(blk.conv1, f"{path}.conv1") + flatten_leaves(blk.bn2, f"{path}.bn2")
                         + [(f"{path}.lif2", blk.lif2)] + flatten_leaves(blk.conv2, f"{path}.conv2"), s, dt)
            skip = chain(b, flatten_leaves(blk.shortcut, f"{path}.shortcut"), s, dt) if blk.shortcut else src
            return sum_node(b, f"{path}.add", [main, skip])
        assert isinstance(blk, deep.NFBlock)
        pre = src
        if blk.beta != 1.0:  # h / beta
            pre = b.add(f"{path}.prescale", nir.Scale(scale=np.full(b.shapes[src], 1.0 / blk.beta, np.float32)),
                        [src], b.shapes[src])
        s = chain(b, [(f"{path}.lif1", blk.lif1), (f"{path}.scale", blk.scale)], pre, dt)
        layers = flatten_leaves(blk.conv1, f"{path}.conv1")
        for i in range(2, blk.depth + 1):  # [spike -> scale -> conv] per further conv
            layers += [(f"{path}.lif{i}", getattr(blk, f"lif{i}")), (f"{path}.scale", blk.scale)]
            layers += flatten_leaves(getattr(blk, f"conv{i}"), f"{path}.conv{i}")
        main = chain(b, layers, s, dt)
        scale_last(b, main, float(blk.skipinit_gain.detach()) * blk.alpha)  # alpha * g * f(h / beta)
        skip = chain(b, flatten_leaves(blk.shortcut, f"{path}.shortcut"), s, dt) if blk.shortcut else src
        return sum_node(b, f"{path}.add", [skip, main])

    @register_exporter(deep.PreActResNet, deep.NFResNet34)
    def _resnet(net: SpikingNet, b: GraphBuilder, src: str, dt: float) -> str:
        src = chain(b, flatten_leaves(net.stem, "stem"), src, dt)
        for i, blk in enumerate(net.blocks):
            src = _block(blk, f"blocks.{i}", b, src, dt)
        return chain(b, flatten_leaves(net.head, "head"), src, dt)

    @register_exporter(deep.SpikingVGG11FWS)
    def _vggf(net: SpikingNet, b: GraphBuilder, src: str, dt: float) -> str:
        for path, m in flatten_leaves(net.feedback, "feedback"):
            if isinstance(m, nn.Upsample):
                raise NIRExportError(
                    f"layer {path!r} ({m!r}) of {type(net).__name__} has no NIR 1.0 node: NIR has no "
                    f"upsampling or transposed convolution, so the feedback edge cannot be written")
        first = chain(b, flatten_leaves(net.conv1, "conv1"), src, dt)
        last = chain(b, flatten_leaves(net.features, "features"), first, dt)
        return chain(b, flatten_leaves(net.head, "head"), last, dt)

    @register_exporter(feedback.FeedbackSNN)
    def _feedback(net: SpikingNet, b: GraphBuilder, src: str, dt: float) -> str:
        fb = net.feedback.op
        if isinstance(fb, nn.ConvTranspose2d):
            raise NIRExportError(
                f"layer 'feedback.op' ({fb!r}) of {type(net).__name__} has no NIR 1.0 node: NIR has no "
                f"transposed convolution, so the feedback edge cannot be written")
        first_in = chain(b, flatten_leaves(net.input, "input"), src, dt)
        s = first = chain(b, [("neurons.0", net.neurons[0])], first_in, dt)
        for l, (op, bn) in enumerate(zip(net.hidden_ops, net.hidden_bns), start=1):
            s = chain(b, [(f"hidden_ops.{l - 1}", op), (f"hidden_bns.{l - 1}", bn),
                          (f"neurons.{l}", net.neurons[l])], s, dt)
        with torch.no_grad():
            w = net.feedback.weight()  # g * W / sigma(W), evaluated (eval mode: no power step)
        shape = b.shapes[s]
        node = affine_node(w, None) if isinstance(fb, nn.Linear) else conv_node(fb, shape, w, torch.zeros(w.shape[0]))
        fb_name = b.add("feedback", node, [s], _out_shape(fb, shape))
        if b.shapes[fb_name] != b.shapes[first_in]:
            raise NIRExportError(f"feedback output {b.shapes[fb_name]} does not match the first layer {b.shapes[first_in]}")
        b.edges.append((fb_name, first))  # the recurrent edge: s_L[t-1] -> I_1[t]
        head = [("flatten", nn.Flatten())] if len(shape) > 1 else []
        return chain(b, head + [("classifier", net.classifier)], s, dt)

    from lightning_snn.nir.importer import NIRNet

    register_exporter(NIRNet)(export_nodes)


def export_nodes(net: NIRNet, b: GraphBuilder, src: str, dt: float) -> str:
    """Exporter of an imported graph: its nodes and edges again, under the same names."""
    from lightning_snn.nir.importer import ScaleArray

    names = {net.input_name: src}
    for n in net.order:
        m = net.nodes[n]
        leaf = m[0] if isinstance(m, TimeDistributed) else m
        shape = net.node_shapes[n]
        if isinstance(leaf, LIF):
            node = neuron_node(leaf, shape, net.dt)
        elif isinstance(leaf, ScaleArray):
            node = nir.Scale(scale=_np(leaf.scale.expand(shape) if leaf.scale.dim() else leaf.scale))
        else:
            tmp = GraphBuilder()
            t_src = tmp.add("input", nir.Input(input_type={"input": np.array(shape)}), [], shape)
            node = tmp.nodes[chain(tmp, [(n, leaf)], t_src, net.dt)]
        names[n] = b.add(n, node, [], shape if isinstance(leaf, LIF) else _out_shape(leaf, shape))
    for s, d in net.edges:
        if d != net.output_name and s in names:
            b.edges.append((names[s], names[d]))
    outs = net.sources[net.output_name]
    if len(outs) != 1:
        return sum_node(b, "output_sum", [names[s] for s in outs])
    return names[outs[0]]


def exporter_for(net: nn.Module) -> Exporter:
    if not EXPORTERS:
        _register_builtin()
    for cls in type(net).__mro__:
        if cls in EXPORTERS:
            return EXPORTERS[cls]
    raise NIRExportError(
        f"no NIR exporter for model class {type(net).__name__}; exportable: "
        f"{sorted(c.__name__ for c in EXPORTERS)}"
    )


def normalization_metadata(mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """Metadata stating the input normalisation the network expects (per channel, pixels in [0, 1])."""
    return {"input_mean": np.asarray(mean, dtype=np.float64), "input_std": np.asarray(std, dtype=np.float64),
            "input_normalization": "x = (pixel / 255 - input_mean) / input_std per channel"}


def to_nir(net: SpikingNet, input_shape: Sequence[int], dt: float = DEFAULT_DT,
           normalization: tuple[Sequence[float], Sequence[float]] | None = None) -> nir.NIRGraph:
    """The NIR graph of ``net`` (evaluation mode: running BN statistics, no dropout) for unbatched
    input of ``input_shape`` (e.g. ``(1, 28, 28)``). ``normalization`` (data set ``mean``, ``std``)
    is recorded in the graph's metadata: the graph's input is the normalised image. Raises
    :class:`NIRExportError` for a layer NIR cannot express. A ``dt`` other than snnTorch's fixed
    1e-4 warns when the graph has LIF nodes (snnTorch's own import misreads their leak)."""
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    exporter = exporter_for(net)
    was_training = net.training
    net.eval()
    try:
        b = GraphBuilder()
        src = b.add("input", nir.Input(input_type={"input": np.array(input_shape)}), [], input_shape)
        last = exporter(net, b, src, dt)
        b.add("output", nir.Output(output_type={"output": np.array(b.shapes[last])}), [last], b.shapes[last])
        meta = {**convention(dt), "model": type(net).__name__, "kind": net.kind}
        if normalization is not None:
            meta.update(normalization_metadata(*normalization))
        if dt != DEFAULT_DT and any(isinstance(n, nir.LIF) for n in b.nodes.values()):
            warnings.warn(
                f"dt = {dt} s: snnTorch's import_from_nir assumes dt = {DEFAULT_DT} s and will read the "
                f"LIF leak as 1 - {DEFAULT_DT} / tau instead of 1 - {dt} / tau "
                f"(lightning_snn.nir.readers.read_snntorch corrects it)", stacklevel=2)
        return b.graph(meta)
    finally:
        net.train(was_training)


def check_strategy(strategy: Any) -> None:
    """The exported neurons fire at ``Vth``, subtract ``Vth`` and emit unit spikes; a strategy that
    runs other neurons (DSR fires at ``alpha * Vth``, optionally with spikes of value ``Vth``)
    would make the file differ from the trained network: a clear error instead."""
    alpha, value = getattr(strategy, "alpha", 1.0), getattr(strategy, "spike_value", "unit")
    if getattr(strategy, "name", "") == "dsr" and (alpha != 1.0 or value != "unit"):
        raise NIRExportError(
            f"strategy 'dsr' runs neurons that fire at alpha * Vth (alpha = {alpha}) with "
            f"spike_value {value!r}; NIR's IF / LIF fire and reset at one threshold with unit spikes. "
            f"Export a model trained (or fine-tuned) with alpha = 1 and spike_value 'unit', or "
            f"with bptt / ottt_a / ottt_o / ide")


def write_nir(graph: nir.NIRGraph, path: str | os.PathLike) -> Path:
    """Write ``graph`` to ``path`` atomically (a temporary file renamed into place), so a failure
    never leaves a partial file or clobbers an existing one."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--out {str(path)!r} is a directory; give a file name such as model.nir")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise ValueError(f"--out {str(path)!r}: cannot write in {str(path.parent)!r} ({e.strerror}) "
                         "(valid: a file in a writable folder)") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        nir.write(tmp, graph)
        os.chmod(tmp, 0o666 & ~umask)  # as an ordinary file (mkstemp makes it 0600), like checkpoints
        os.replace(tmp, path)
    except OSError as e:
        raise ValueError(f"--out {str(path)!r}: cannot write it ({e.strerror}) "
                         "(valid: a file in a writable folder with free space)") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
