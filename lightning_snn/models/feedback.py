"""Feedback SNNs (equilibrium models): F400, F64C5 and the multilayer AlexNet-F / CIFARNet-F.

A feedback SNN is a chain of ``L`` spiking layers whose last layer feeds back into the first::

    I_1[t] = BN(F x[t]) + W_fb s_L[t-1]        I_{l+1}[t] = BN_l(W_l s_l[t])

With a contractive feedback weight its (weighted) firing rate converges to the fixed point of the
equivalent map (the spike representation of the neuron kind, ``SpikingNeuron.rate_map``)::

    a_1 = clamp((W_fb a_L + BN(F x)) / Vth_1, 0, 1),   a_{l+1} = clamp(BN_l(W_l a_l) / Vth_{l+1}, 0, 1)

evaluated on ``a_L``. The classifier reads ``a_L``. Strategies use ``prepare`` (input current,
feedback weight and dropout masks, computed once per batch), ``simulate`` (the SNN itself),
``equilibrium_map`` (the map above) and ``readout``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_snn.layers import TimeDistributed
from lightning_snn.models.base import MODELS, SpikingNet
from lightning_snn.models.init import FROM_FILE, IDE_FEEDBACK, SPIDE_KAIMING, Initialisation, Rule
from lightning_snn.neurons import NeuronConfig, SpikingNeuron, build_neuron, weighted_rate

BNMode = Literal["running", "batch", "update"]


class RestrictedWeight(nn.Module):
    """Spectral-norm restriction ``W = g * W_raw / sigma(W_raw)`` with ``|g| <= norm_range``.

    ``sigma`` is estimated by one power iteration per training call (persistent ``u``, ``v``;
    ``v <- W^T u / |W^T u|`` then ``u <- W v / |W v|``, ``sigma = u^T W v``, the official order).
    The gain is initialised to ``min(sigma(W_init), norm_range)`` and projected back into
    ``[-norm_range, norm_range]`` before each use, so it always has a gradient (a clamp in the
    forward pass would leave it without one whenever the initial norm exceeds the range).
    """

    def __init__(self, op: nn.Linear | nn.Conv2d | nn.ConvTranspose2d, norm_range: float = 1.0,
                 estimate: bool = True) -> None:
        super().__init__()
        self.op = op
        self.norm_range = norm_range
        mat = self._matrix(op.weight.detach())
        self.register_buffer("u", torch.zeros(mat.shape[0]))
        self.register_buffer("v", torch.zeros(mat.shape[1]))
        self.gain = nn.Parameter(torch.tensor(0.0))
        if estimate:  # otherwise the owner calls reset_estimate once the weight is initialised
            self.reset_estimate()

    @torch.no_grad()
    def reset_estimate(self) -> None:
        """Estimate sigma of the current raw weight afresh (100 power iterations from a random
        ``u``) and set the gain to ``min(sigma, norm_range)``: after the weight is (re)initialised."""
        mat = self._matrix(self.op.weight.detach())
        u = F.normalize(torch.randn(mat.shape[0], dtype=mat.dtype, device=mat.device), dim=0)
        v = F.normalize(mat.t() @ u, dim=0)
        for _ in range(100):  # a good initial estimate; one iteration per step afterwards
            v = F.normalize(mat.t() @ u, dim=0)
            u = F.normalize(mat @ v, dim=0)
        self.u, self.v = u, v
        self.gain.fill_(min(float(u @ mat @ v), self.norm_range))

    def _matrix(self, w: Tensor) -> Tensor:
        if isinstance(self.op, nn.ConvTranspose2d):  # weight is (in, out, k, k)
            w = w.transpose(0, 1)
        return w.reshape(w.shape[0], -1)

    def weight(self) -> Tensor:
        raw = self.op.weight
        mat = self._matrix(raw)
        if self.training:
            with torch.no_grad():
                # v then u, the official order (as torch.nn.utils.spectral_norm)
                self.v.copy_(F.normalize(mat.detach().t() @ self.u, dim=0))
                self.u.copy_(F.normalize(mat.detach() @ self.v, dim=0))
                self.gain.clamp_(-self.norm_range, self.norm_range)
        sigma = self.u @ mat @ self.v
        return self.gain * raw / sigma

    def apply(self, x: Tensor, weight: Tensor) -> Tensor:
        op = self.op
        if isinstance(op, nn.Linear):
            return F.linear(x, weight)
        if isinstance(op, nn.ConvTranspose2d):
            return F.conv_transpose2d(x, weight, None, op.stride, op.padding, op.output_padding)
        return F.conv2d(x, weight, None, op.stride, op.padding)


@dataclass
class FeedbackContext:
    """What one batch needs, computed once: input current per step, feedback weight, masks."""

    current: Tensor  # [T, B, ...] BN(F x[t]); an expanded view for static input
    feedback_weight: Tensor | None  # None: no feedback (``SNNZero``)
    masks: list[Tensor | None]  # one variational dropout mask per layer input (None = no dropout)
    leak: float
    # [B, ...] the one current of a static input. Steps read it, not a slice of ``current``: the
    # backward of a slice of an expanded tensor would allocate a [T, B, ...] gradient.
    static_current: Tensor | None = None

    def current_at(self, t: int) -> Tensor:
        return self.static_current if self.static_current is not None else self.current[t]

    @property
    def mean_current(self) -> Tensor:
        if self.static_current is not None:
            return self.static_current
        return self.current[0] if self.current.stride(0) == 0 else weighted_rate(self.current, self.leak)


def _batch_norm(x: Tensor, bn: nn.Module, mode: BNMode, detach: bool = False) -> Tensor:
    """BN with an explicit statistics mode: ``running`` (eval statistics), ``batch`` (batch
    statistics, running ones untouched) or ``update`` (batch statistics, running ones updated)."""
    if isinstance(bn, nn.Identity):
        return x
    if not bn.training:
        mode = "running"
    elif detach and mode == "update":  # a detached evaluation never touches the statistics
        mode = "batch"
    w, b = (bn.weight.detach(), bn.bias.detach()) if detach else (bn.weight, bn.bias)
    if mode == "update":
        return bn(x)
    if mode == "batch":
        return F.batch_norm(x, None, None, w, b, True, 0.0, bn.eps)
    return F.batch_norm(x, bn.running_mean, bn.running_var, w, b, False, 0.0, bn.eps)


class FeedbackSNN(SpikingNet):
    """A chain of spiking layers with feedback from the last layer to the first (see module doc).

    Args:
        input_op: ``F`` (linear or conv) with its batch norm ``input_bn``.
        hidden: ``(W_l, BN_l)`` of layers 2..L (empty for a single-layer model); ``W_l`` is any
            stateless module (a conv, or e.g. pooling followed by a conv or a linear layer).
        feedback_op: ``W_fb`` from layer L back to layer 1, restricted to norm ``<= norm_range``;
            ``None`` is zero feedback (SPIDE's ``SNNZero``: a feed-forward net whose "equilibrium"
            is reached in one pass, trained by the implicit strategies).
        classifier: linear read-out of the flattened ``a_L``.
        dropout: variational dropout on every layer input: one mask per batch, all time steps.
        feedback_init_scale: factor on the feedback weight's initialisation (SPIDE's official
            ``SNNConvTranspose`` multiplies it by 0.1).

    Layers start from ``initialisation`` (default: IDE's official one, see
    :data:`lightning_snn.models.init.IDE_FEEDBACK`; the feedback weight's unit rows scaled by
    ``feedback_init_scale``) unless ``official_init`` is false (weights given, e.g. read from a
    NIR file).
    """

    kind = "feedback"

    def __init__(
        self,
        input_op: nn.Module,
        input_bn: nn.Module,
        hidden: Sequence[tuple[nn.Module, nn.Module]],
        feedback_op: nn.Linear | nn.Conv2d | nn.ConvTranspose2d | None,
        classifier: nn.Linear,
        neuron: NeuronConfig | None,
        dropout: float = 0.0,
        norm_range: float = 1.0,
        feedback_init_scale: float = 1.0,
        official_init: bool = True,
        initialisation: Initialisation = IDE_FEEDBACK,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.input = TimeDistributed(input_op, input_bn)
        self.hidden_ops = nn.ModuleList([op for op, _ in hidden])
        self.hidden_bns = nn.ModuleList([bn for _, bn in hidden])
        self.feedback = (None if feedback_op is None
                         else RestrictedWeight(feedback_op, norm_range, estimate=not official_init))
        self.neurons = nn.ModuleList([build_neuron(neuron) for _ in range(len(hidden) + 1)])
        self.classifier = classifier
        self.dropout = dropout
        if official_init:
            initialisation.with_overrides(("feedback.op.weight", Rule("unit_rows", feedback_init_scale))).apply(self)
            if self.feedback is not None:  # sigma and the gain of the initialised weight
                self.feedback.reset_estimate()
        else:
            self.initialisation = FROM_FILE

    # --------------------------------------------------------------------------- pieces
    def prepare(self, x: Tensor) -> FeedbackContext:
        """Input current and feedback weight (with graph), and this batch's dropout masks."""
        static: Tensor | None = None
        if x.shape[0] > 1 and x.stride(0) == 0:  # direct encoding: the ops run once, on [B, ...]
            static = self.input(x[:1])[0]
            current = static.unsqueeze(0).expand(x.shape[0], *static.shape)
        else:
            current = self.input(x)
        weight = None if self.feedback is None else self.feedback.weight()
        masks: list[Tensor | None] = [None] * len(self.neurons)
        if self.training and self.dropout > 0:
            shapes = [current.shape[1:]]  # the shape of every layer's rate, layer 1 first
            with torch.no_grad():
                probe = torch.zeros((1, *current.shape[2:]), device=current.device, dtype=current.dtype)
                for op in self.hidden_ops:
                    probe = op(probe)
                    shapes.append(probe.shape[1:])
            keep = 1.0 - self.dropout
            # mask[0] acts on a_L (feedback input), mask[l] on a_l (input of hidden op l)
            shapes = [shapes[-1]] + shapes[:-1]
            masks = [torch.bernoulli(probe.new_full(s, keep)) / keep for s in shapes]
        return FeedbackContext(current, weight, masks, self.neurons[0].leak_value(), static)

    def _drop(self, a: Tensor, mask: Tensor | None) -> Tensor:
        return a if mask is None else a * mask

    def simulate(self, ctx: FeedbackContext, bn: BNMode = "running",
                 step: Callable[[SpikingNeuron, Tensor], Tensor] | None = None) -> Tensor:
        """Run the SNN for ``T = ctx.current.shape[0]`` steps from rest; return the weighted
        firing rate of the last layer. Differentiable through surrogates when grad is enabled.
        ``step(layer, current)`` replaces the layers' own single-step dynamics (it keeps the
        state itself; a fresh one per call)."""
        return self.simulate_layers(ctx, bn, step, every_layer=False)[-1]

    def simulate_layers(self, ctx: FeedbackContext, bn: BNMode = "running",
                        step: Callable[[SpikingNeuron, Tensor], Tensor] | None = None,
                        every_layer: bool = True) -> list[Tensor]:
        """:meth:`simulate`, returning the weighted firing rate of every layer ``[a_1, ..., a_L]``
        (``every_layer=False``: only ``[a_L]``, nothing accumulated for the others)."""
        step = step or (lambda layer, i: layer.step(i))
        for n in self.neurons:
            n.reset_state()
        T = ctx.current.shape[0]
        leak = self.neurons[-1].leak_value()
        # weighted rate accumulated online, a = sum_t leak^(T-1-t) s[t] / sum_k leak^k, through
        # acc[t] = leak * acc[t-1] + s[t]: no [T, B, ...] stack, so memory does not grow with T
        L = len(self.neurons)
        kept = range(L) if every_layer else range(L - 1, L)
        acc: dict[int, Tensor] = {}
        s_last: Tensor | None = None
        for t in range(T):
            i1 = ctx.current_at(t)
            if s_last is not None and self.feedback is not None:
                i1 = i1 + self.feedback.apply(self._drop(s_last, ctx.masks[0]), ctx.feedback_weight)
            spikes = [step(self.neurons[0], i1)]
            for l, (op, bnm) in enumerate(zip(self.hidden_ops, self.hidden_bns), start=1):
                spikes.append(step(self.neurons[l],
                                   _batch_norm(op(self._drop(spikes[-1], ctx.masks[l])), bnm, bn)))
            s_last = spikes[-1]
            for l in kept:
                s = spikes[l]
                acc[l] = s if t == 0 else (acc[l] + s if leak == 1.0 else leak * acc[l] + s)
        for n in self.neurons:
            n.reset_state()
        assert acc  # T >= 1
        norm = float(T) if leak == 1.0 else sum(leak**k for k in range(T))
        return [acc[l] / norm for l in kept]

    def equilibrium_map(
        self, a: Tensor, ctx: FeedbackContext, bn: BNMode = "update", detach: bool = False
    ) -> Tensor:
        """``f(a_L, x)``; with ``detach=True`` no parameter is in the graph (adjoint products)."""
        for l in range(len(self.neurons)):
            a = self.layer_map(l, a, ctx, bn, detach)
        return a

    def layer_map(
        self, l: int, a: Tensor, ctx: FeedbackContext, bn: BNMode = "update", detach: bool = False
    ) -> Tensor:
        """Layer ``l``'s part of the equivalent map (0-based): ``a_1 = f_0(a_L)`` (feedback plus
        input current), ``a_{l+1} = f_l(a_l)``; their composition is :meth:`equilibrium_map`."""
        vth = self.neurons[l].vth()
        return self.neurons[l].rate_map(self.layer_current(l, a, ctx, bn, detach),
                                        vth.detach() if detach else vth)

    def layer_current(
        self, l: int, a: Tensor, ctx: FeedbackContext, bn: BNMode = "update", detach: bool = False
    ) -> Tensor:
        """The input current of layer ``l`` (0-based) driven by the rate ``a`` of the layer before
        it (``a_L`` for layer 0: feedback plus input current), before the neurons' rate map."""
        def p(t: Tensor) -> Tensor:
            return t.detach() if detach else t

        if l == 0:
            cur = p(ctx.mean_current)
            if self.feedback is not None:
                return cur + self.feedback.apply(self._drop(a, ctx.masks[0]), p(ctx.feedback_weight))
            return cur + 0.0 * a.sum()  # zero feedback: no dependence on a_L (kept in the graph)
        op, bnm = self.hidden_ops[l - 1], self.hidden_bns[l - 1]
        x = self._drop(a, ctx.masks[l])
        if detach:  # the op with detached parameters: no parameter in the graph
            cur = torch.func.functional_call(op, {n: t.detach() for n, t in op.named_parameters()}, (x,))
        else:
            cur = op(x)
        return _batch_norm(cur, bnm, bn, detach)

    def readout(self, a: Tensor) -> Tensor:
        return self.classifier(a.flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        """BPTT path: simulate with the graph through time; scores of the final rate ``[1, B, C]``.
        Hidden batch norms use each step's batch statistics (running ones updated every step)."""
        ctx = self.prepare(x)
        return self.readout(self.simulate(ctx, bn="update")).unsqueeze(0)


# ------------------------------------------------------------------------------- registry
@MODELS.register("f_mlp")
def feedback_mlp(
    input_shape: Sequence[int],
    num_classes: int,
    neuron: NeuronConfig | None = None,
    hidden: int = 400,
    dropout: float = 0.0,
    norm_range: float = 1.0,
    batch_norm: bool = True,
) -> FeedbackSNN:
    """Single-layer fully connected feedback SNN: "F400" (784 -> 400 with 400x400 feedback).
    ``batch_norm``: a BatchNorm1d on the input current (the official SPIDE FC net has none)."""
    n_in = 1
    for d in input_shape:
        n_in *= d
    return FeedbackSNN(
        nn.Sequential(nn.Flatten(), nn.Linear(n_in, hidden)), _bn(nn.BatchNorm1d, hidden, batch_norm), [],
        nn.Linear(hidden, hidden, bias=False), nn.Linear(hidden, num_classes),
        neuron, dropout, norm_range,
    )


@MODELS.register("f_conv")
def feedback_conv(
    input_shape: Sequence[int],
    num_classes: int,
    neuron: NeuronConfig | None = None,
    channels: int = 64,
    kernel_size: int = 5,
    input_padding: int = 2,
    dropout: float = 0.0,
    norm_range: float = 1.0,
    batch_norm: bool = True,
) -> FeedbackSNN:
    """Single-layer conv feedback SNN "F64C5": conv5x5 stride 2 + BN in (``batch_norm``), conv5x5
    feedback."""
    c, h, w = input_shape
    k = kernel_size
    out_h, out_w = (h + 2 * input_padding - k) // 2 + 1, (w + 2 * input_padding - k) // 2 + 1
    return FeedbackSNN(
        nn.Conv2d(c, channels, k, stride=2, padding=input_padding),
        _bn(nn.BatchNorm2d, channels, batch_norm), [],
        nn.Conv2d(channels, channels, k, padding=k // 2, bias=False),
        nn.Linear(channels * out_h * out_w, num_classes), neuron, dropout, norm_range,
    )


@MODELS.register("multilayer_f")
def multilayer_f(
    input_shape: Sequence[int], num_classes: int, neuron: NeuronConfig | None = None,
    channels: Sequence[int] = (96, 256, 384, 384, 256), dropout: float = 0.0, norm_range: float = 1.0,
    batch_norm: bool = True, feedback_init_scale: float = 1.0,
) -> FeedbackSNN:
    """Five-layer conv feedback SNN: conv3x3 s2 + BN (layer 1, 16x16 for CIFAR), four conv3x3 +
    BN layers (the second with stride 2), transposed conv3x3 s2 feedback from layer 5 to layer 1.
    ``batch_norm: false`` drops every BN (the official SPIDE models have none);
    ``feedback_init_scale: 0.1`` is SPIDE's initialisation of the transposed-conv feedback."""
    if len(channels) != 5:
        raise ValueError(f"multilayer_f needs 5 channel counts, got {list(channels)}")
    c1, c2, c3, c4, c5 = channels
    h = (input_shape[1] + 1) // 2 // 2
    hidden = [
        (nn.Conv2d(c1, c2, 3, padding=1), _bn(nn.BatchNorm2d, c2, batch_norm)),
        (nn.Conv2d(c2, c3, 3, stride=2, padding=1), _bn(nn.BatchNorm2d, c3, batch_norm)),
        (nn.Conv2d(c3, c4, 3, padding=1), _bn(nn.BatchNorm2d, c4, batch_norm)),
        (nn.Conv2d(c4, c5, 3, padding=1), _bn(nn.BatchNorm2d, c5, batch_norm)),
    ]
    return FeedbackSNN(
        nn.Conv2d(input_shape[0], c1, 3, stride=2, padding=1), _bn(nn.BatchNorm2d, c1, batch_norm), hidden,
        nn.ConvTranspose2d(c5, c1, 3, stride=2, padding=1, output_padding=1, bias=False),
        nn.Linear(c5 * h * h, num_classes), neuron, dropout, norm_range, feedback_init_scale,
    )


@MODELS.register("alexnet_f")
def alexnet_f(
    input_shape: Sequence[int], num_classes: int, neuron: NeuronConfig | None = None,
    dropout: float = 0.0, norm_range: float = 1.0, width: float = 1.0, batch_norm: bool = True,
    feedback_init_scale: float = 1.0,
) -> FeedbackSNN:
    """AlexNet-F: channels 96 -> 256 -> 384 (s2) -> 384 -> 256 with feedback 256 -> 96 (times
    ``width``)."""
    return multilayer_f(input_shape, num_classes, neuron, _widths((96, 256, 384, 384, 256), width),
                        dropout, norm_range, batch_norm, feedback_init_scale)


@MODELS.register("cifarnet_f")
def cifarnet_f(
    input_shape: Sequence[int], num_classes: int, neuron: NeuronConfig | None = None,
    dropout: float = 0.0, norm_range: float = 1.0, width: float = 1.0, batch_norm: bool = True,
    feedback_init_scale: float = 1.0,
) -> FeedbackSNN:
    """CIFARNet-F: channels 128 -> 256 -> 512 (s2) -> 1024 -> 512 with feedback 512 -> 128 (times
    ``width``)."""
    return multilayer_f(input_shape, num_classes, neuron, _widths((128, 256, 512, 1024, 512), width),
                        dropout, norm_range, batch_norm, feedback_init_scale)


def _bn(kind: type[nn.Module], channels: int, enabled: bool) -> nn.Module:
    """A batch norm over ``channels``, or the identity when disabled."""
    return kind(channels) if enabled else nn.Identity()


def _widths(channels: Sequence[int], width: float) -> tuple[int, ...]:
    return tuple(max(1, int(c * width)) for c in channels)


@MODELS.register("lenet_zero")
def lenet_zero(
    input_shape: Sequence[int], num_classes: int, neuron: NeuronConfig | None = None,
    channels: Sequence[int] = (15, 40), hidden: int = 300, dropout: float = 0.0,
) -> FeedbackSNN:
    """SPIDE's MNIST LeNet with ``SNNZero`` feedback (a feed-forward SNN trained by SPIDE):
    conv5x5 1->15, avg-pool 2, conv5x5 15->40, avg-pool 2, FC 1960->300, linear classifier; no
    batch norm, no feedback. Initialised as the official LeNet (``init='kaiming'``: kaiming normal
    fan-in, biases 0), not with IDE's unit rows."""
    c, h, w = input_shape
    c1, c2 = channels
    hidden_ops = [
        (nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(c1, c2, 5, padding=2)), nn.Identity()),
        (nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(c2 * (h // 4) * (w // 4), hidden)),
         nn.Identity()),
    ]
    return FeedbackSNN(nn.Conv2d(c, c1, 5, padding=2), nn.Identity(), hidden_ops, None,
                       nn.Linear(hidden, num_classes), neuron, dropout, initialisation=SPIDE_KAIMING)
