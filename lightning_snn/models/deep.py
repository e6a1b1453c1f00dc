"""Deep SNNs of the OTTT and DSR papers (feed-forward, and OTTT's recurrent VGG-F).

- ``vgg11_ws``: OTTT's VGG-11 with scaled weight standardisation (no batch norm), average pooling,
  a ``spike_scale`` (2.74) after every spiking layer, global pool and linear read-out.
- ``vgg11f_ws``: OTTT's VGG-F, the same with a zero-initialised feedback conv from the last feature
  map (upsampled x8) to the first layer, one step later; it runs step by step (kind ``recurrent``:
  BPTT and OTTT train it, DSR cannot).
- ``preact_resnet18``: DSR's pre-activation ResNet-18 for CIFAR (BN -> spike -> conv blocks);
  ``resnet18`` / ``resnet34``: the same blocks with the ImageNet stem (7x7/2 conv, 3x3/2 pool).
- ``nf_resnet34``: OTTT's normaliser-free ResNet-34 for ImageNet (sWS conv, x/beta pre-activation,
  alpha = 0.2, zero-initialised skip gains and read-out weight); ``nf_resnet50`` / ``nf_resnet101``:
  SLTT's bottleneck versions.

All take ``[T, B, C, H, W]`` and return per-step scores ``[T, B, classes]``; pooling is average
pooling (a max of spikes is an OR). Stateless layers are wrapped in ``TimeDistributed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from lightning_snn.layers import Scale, ScaledWSConv2d, TimeDistributed, TraceConv2d, TraceLinear
from lightning_snn.models.base import MODELS, SpikingNet
from lightning_snn.models.feedforward import readout
from lightning_snn.models.init import (
    DSR_IMAGENET_RESNET, DSR_PREACT_RESNET, OTTT_NF_RESNET, OTTT_VGG, OTTT_VGGF, Initialisation,
)
from lightning_snn.neurons import (
    NeuronConfig, SpikingNeuron, Stateful, build_neuron, neuron_dynamics, reset_states,
)

OTTT_SPIKE_SCALE = 2.74  # scaled-WS / NF-ResNet scale after each spiking layer (OTTT Sec. 4.4)
VGG11_WS = (64, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512)


def _vgg_ws_stages(c: int, cfg: Sequence[int | str], neuron: NeuronConfig | None,
                   spike_scale: float) -> tuple[list[nn.Module], int]:
    """[sWS conv3x3 -> spike -> x spike_scale] per number in ``cfg``, 2x2 average pool per ``M``;
    also returns the last channel count."""
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(TimeDistributed(nn.AvgPool2d(2)))
        else:
            layers += [TimeDistributed(ScaledWSConv2d(c, int(v), 3, padding=1)), build_neuron(neuron),
                       TimeDistributed(Scale(spike_scale))]
            c = int(v)
    return layers, c


@MODELS.register("vgg11_ws")
class SpikingVGG11WS(SpikingNet):
    """OTTT's VGG(sWS): [sWS conv3x3 -> spike -> x spike_scale] stages with 2x2 average pools,
    then global average pool and a linear read-out. 9.23M parameters for 10 classes."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        neuron: NeuronConfig | None = None,
        cfg: Sequence[int | str] = VGG11_WS,
        spike_scale: float = OTTT_SPIKE_SCALE,
    ) -> None:
        super().__init__()
        layers, c = _vgg_ws_stages(input_shape[0], cfg, neuron, spike_scale)
        layers.append(TimeDistributed(nn.AdaptiveAvgPool2d(1), nn.Flatten(), TraceLinear(c, num_classes)))
        self.layers = nn.Sequential(*layers)
        OTTT_VGG.apply(self)  # pkuxmq/OTTT-SNN models/spiking_vgg.py

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class Delay(Stateful, nn.Module):
    """Holds a signal for one time step: ``value`` is what was ``push``-ed at the previous step
    (``None`` at rest). Its state is the strategy's, like a neuron's: put back at rest by
    ``reset_states``, cut from the past by ``detach_states`` (OTTT), kept in the graph otherwise
    (BPTT)."""

    def __init__(self) -> None:
        super().__init__()
        self.value: Tensor | None = None

    def push(self, x: Tensor) -> None:
        self.value = x

    def reset_state(self) -> None:
        self.value = None

    def detach_state(self) -> None:
        if self.value is not None:
            self.value = self.value.detach()


