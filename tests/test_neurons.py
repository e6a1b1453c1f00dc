"""Neuron dynamics against hand-computed traces, surrogate derivatives against closed forms."""

import math

import pytest
import torch

from lightning_snn.neurons import LIF, SURROGATES, NeuronConfig, reset_states, spike, weighted_rate


def reference_trace(inputs, vth, leak):
    """Hand-written scalar loop: h = leak*v + I, s = [h >= vth], v = h - vth*s."""
    v, spikes, potentials = 0.0, [], []
    for i in inputs:
        h = leak * v + i
        s = 1.0 if h >= vth else 0.0
        v = h - vth * s
        spikes.append(s)
        potentials.append(v)
    return spikes, potentials


# Traces worked out by hand for Vth = 1.
# IF, constant input 0.6: h = .6 -> 1.2 (spike, v=.2) -> .8 -> 1.4 (spike, v=.4) -> 1.0 (spike, v=0)
IF_06 = [0, 1, 0, 1, 1]
# LIF leak 0.5, constant 0.8: h = .8 -> 1.2 (spike, v=.2) -> .9 -> 1.25 (spike, v=.25) -> .925
LIF_05_08 = [0, 1, 0, 1, 0]


@pytest.mark.parametrize("T", [1, 2, 3, 4, 5])
def test_if_hand_trace(T):
    x = torch.full((T, 1), 0.6)
    s = LIF(NeuronConfig(threshold=1.0, leak=1.0))(x)
    assert s.flatten().tolist() == IF_06[:T]


@pytest.mark.parametrize("T", [1, 2, 3, 4, 5])
def test_lif_hand_trace(T):
    x = torch.full((T, 1), 0.8)
    s = LIF(NeuronConfig(threshold=1.0, leak=0.5))(x)
    assert s.flatten().tolist() == LIF_05_08[:T]


@pytest.mark.parametrize("leak", [1.0, 0.9, 0.5])
@pytest.mark.parametrize("vth", [0.5, 1.0, 2.0])
def test_random_inputs_match_scalar_loop_and_single_step(leak, vth):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 7, generator=g) * 2 * vth - 0.3 * vth
    neuron = LIF(NeuronConfig(threshold=vth, leak=leak))
    s = neuron(x)
    for b in range(3):
        for j in range(7):
            ref, _ = reference_trace(x[:, b, j].tolist(), vth, leak)
            assert s[:, b, j].tolist() == ref
    reset_states(neuron)
    stepped = torch.stack([neuron.step(x[t]) for t in range(5)])
    assert torch.equal(stepped, s)
    # reset by subtraction: v[T] = sum_t leak^(T-t) (I[t] - vth s[t])
    w = leak ** torch.arange(4, -1, -1.0)
    assert torch.allclose(neuron.v, torch.einsum("t,tbj->bj", w, x - vth * s), atol=1e-5)


def test_step_state_is_reset():
    neuron = LIF(NeuronConfig(threshold=1.0))
    x = torch.full((2,), 0.7)
    first = neuron.step(x)
    neuron.step(x)  # state carries over: 1.4 fires
    reset_states(neuron)
    assert torch.equal(neuron.step(x), first)


def test_weighted_rate():
    s = torch.tensor([[1.0], [0.0], [1.0]])
    assert weighted_rate(s, 1.0).item() == pytest.approx(2 / 3)
    # lambda^(T-t) weights: 0.25, 0.5, 1
    assert weighted_rate(s, 0.5).item() == pytest.approx((0.25 + 1.0) / 1.75)


CLOSED_FORMS = {
    "sigmoid": lambda x, a: a * math.exp(-a * x) / (1 + math.exp(-a * x)) ** 2,
    "atan": lambda x, a: a / 2 / (1 + (math.pi / 2 * a * x) ** 2),
    "rectangle": lambda x, a: a if abs(x) < 1 / (2 * a) else 0.0,
}


@pytest.mark.parametrize("name", sorted(SURROGATES))
@pytest.mark.parametrize("alpha", [0.5, 2.0, 4.0])
def test_surrogate_derivative_closed_form(name, alpha):
    xs = [-2.0, -0.7, -0.2, 0.0, 0.1, 0.3, 1.5]
    x = torch.tensor(xs, dtype=torch.float64, requires_grad=True)
    out = spike(x, name, alpha)
    assert out.tolist() == [1.0 if v >= 0 else 0.0 for v in xs]
    out.sum().backward()
    expected = [CLOSED_FORMS[name](v, alpha) for v in xs]
    assert x.grad.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_surrogates_integrate_to_one(name):
    x = torch.linspace(-200, 200, 2_000_001, dtype=torch.float64)
    area = torch.trapezoid(SURROGATES[name](x, 2.0), x).item()
    assert area == pytest.approx(1.0, abs=2e-3)


def test_trainable_threshold_kept_above_floor():
    neuron = LIF(NeuronConfig(threshold=0.5, trainable_threshold=True, threshold_floor=0.2))
    assert isinstance(neuron.threshold, torch.nn.Parameter)
    with torch.no_grad():
        neuron.threshold.fill_(-1.0)
    neuron(torch.zeros(2, 1))
    assert neuron.threshold.item() == pytest.approx(0.2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"threshold": -1.0}, "threshold must be > 0, got -1.0"),
        ({"threshold": 0.0}, "threshold must be > 0"),
        ({"leak": 0.0}, r"leak must be in \(0, 1\]"),
        ({"leak": 1.5}, r"leak must be in \(0, 1\] \(1 = IF\), got 1.5"),
        ({"surrogate": "relu"}, "unknown surrogate 'relu'; valid choices: .*sigmoid"),
        ({"surrogate_alpha": 0.0}, "surrogate_alpha must be > 0"),
        ({"trainable_threshold": True, "threshold": 0.001}, "below threshold_floor"),
    ],
)
def test_bad_neuron_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NeuronConfig(**kwargs)
