"""How each registered model starts: the initialisation of its official code, declared in one place.

An :class:`Initialisation` names the official file it follows and gives one :class:`Rule` per kind
of parameter (conv / linear weight and bias, batch-norm weight and bias, the gain of a scaled-WS
conv) plus overrides for single parameters by name (a zero-initialised read-out or feedback conv).
A model applies its declaration at the end of its constructor (:meth:`Initialisation.apply`),
which also records it as ``model.initialisation``: the registry-wide test checks every parameter
of every registered model against the rule it declares (zeros exactly, the sample std of a random
layer within its sampling error of the formula), so a model added later has to state one.

Neuron parameters (a trainable threshold, PLIF's leak) come from the neuron's config and are not
part of a model's initialisation.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import nn

from lightning_snn.layers import ScaledWSConv2d
from lightning_snn.neurons import SpikingNeuron

RuleKind = Literal["kaiming_normal", "normal", "constant", "unit_rows", "pytorch_default", "given"]


@dataclass(frozen=True)
class Rule:
    """How one parameter starts.

    - ``kaiming_normal``: N(0, 2 / fan), fan the weight's ``mode`` (``fan_out`` = out channels x
      kernel area, ``fan_in`` = in channels x kernel area): ``kaiming_normal_(mode=mode,
      nonlinearity='relu')`` (SPIDE's ``a=0`` leaky ReLU is the same gain sqrt(2));
    - ``normal``: N(0, value^2);
    - ``constant``: every entry ``value``;
    - ``unit_rows``: U(-1, 1), then each output unit's weights scaled to L2 norm ``value``
      (IDE / SPIDE; a transposed conv's output units are along its weight's dim 1);
    - ``pytorch_default``: left as PyTorch's constructor made it (weight and bias
      U(-1/sqrt(fan_in), 1/sqrt(fan_in)); batch norm 1 / 0);
    - ``given``: set by something else (read from a file; derived from other weights).
    """

    kind: RuleKind
    value: float = 0.0
    mode: Literal["fan_in", "fan_out"] = "fan_out"

    @torch.no_grad()
    def apply(self, module: nn.Module, p: nn.Parameter) -> None:
        if self.kind == "kaiming_normal":
            nn.init.kaiming_normal_(p, mode=self.mode, nonlinearity="relu")
        elif self.kind == "normal":
            nn.init.normal_(p, 0.0, self.value)
        elif self.kind == "constant":
            nn.init.constant_(p, self.value)
        elif self.kind == "unit_rows":
            p.uniform_(-1.0, 1.0)
            w = p.transpose(0, 1) if isinstance(module, nn.ConvTranspose2d) else p
            w *= self.value / w.flatten(1).norm(dim=1).view(-1, *([1] * (w.dim() - 1)))


ZERO, ONE = Rule("constant", 0.0), Rule("constant", 1.0)
DEFAULT, GIVEN = Rule("pytorch_default"), Rule("given")
KAIMING_FAN_OUT = Rule("kaiming_normal", mode="fan_out")


@dataclass(frozen=True)
class Initialisation:
    """One model's initialisation: rules by kind of parameter, then ``overrides`` by name (an
    ``fnmatch`` pattern on the parameter's full name, first match wins); ``source`` is the
    official file it follows."""

    source: str
    conv_weight: Rule = DEFAULT
    conv_bias: Rule = DEFAULT
    linear_weight: Rule = DEFAULT
    linear_bias: Rule = DEFAULT
    norm_weight: Rule = ONE
    norm_bias: Rule = ZERO
    ws_gain: Rule = ONE  # a scaled-WS conv's per-channel gain (1 in both official codes)
    overrides: tuple[tuple[str, Rule], ...] = field(default=())

    def with_overrides(self, *overrides: tuple[str, Rule]) -> Initialisation:
        return replace(self, overrides=(*overrides, *self.overrides))

    def rule(self, name: str, module: nn.Module, pname: str) -> Rule | None:
        """The rule of parameter ``name`` (``pname`` of ``module``); ``None``: none declared."""
        for pattern, rule in self.overrides:
            if fnmatch.fnmatchcase(name, pattern):
                return rule
        if isinstance(module, nn.modules.conv._ConvNd):
            if isinstance(module, ScaledWSConv2d) and pname == "gain":
                return self.ws_gain
            return {"weight": self.conv_weight, "bias": self.conv_bias}.get(pname)
        if isinstance(module, nn.Linear):
            return {"weight": self.linear_weight, "bias": self.linear_bias}.get(pname)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return {"weight": self.norm_weight, "bias": self.norm_bias}.get(pname)
        return None

    def parameters(self, model: nn.Module) -> Iterator[tuple[str, nn.Module, nn.Parameter, Rule | None]]:
        """``(name, module, parameter, rule)`` for every parameter of ``model`` but the neurons'."""
        for mname, m in model.named_modules():
            if isinstance(m, SpikingNeuron):
                continue
            for pname, p in m.named_parameters(recurse=False):
                name = f"{mname}.{pname}" if mname else pname
                yield name, m, p, self.rule(name, m, pname)

    def apply(self, model: nn.Module) -> nn.Module:
        """Initialise every parameter of ``model`` by its rule and record ``model.initialisation``;
        a parameter without a rule is an error naming it (a model must declare all of them)."""
        for name, m, p, rule in self.parameters(model):
            if rule is None:
                raise ValueError(f"{type(model).__name__}: no initialisation rule for parameter {name!r} "
                                 f"({type(m).__name__}.{name.rsplit('.', 1)[-1]}); declare one in its Initialisation")
            rule.apply(m, p)
        model.initialisation = self
        return model


