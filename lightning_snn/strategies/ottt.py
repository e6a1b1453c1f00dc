"""Online training through time (OTTT): per-step forward and backward, constant memory in T.

The per-step loop is :class:`lightning_snn.strategies.online.OnlineStrategy`'s: at every time step
t the network runs one step from state detached from the past (a ``recurrent`` model's feedback
synapse then takes its gradient from a trace like every other); each trace-aware synaptic layer
keeps a presynaptic trace a[t] = lambda * a[t-1] + s[t] (no gradient); the instantaneous loss L[t] is back-propagated through the layers at step t only (surrogate
derivative at each neuron), and a layer's weight gradient is the three-factor form
dW += g_I[t] a[t]^T (postsynaptic error x trace, :class:`lightning_snn.layers.TraceLinear`).

``ottt_a`` accumulates the T per-step gradients and takes one optimiser step per batch (under DDP
the gradients are all-reduced once, at the last step); ``ottt_o`` steps the optimiser at every time
step. Batch-norm statistics, where a model has them, span a single step (B samples).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from lightning_snn.layers import TraceSynapse
from lightning_snn.models.base import SpikingNet
from lightning_snn.neurons import SpikingNeuron, spiking_layers
from lightning_snn.strategies.base import STRATEGIES
from lightning_snn.strategies.online import OnlineStrategy


def traced_synapses(model: nn.Module, trace_input: bool = False) -> list[tuple[TraceSynapse, SpikingNeuron]]:
    """Trace-aware synaptic layers and the spiking layer whose leak their trace uses.

    A layer's trace uses the leak of the next spiking layer in registration order (its
    postsynaptic neuron: du[t]/dW = sum_tau lambda^(t-tau) s[tau] without reset), or of the
    previous one for a read-out. Layers before the first spiking layer see the analogue input and
    are left plain unless ``trace_input``. A synapse whose postsynaptic neuron comes before it in
    registration order (a feedback synapse into an earlier layer) names it as ``postsynaptic``.
    A synapse whose input is not spikes (``reads_spikes`` false: NF-ResNet's read-out of the
    residual stream) stays plain, as the official code leaves it.
    """
    mods = list(model.modules())
    neurons = set(map(id, spiking_layers(model)))
    lifs = [i for i, m in enumerate(mods) if id(m) in neurons]
    if not lifs:
        return []
    out = []
    for i, m in enumerate(mods):
        if not isinstance(m, TraceSynapse) or not m.reads_spikes:
            continue
        post = getattr(m, "postsynaptic", None)
        if post is not None:  # named by the model: it sees spikes, whatever its position
            out.append((m, post))
            continue
        if i < lifs[0] and not trace_input:
            continue
        nxt = [j for j in lifs if j > i]
        out.append((m, mods[nxt[0] if nxt else lifs[-1]]))  # type: ignore[arg-type]
    return out


class OTTT(OnlineStrategy):
    """Shared machinery of ``ottt_a`` / ``ottt_o``: the online loop of :class:`OnlineStrategy`
    with presynaptic traces on the trace-aware synapses.

    Args:
        T: time steps.
        trace_input: also give the first synaptic layer (which sees the analogue input) a trace;
            the official models leave it plain.

    The per-step loss is the module's (``model.loss``: OTTT's ``loss_lambda`` is
    ``loss.mse_weight``). A learnable leak (PLIF) gives the traces its value at the start of
    each batch.
    """

    def __init__(self, T: int, trace_input: bool = False, loss_lambda: float | None = None) -> None:
        super().__init__(T)
        if loss_lambda is not None:  # where older configs set it
            raise ValueError(
                f"strategy_args.loss_lambda has moved to the module's one loss: set "
                f"model.loss.mse_weight: {loss_lambda} (--model.loss.mse_weight {loss_lambda})"
            )
        self.trace_input = trace_input

    def check_model(self, model: SpikingNet) -> None:
        super().check_model(model)
        neurons = set(map(id, spiking_layers(model)))
        seen_lif, plain = False, []
        for name, m in model.named_modules():
            if id(m) in neurons:
                seen_lif = True
            elif seen_lif and isinstance(m, (nn.Linear, nn.Conv2d)) and not isinstance(m, TraceSynapse):
                plain.append(name)
        if plain:
            raise ValueError(
                f"strategy {self.name!r} needs trace-aware synapses after spiking layers "
                f"(lightning_snn.layers.TraceLinear / TraceConv2d); {type(model).__name__} has plain "
                f"layers {plain}"
            )

    @contextmanager
    def online_run(self, model: nn.Module, training: bool) -> Iterator[None]:
        """The online run, with trace gradients on the synapses when ``training``."""
        layers = traced_synapses(model, self.trace_input) if training else []
        for layer, post in layers:
            layer.reset_trace()
            layer.trace_leak = post.leak_value()
        try:
            with super().online_run(model, training):
                yield
        finally:
            for layer, _ in layers:
                layer.trace_leak = None
                layer.reset_trace()


@STRATEGIES.register("ottt_a")
class OTTTA(OTTT):
    """OTTT_A: accumulate the T per-step gradients, one optimiser step per batch (under DDP the
    gradients are all-reduced once, at the last step)."""


@STRATEGIES.register("ottt_o")
class OTTTO(OTTT):
    """OTTT_O: an optimiser step at every time step."""

    update_every_step = True
