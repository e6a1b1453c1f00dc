"""Neuron dynamics against hand-computed traces, surrogate derivatives against closed forms."""

import math

import pytest
import torch

from lightning_snn.neurons import (
    LIF, SURROGATES, NeuronConfig, build_neuron, reset_states, spike, weighted_rate,
)


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
    "triangle": lambda x, a: max(0.0, a - a * a * abs(x)),
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


# ----------------------------------------------------------------------------- neuron kinds
def test_unknown_or_unfit_neuron_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown neuron kind 'alif'; valid choices: if, lif, plif"):
        NeuronConfig(kind="alif")
    with pytest.raises(ValueError, match=r"kind 'if' has no leak, got leak=0.9"):
        NeuronConfig(kind="if", leak=0.9)
    with pytest.raises(ValueError, match=r"'plif' learns its leak from the initial value leak in \(0, 1\), got leak=1.0"):
        NeuronConfig(kind="plif")


def test_build_neuron_follows_the_kind_and_leak_one_lif_is_if():
    x = torch.rand(6, 3, 5, dtype=torch.float64) * 2
    lif = build_neuron(NeuronConfig(kind="lif", leak=1.0)).double()
    if_ = build_neuron(NeuronConfig(kind="if")).double()
    assert (type(lif).__name__, type(if_).__name__) == ("LIF", "IF")
    torch.testing.assert_close(lif(x), if_(x))


def unrolled_plif(x, w, vth, alpha):
    """h = sigmoid(w) v + x, s = H(h - Vth) with the sigmoid surrogate, v = h - Vth s (by hand)."""
    lam, v, out = torch.sigmoid(w), 0.0, []
    for t in range(x.shape[0]):
        h = lam * v + x[t]
        smooth = torch.sigmoid(alpha * (h - vth))
        s = (h >= vth).to(h.dtype) + smooth - smooth.detach()
        v = h - vth * s
        out.append(s)
    return torch.stack(out)


def test_plif_learns_its_leak_and_its_gradient_equals_the_unrolled_one():
    torch.manual_seed(0)
    cfg = NeuronConfig(kind="plif", leak=0.6, threshold=0.7, surrogate_alpha=2.0)
    plif = build_neuron(cfg).double()
    assert plif.leak_value() == pytest.approx(0.6)
    x = (torch.rand(5, 4, 3, dtype=torch.float64) * 1.2).requires_grad_()
    g = torch.randn(5, 4, 3, dtype=torch.float64)
    out = plif(x)
    # the same as a fixed-leak LIF of that leak in value
    torch.testing.assert_close(out, build_neuron(NeuronConfig(leak=0.6, threshold=0.7)).double()(x))
    (out * g).sum().backward()
    w = plif.w.detach().clone().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    (unrolled_plif(xr, w, plif.vth(), 2.0) * g).sum().backward()
    assert plif.w.grad.abs() > 0
    torch.testing.assert_close(plif.w.grad, w.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-10, atol=1e-12)


def test_feedback_map_reads_the_floored_threshold():
    """IDE's equivalent map reads Vth through the one accessor, so a trainable threshold an
    optimiser drove below its floor is used at the floor (as in the SNN itself)."""
    from lightning_snn.models import MODELS

    cfg = NeuronConfig(threshold=1.0, trainable_threshold=True, threshold_floor=0.5)
    net = MODELS.build("f_mlp", input_shape=(1, 2, 2), num_classes=2, hidden=3, neuron=cfg).double().eval()
    x = torch.rand(2, 1, 2, 2, dtype=torch.float64)
    ctx = net.prepare(x.unsqueeze(0).expand(3, *x.shape))
    a = torch.rand(2, 3, dtype=torch.float64)
    with torch.no_grad():
        net.neurons[0].threshold.fill_(-1.0)
        got = net.equilibrium_map(a, ctx)
        cur = net.feedback.apply(a, ctx.feedback_weight) + ctx.mean_current
    torch.testing.assert_close(got, torch.clamp(cur / 0.5, 0, 1))
    assert float(net.neurons[0].threshold) == 0.5