def _carry_step(layer: SpikingNeuron, x: Tensor) -> Tensor:
    """Neuron dynamics of a model that runs step by step itself: continue from the stored state,
    with the graph through time (no detach)."""
    return torch.stack([layer.step(x[t]) for t in range(x.shape[0])])


def run_step_by_step(model: SpikingNet, run: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``run(x)``, a model's own loop over time, with its neurons carrying state from step to step:
    as they are when a strategy owns the state (OTTT's online steps), otherwise from rest with the
    graph through time, keeping nothing afterwards."""
    if any(m.dynamics is not None for m in model.spiking_layers()):
        return run(x)
    reset_states(model)
    try:
        with neuron_dynamics(model, _carry_step):
            return run(x)
    finally:
        reset_states(model)


@MODELS.register("vgg11f_ws")
class SpikingVGG11FWS(SpikingNet):
    """OTTT's VGG-F: VGG(sWS) with a feedback connection from the last feature map to the first
    layer, whose input current at step t is

        conv1(x[t]) + fb_conv(Upsample(f[t-1]))

    with ``f`` the last stage's output (spikes x ``spike_scale``, 512 x 4 x 4 for CIFAR), a nearest
    Upsample by 2^(number of pools) back to the first layer's resolution (x8: 4x4 -> 32x32) and
    ``fb_conv`` a 3x3 conv 512 -> 64 with bias, initialised to zero (so the network starts as
    VGG(sWS)). 9.52M parameters for 10 classes, 9.57M for 100.

    The first layer at step t depends on the last at step t-1, so the model runs step by step
    (``kind = "recurrent"``). ``f[t-1]`` is held by a :class:`Delay`, stateful like the neurons:
    ``forward`` of a ``[T, B, ...]`` sequence starts from rest and keeps nothing, with the graph
    through time (BPTT); when a strategy runs the neurons with dynamics of its own (OTTT's online
    steps, one call per step) the model continues from the stored state, which that strategy resets
    per batch and detaches between steps. At rest ``f[-1] = 0``: at step 0 the feedback adds only
    its bias (the official code skips the feedback conv at step 0; the two agree while the bias is
    zero, and this keeps every parameter in every step's graph, as DDP expects). Under OTTT the
    feedback conv is a trace synapse like the others, with the trace leak of its postsynaptic
    neuron (the first layer's). DSR (whole-sequence neuron maps) and IDE cannot train it.
    """

    kind = "recurrent"

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        neuron: NeuronConfig | None = None,
        cfg: Sequence[int | str] = VGG11_WS,
        spike_scale: float = OTTT_SPIKE_SCALE,
    ) -> None:
        super().__init__()
        if not cfg or cfg[0] == "M":
            raise ValueError(f"vgg11f_ws needs a conv layer first in cfg, got {list(cfg)}")
        self.factor = 2 ** sum(v == "M" for v in cfg)
        if input_shape[1] % self.factor or input_shape[2] % self.factor:
            raise ValueError(
                f"vgg11f_ws: input {tuple(input_shape[1:])} is not divisible by {self.factor} "
                f"(2^pools), so the upsampled feedback would not match the first layer's map"
            )
        layers, c = _vgg_ws_stages(input_shape[0], cfg, neuron, spike_scale)
        self.conv1 = layers[0]  # sees the analogue input: a plain synapse under OTTT
        self.features = nn.Sequential(*layers[1:])  # first spiking layer ... last x spike_scale
        self.head = TimeDistributed(nn.AdaptiveAvgPool2d(1), nn.Flatten(), TraceLinear(c, num_classes))
        fb_conv = TraceConv2d(c, int(cfg[0]), 3, padding=1)  # zero-initialised (OTTT_VGGF)
        # its postsynaptic neuron comes before it in registration order: name it for OTTT's trace
        # (a plain reference, not a submodule: no second copy in the state dict)
        fb_conv.__dict__["postsynaptic"] = self.features[0]
        self.feedback = TimeDistributed(nn.Upsample(scale_factor=self.factor, mode="nearest"), fb_conv)
        self.delay = Delay()
        OTTT_VGGF.apply(self)  # pkuxmq/OTTT-SNN models/spiking_vgg.py (OnlineSpikingVGGF)

    @property
    def fb_conv(self) -> TraceConv2d:
        return self.feedback[1]

    def forward(self, x: Tensor) -> Tensor:
        return run_step_by_step(self, self._run, x)

    def _run(self, x: Tensor) -> Tensor:
        current = self.conv1(x)  # all steps at once (computed once for a static input)
        outs = []
        for t in range(x.shape[0]):
            prev = self.delay.value
            if prev is None:  # at rest: no spikes yet
                B, _, H, W = current.shape[1:]
                prev = current.new_zeros(1, B, self.fb_conv.in_channels, H // self.factor, W // self.factor)
            f = self.features(current[t : t + 1] + self.feedback(prev))
            self.delay.push(f)
            outs.append(self.head(f))
        return torch.cat(outs)


# ------------------------------------------------------------------------------ pre-activation ResNet
class PreActBlock(nn.Module):
    """BN -> spike -> conv3x3 -> BN -> spike -> dropout -> conv3x3, plus the identity or a 1x1 conv
    of the activated input. Conv biases are on (as in DSR's code)."""

    def __init__(self, c_in: int, c_out: int, stride: int, neuron: NeuronConfig | None,
                 dropout: float) -> None:
        super().__init__()
        self.bn1 = TimeDistributed(nn.BatchNorm2d(c_in))
        self.lif1 = build_neuron(neuron)
        self.conv1 = TimeDistributed(TraceConv2d(c_in, c_out, 3, stride, 1))
        self.bn2 = TimeDistributed(nn.BatchNorm2d(c_out))
        self.lif2 = build_neuron(neuron)
        self.conv2 = TimeDistributed(nn.Dropout(dropout), TraceConv2d(c_out, c_out, 3, 1, 1))
        self.shortcut = (TimeDistributed(TraceConv2d(c_in, c_out, 1, stride))
                         if stride != 1 or c_in != c_out else None)

    def forward(self, x: Tensor) -> Tensor:
        s = self.lif1(self.bn1(x))
        skip = self.shortcut(s) if self.shortcut is not None else x
        return self.conv2(self.lif2(self.bn2(self.conv1(s)))) + skip


class PreActResNet(SpikingNet):
    """Spiking pre-activation ResNet.

    Args:
        blocks: blocks per stage ((2, 2, 2, 2) = 18, (3, 4, 6, 3) = 34).
        stem: ``cifar`` (conv3x3 3->64) or ``imagenet`` (conv7x7/2 -> BN -> spike -> avgpool3x3/2).
        head: ``linear`` read-out or ``spiking`` (Linear -> BN1d -> spiking layer, DSR's head).
        dropout: inside each block, before its second conv.
        width: channel multiplier of the stages (64, 128, 256, 512).
        initialisation: the official code's (``lightning_snn.models.init``), set by each
            registered factory.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        neuron: NeuronConfig | None = None,
        blocks: Sequence[int] = (2, 2, 2, 2),
        stem: str = "cifar",
        head: str = "linear",
        dropout: float = 0.0,
        width: float = 1.0,
        initialisation: Initialisation = DSR_PREACT_RESNET,
    ) -> None:
        super().__init__()
        widths = [max(1, int(c * width)) for c in (64, 128, 256, 512)]
        c = widths[0]
        if stem == "cifar":
            self.stem = nn.Sequential(TimeDistributed(nn.Conv2d(input_shape[0], c, 3, 1, 1, bias=False)))
        elif stem == "imagenet":
            self.stem = nn.Sequential(
                TimeDistributed(nn.Conv2d(input_shape[0], c, 7, 2, 3, bias=False), nn.BatchNorm2d(c)),
                build_neuron(neuron),
                TimeDistributed(nn.AvgPool2d(3, 2, 1)),
            )
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        stages: list[nn.Module] = []
        for i, (n, w) in enumerate(zip(blocks, widths)):
            for j in range(n):
                stages.append(PreActBlock(c, w, 2 if (j == 0 and i > 0) else 1, neuron, dropout))
                c = w
        self.blocks = nn.Sequential(*stages)
        self.head = nn.Sequential(
            TimeDistributed(nn.BatchNorm2d(c)), build_neuron(neuron),
            TimeDistributed(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
            *readout(c, num_classes, neuron, head),
        )
        initialisation.apply(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))


@MODELS.register("preact_resnet18")
def preact_resnet18(input_shape: Sequence[int], num_classes: int, neuron: NeuronConfig | None = None,
                    head: str = "linear", dropout: float = 0.0, width: float = 1.0) -> PreActResNet:
    """DSR's (and SLTT's) CIFAR PreAct-ResNet-18."""
    return PreActResNet(input_shape, num_classes, neuron, (2, 2, 2, 2), "cifar", head, dropout, width,
                        DSR_PREACT_RESNET)  # qymeng94/DSR cifar/modules/preresnet.py


@MODELS.register("resnet18")
def resnet18(input_shape: Sequence[int], num_classes: int, neuron: NeuronConfig | None = None,
             head: str = "linear", dropout: float = 0.0, width: float = 1.0) -> PreActResNet:
    """Spiking (pre-activation) ResNet-18 with the ImageNet stem."""
    return PreActResNet(input_shape, num_classes, neuron, (2, 2, 2, 2), "imagenet", head, dropout, width,
                        DSR_IMAGENET_RESNET)  # qymeng94/DSR imagenet/preresnet_snn.py


@MODELS.register("resnet34")
def resnet34(input_shape: Sequence[int], num_classes: int, neuron: NeuronConfig | None = None,
             head: str = "linear", dropout: float = 0.0, width: float = 1.0) -> PreActResNet:
    """Spiking (pre-activation) ResNet-34 with the ImageNet stem."""
    return PreActResNet(input_shape, num_classes, neuron, (3, 4, 6, 3), "imagenet", head, dropout, width,
                        DSR_IMAGENET_RESNET)  # qymeng94/DSR imagenet/preresnet_snn.py


# ------------------------------------------------------------------------------ NF-ResNet
class NFBlock(nn.Module):
    """Normaliser-free pre-activation block: h + alpha * g * f(h / beta), with a skip gain g
    initialised to 0 and f = [spike -> x scale -> sWS conv] per conv: two conv3x3 (basic) or
    conv1x1 -> conv3x3 -> conv1x1 to 4x the width (``bottleneck``), the stride on the 3x3; a
    transition block's shortcut is a 1x1 sWS conv of the activated input (its first spikes)."""

    def __init__(self, c_in: int, c_out: int, stride: int, beta: float, alpha: float,
                 neuron: NeuronConfig | None, spike_scale: float, bottleneck: bool = False) -> None:
        super().__init__()
        self.beta, self.alpha = beta, alpha
        width = c_out // 4
        convs = ([(c_in, width, 1, 1, 0), (width, width, 3, stride, 1), (width, c_out, 1, 1, 0)] if bottleneck
                 else [(c_in, c_out, 3, stride, 1), (c_out, c_out, 3, 1, 1)])
        self.depth = len(convs)
        self.scale = Scale(spike_scale)
        for i, (a, b, k, s, p) in enumerate(convs, start=1):  # lif1, conv1, lif2, conv2, ...
            setattr(self, f"lif{i}", build_neuron(neuron))
            setattr(self, f"conv{i}", TimeDistributed(ScaledWSConv2d(a, b, k, s, p)))
        self.shortcut = (TimeDistributed(ScaledWSConv2d(c_in, c_out, 1, stride))
                         if stride != 1 or c_in != c_out else None)
        self.skipinit_gain = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        s = self.scale(self.lif1(x / self.beta))
        skip = self.shortcut(s) if self.shortcut is not None else x
        out = self.conv1(s)
        for i in range(2, self.depth + 1):
            out = getattr(self, f"conv{i}")(self.scale(getattr(self, f"lif{i}")(out)))
        return skip + out * (self.skipinit_gain * self.alpha)


@MODELS.register("nf_resnet34")
class NFResNet34(SpikingNet):
    """OTTT's / SLTT's spiking NF-ResNet-34 (ImageNet): sWS stem conv7x7/2 + avgpool3x3/2, NF
    blocks (3, 4, 6, 3) with beta = sqrt(expected variance), alpha = 0.2, then global average pool
    of the residual stream and a linear read-out with zero-initialised weight (no spiking layer
    before it, as ``OnlineSpikingNFResNet._forward_impl``). 21.80M parameters for 1000 classes.
    ``spike_scale`` is the x2.74 inside the blocks; ``bottleneck`` blocks (x4 expansion) make the
    NF-ResNet-50 / -101 of SLTT's ImageNet table (``nf_resnet50``, ``nf_resnet101``)."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        neuron: NeuronConfig | None = None,
        blocks: Sequence[int] = (3, 4, 6, 3),
        alpha: float = 0.2,
        spike_scale: float = OTTT_SPIKE_SCALE,
        width: float = 1.0,
        bottleneck: bool = False,
    ) -> None:
        super().__init__()
        widths = [max(1, int(c * width)) for c in (64, 128, 256, 512)]
        c = widths[0]
        self.stem = nn.Sequential(
            TimeDistributed(ScaledWSConv2d(input_shape[0], c, 7, 2, 3), nn.AvgPool2d(3, 2, 1))
        )
        stages: list[nn.Module] = []
        var = 1.0  # expected variance of the residual stream
        for i, (n, w) in enumerate(zip(blocks, widths)):
            w = 4 * w if bottleneck else w
            for j in range(n):
                stride = 2 if (j == 0 and i > 0) else 1
                block = NFBlock(c, w, stride, var**0.5, alpha, neuron, spike_scale, bottleneck)
                stages.append(block)
                # a transition block's shortcut re-normalises the stream; otherwise the variance
                # grows by alpha^2 per block
                var = 1.0 + alpha**2 if block.shortcut is not None else var + alpha**2
                c = w
        self.blocks = nn.Sequential(*stages)
        # the official head reads the residual stream itself: global average pool -> fc, no spiking
        # layer before it; its fc is a plain nn.Linear (OTTT gives it no trace: its input is not
        # spikes), so here ``reads_spikes`` is off. Weight zero-initialised (OTTT_NF_RESNET).
        fc = TraceLinear(c, num_classes)
        fc.reads_spikes = False
        self.head = nn.Sequential(TimeDistributed(nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc))
        OTTT_NF_RESNET.apply(self)  # pkuxmq/OTTT-SNN models/spiking_resnet_imagenet.py

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))


@MODELS.register("nf_resnet50")
class NFResNet50(NFResNet34):
    """SLTT's spiking NF-ResNet-50 (qymeng94/SLTT ``spiking_nfresnet50``): bottleneck NF blocks
    (3, 4, 6, 3), widths 256-2048, otherwise as ``nf_resnet34``."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, neuron: NeuronConfig | None = None,
                 blocks: Sequence[int] = (3, 4, 6, 3), alpha: float = 0.2,
                 spike_scale: float = OTTT_SPIKE_SCALE, width: float = 1.0) -> None:
        super().__init__(input_shape, num_classes, neuron, blocks, alpha, spike_scale, width, bottleneck=True)


@MODELS.register("nf_resnet101")
class NFResNet101(NFResNet50):
    """SLTT's spiking NF-ResNet-101 (``spiking_nfresnet101``): bottleneck NF blocks (3, 4, 23, 3)."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, neuron: NeuronConfig | None = None,
                 blocks: Sequence[int] = (3, 4, 23, 3), alpha: float = 0.2,
                 spike_scale: float = OTTT_SPIKE_SCALE, width: float = 1.0) -> None:
        super().__init__(input_shape, num_classes, neuron, blocks, alpha, spike_scale, width)
