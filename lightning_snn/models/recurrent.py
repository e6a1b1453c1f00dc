"""Recurrent SNNs run step by step: IDE's F400 feedback layer as an ordinary recurrent layer.

``r_mlp`` ("R400", OTTT's appendix row on Fashion-MNIST): one fully connected layer of spiking
neurons whose own spikes come back one step later through a recurrent weight::

    I[t] = BN(F x[t]) + W_rec s[t-1]        s[t] = LIF(I[t])        o[t] = W_out s[t]

It is the layer of IDE's ``f_mlp`` (784 -> 400, 400 x 400 feedback), but trained through time
(BPTT) or online (OTTT / SLTT) instead of at its equilibrium: kind ``recurrent``. Its per-step
scores ``o[t]`` are what the online strategies put a loss on at each step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_snn.layers import TimeDistributed, TraceLinear
from lightning_snn.models.base import MODELS, SpikingNet
from lightning_snn.models.deep import Delay, run_step_by_step
from lightning_snn.models.init import IDE_RECURRENT, Rule
from lightning_snn.neurons import NeuronConfig, build_neuron


@MODELS.register("r_mlp")
class RecurrentMLP(SpikingNet):
    """One recurrent spiking layer of ``hidden`` neurons and a linear read-out (see module doc).

    Args:
        hidden: neurons of the recurrent layer (400: "R400").
        batch_norm: a BatchNorm1d on the input current ``F x`` (as IDE's F400).

    ``F``, ``W_rec`` and the batch norm start from IDE's official initialisation
    (:data:`lightning_snn.models.init.IDE_RECURRENT`: ``U(-1, 1)`` rows of unit norm),
    and ``W_rec`` is then divided by its spectral norm where that exceeds 1, which is the weight
    IDE's restricted feedback (``g W / sigma(W)``, ``|g| <= 1``) starts from; afterwards it is an
    unrestricted weight (no fixed point has to exist when training through time). The read-out
    keeps PyTorch's default initialisation, as in IDE.

    ``s[t-1]`` is held by a :class:`lightning_snn.models.deep.Delay` (a strategy's state like the
    neurons': reset per batch, detached between steps by the online strategies). At rest it is
    zero, so ``W_rec`` is in every step's graph (DDP expects every parameter used). Under OTTT the
    input layer (analogue pixels) stays a plain synapse; ``W_rec`` and the read-out take their
    weight gradient from the presynaptic trace, with the recurrent layer's leak.
    """

    kind = "recurrent"

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        neuron: NeuronConfig | None = None,
        hidden: int = 400,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        n_in = 1
        for d in input_shape:
            n_in *= d
        linear_in = nn.Linear(n_in, hidden)
        bn = nn.BatchNorm1d(hidden) if batch_norm else nn.Identity()
        self.input = TimeDistributed(nn.Flatten(), linear_in, bn)
        self.neuron = build_neuron(neuron)
        recurrent = TraceLinear(hidden, hidden, bias=False)
        Rule("unit_rows", 1.0).apply(recurrent, recurrent.weight)
        with torch.no_grad():
            sigma = torch.linalg.matrix_norm(recurrent.weight, ord=2)
            recurrent.weight.div_(torch.clamp(sigma, min=1.0))
        # its postsynaptic neuron comes before it in registration order: name it for OTTT's trace
        # (a plain reference, not a submodule: no second copy in the state dict)
        recurrent.__dict__["postsynaptic"] = self.neuron
        self.recurrent = TimeDistributed(recurrent)
        self.classifier = TimeDistributed(TraceLinear(hidden, num_classes))
        self.delay = Delay()
        self.hidden = hidden
        IDE_RECURRENT.apply(self)

    def forward(self, x: Tensor) -> Tensor:
        return run_step_by_step(self, self._run, x)

    def _run(self, x: Tensor) -> Tensor:
        current = self.input(x)  # all steps at once (computed once for a static input)
        outs = []
        for t in range(x.shape[0]):
            prev = self.delay.value
            if prev is None:  # at rest: no spikes yet
                prev = current.new_zeros(1, current.shape[1], self.hidden)
            s = self.neuron(current[t : t + 1] + self.recurrent(prev))
            self.delay.push(s)
            outs.append(self.classifier(s))
        return torch.cat(outs)