# ----------------------------------------------------------------------------------- declarations
# pkuxmq/OTTT-SNN models/spiking_vgg.py, OnlineSpikingVGG._initialize_weights: conv (plain and sWS)
# kaiming_normal_(fan_out, relu), bias 0; BatchNorm2d 1 / 0; Linear N(0, 0.01), bias 0. The same
# rules are qymeng94/SLTT models/spiking_vgg_bn.py and qymeng94/DSR cifar/modules/vgg.py.
OTTT_VGG = Initialisation(
    source="pkuxmq/OTTT-SNN models/spiking_vgg.py (OnlineSpikingVGG._initialize_weights)",
    conv_weight=KAIMING_FAN_OUT, conv_bias=ZERO, linear_weight=Rule("normal", 0.01), linear_bias=ZERO,
)
SLTT_VGG = replace(OTTT_VGG, source="qymeng94/SLTT models/spiking_vgg_bn.py (SpikingVGGBN.__init__)")
DSR_VGG = replace(OTTT_VGG, source="qymeng94/DSR cifar/modules/vgg.py (VGG.__init__)")
# OnlineSpikingVGGF._initialize_weights: as the VGG, then fb_conv's weight 0 (its bias is 0 already)
OTTT_VGGF = replace(OTTT_VGG, source="pkuxmq/OTTT-SNN models/spiking_vgg.py (OnlineSpikingVGGF._initialize_weights)",
                    overrides=(("feedback.*", ZERO),))
# qymeng94/DSR cifar/modules/preresnet.py PreActResNet.__init__ (the same in qymeng94/SLTT
# models/spiking_resnet.py): conv weight kaiming_normal_(fan_out, relu), conv bias left at PyTorch's
# default, BatchNorm2d 1 / 0, Linear bias 0 (its weight: PyTorch's default).
DSR_PREACT_RESNET = Initialisation(
    source="qymeng94/DSR cifar/modules/preresnet.py (PreActResNet.__init__); = qymeng94/SLTT models/spiking_resnet.py",
    conv_weight=KAIMING_FAN_OUT, conv_bias=DEFAULT, linear_weight=DEFAULT, linear_bias=ZERO,
)
# qymeng94/DSR imagenet/preresnet_snn.py PreResNet.__init__: conv weight N(0, 2 / (k*k*out)) (=
# kaiming fan_out, relu), no conv biases there (zero here: the same function at the start),
# BatchNorm2d 1 / 0, Linear left at PyTorch's default.
DSR_IMAGENET_RESNET = Initialisation(
    source="qymeng94/DSR imagenet/preresnet_snn.py (PreResNet.__init__)",
    conv_weight=KAIMING_FAN_OUT, conv_bias=ZERO, linear_weight=DEFAULT, linear_bias=DEFAULT,
)
# pkuxmq/OTTT-SNN models/spiking_resnet_imagenet.py OnlineSpikingNFResNet.__init__ (the same in
# qymeng94/SLTT models/spiking_resnet_imagenet.py SpikingNFResNet): fc weight 0 (its bias: PyTorch's
# default), every conv (sWS) kaiming_normal_(fan_out, relu) with bias 0, gains 1, skipinit gains 0.
OTTT_NF_RESNET = Initialisation(
    source="pkuxmq/OTTT-SNN models/spiking_resnet_imagenet.py (OnlineSpikingNFResNet.__init__); "
           "= qymeng94/SLTT models/spiking_resnet_imagenet.py",
    conv_weight=KAIMING_FAN_OUT, conv_bias=ZERO, linear_weight=ZERO, linear_bias=DEFAULT,
    overrides=(("*skipinit_gain", ZERO),),
)
# SRKH/ProxyLearning Proxy_FashionMnist.ipynb: no initialisation code, PyTorch's default.
PROXY = Initialisation(source="SRKH/ProxyLearning Proxy_FashionMnist.ipynb (PyTorch's default)")
# The project's own small nets (no official code): PyTorch's default.
PYTORCH_DEFAULT = Initialisation(source="none (a project model): PyTorch's default")
# pkuxmq/IDE-FSNN modules/snn_modules.py SNNFC / SNNConv / SNNConvTranspose._initialize_weights:
# U(-1, 1) with each output unit scaled to unit norm, bias 0, BN 1 / 0; the classifier (nn.Linear)
# left at PyTorch's default. The same as pkuxmq/SPIDE-FSNN modules/snn_modules.py init='default'
# (its SNNConvTranspose then x0.1: ``feedback_init_scale``). The feedback restriction's gain is
# min(sigma(W_init), norm_range), derived from the feedback weight.
IDE_FEEDBACK = Initialisation(
    source="pkuxmq/IDE-FSNN modules/snn_modules.py (_initialize_weights); = pkuxmq/SPIDE-FSNN init='default'",
    conv_weight=Rule("unit_rows", 1.0), conv_bias=ZERO, linear_weight=Rule("unit_rows", 1.0), linear_bias=ZERO,
    overrides=(("classifier.*", DEFAULT), ("feedback.gain", GIVEN)),
)
# R400 (OTTT's appendix row): IDE's F400 layer run step by step. OTTT's official code has no
# Fashion-MNIST script, so the F400 layer's initialisation is taken (an assumption, named in
# configs/ottt/base/r400.yaml); the recurrent weight's unit rows are then divided by their spectral
# norm where it exceeds 1 (the weight IDE's restricted feedback starts from): derived, ``given``.
IDE_RECURRENT = replace(
    IDE_FEEDBACK, source="pkuxmq/IDE-FSNN modules/snn_modules.py (_initialize_weights), F400's layer; assumed for R400",
    overrides=(("classifier.*", DEFAULT), ("recurrent.*", GIVEN)),
)
# pkuxmq/SPIDE-FSNN models/snn_spide_mnist_lenet.py: every SNNConv / SNNFC init='kaiming', i.e.
# kaiming_normal_(a=0, mode='fan_in') (modules/snn_modules.py), bias 0; the classifier PyTorch's default.
SPIDE_KAIMING = Initialisation(
    source="pkuxmq/SPIDE-FSNN models/snn_spide_mnist_lenet.py (init='kaiming', modules/snn_modules.py)",
    conv_weight=Rule("kaiming_normal", mode="fan_in"), conv_bias=ZERO,
    linear_weight=Rule("kaiming_normal", mode="fan_in"), linear_bias=ZERO,
    overrides=(("classifier.*", DEFAULT),),
)
# A model whose weights are read from a file (NIR import): nothing is initialised.
FROM_FILE = Initialisation(source="the weights of the file it is read from", conv_weight=GIVEN, conv_bias=GIVEN,
                           linear_weight=GIVEN, linear_bias=GIVEN, norm_weight=GIVEN, norm_bias=GIVEN,
                           ws_gain=GIVEN, overrides=(("*", GIVEN),))
