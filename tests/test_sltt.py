"""SLTT and SLTT-K: the gradient against autograd through an independently unrolled network with
the membrane detached at every step, the relation to BPTT (equal for T = 1 and as the leak tends to
0, different otherwise), K random steps, equal forwards, the DDP flag of the last backward and bad K."""

import pytest
import torch
import torch.nn.functional as F

from lightning_snn.layers import TraceLinear
from lightning_snn.loss import SpikingLoss
from lightning_snn.models import MODELS
from lightning_snn.neurons import NeuronConfig, SpikingNeuron
from lightning_snn.strategies import STRATEGIES

VTH, ALPHA, MSE = 0.5, 2.0, 0.3
# float64 throughout: the unrolled reference and the strategy evaluate the same few hundred
# products in (nearly) the same order, so they agree to ~1e-15 relative; 1e-10 leaves a wide margin
# and still fails on any scale (1/T vs 1/K) or sign error, which changes gradients by O(1)
TOL = dict(rtol=1e-10, atol=1e-12)


def tiny_net(leak: float):
    """Linear(6->8) -> LIF -> Linear(8->5) -> LIF -> Linear(5->3), no batch norm, float64."""
    torch.manual_seed(0)
    cfg = NeuronConfig(threshold=VTH, leak=leak, surrogate="sigmoid", surrogate_alpha=ALPHA)
    return MODELS.build("mlp", input_shape=(6,), num_classes=3, neuron=cfg, hidden=(8, 5),
                        batch_norm=False).double()


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(5, 6, generator=g, dtype=torch.float64) * 2, torch.tensor([0, 1, 2, 1, 0])


def heaviside(u):
    """H(u) forward, d/du sigmoid(alpha u) backward: an implementation of the surrogate spike
    independent of ``lightning_snn.neurons``."""
    sig = torch.sigmoid(ALPHA * u)
    return (u >= 0).to(u.dtype) + (sig - sig.detach())


def unrolled_grads(net, x, y, T: int, leak: float, detach: bool, steps=None):
    """Autograd through the network written out by hand:
    h[t] = leak * v[t-1] + I[t] (v[t-1] detached when ``detach``), s = H(h - Vth), v = h - Vth s;
    loss sum_{t in steps} l(o[t], y) / T, one backward. Returns the per-step outputs and grads."""
    linears = [m for m in net.modules() if isinstance(m, TraceLinear)]
    params = [p for m in linears for p in (m.weight, m.bias)]
    W = [p.detach().clone().requires_grad_() for p in params]
    v = [None] * (len(linears) - 1)
    outs, total = [], 0.0
    for t in range(T):
        a = x
        for i in range(len(linears) - 1):
            cur = a @ W[2 * i].T + W[2 * i + 1]
            prev = v[i] if v[i] is None or not detach else v[i].detach()
            h = cur if prev is None else leak * prev + cur
            s = heaviside(h - VTH)
            v[i] = h - VTH * s
            a = s
        o = a @ W[-2].T + W[-1]
        outs.append(o.detach())
        if steps is None or t in steps:
            onehot = F.one_hot(y, 3).double()
            total = total + ((1 - MSE) * F.cross_entropy(o, y) + MSE * F.mse_loss(o, onehot)) / T
    total.backward()
    return torch.stack(outs), [w.grad for w in W], [p for p in params]


def strategy_grads(net, x, y, name: str, T: int, **args):
    net.zero_grad()
    strat = STRATEGIES.build(name, T=T, **args)
    loss, out = strat.train_step(net, x, y, SpikingLoss(per_step=True, mse_weight=MSE))
    return loss, out, [p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize("T", [1, 4])
def test_sltt_gradient_is_autograd_through_the_detached_unrolled_network(T):
    leak = 0.6
    net, (x, y) = tiny_net(leak), data()
    ref_out, ref_grads, params = unrolled_grads(net, x, y, T, leak, detach=True)
    loss, out, grads = strategy_grads(net, x, y, "sltt", T)
    assert [id(p) for p in params] == [id(p) for p in net.parameters()]
    torch.testing.assert_close(out, ref_out, **TOL)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, **TOL)
    assert all(r.abs().max() > 1e-3 for r in ref_grads)  # every layer gets a real gradient
    # the reported loss is the whole per-step loss
    onehot = F.one_hot(y, 3).double()
    by_hand = sum((1 - MSE) * F.cross_entropy(o, y) + MSE * F.mse_loss(o, onehot) for o in ref_out) / T
    torch.testing.assert_close(loss, by_hand, **TOL)


def test_sltt_equals_bptt_for_one_step_and_as_the_leak_vanishes_and_differs_otherwise():
    x, y = data()

    def rel_diff(leak, T):
        net = tiny_net(leak)
        _, out_s, gs = strategy_grads(net, x, y, "sltt", T)
        _, out_b, gb = strategy_grads(net, x, y, "bptt", T)
        torch.testing.assert_close(out_s, out_b, **TOL)  # same forward
        num = sum(float((a - b).norm() ** 2) for a, b in zip(gs, gb)) ** 0.5
        return num / sum(float(b.norm() ** 2) for b in gb) ** 0.5

    assert rel_diff(0.6, 1) < 1e-12  # no step after the only one: no temporal route
    # every temporal route passes through the leak once at least: the difference is O(leak)
    assert rel_diff(1e-9, 4) < 1e-7
    # with a leak the temporal routes carry a sizeable part of BPTT's gradient
    assert rel_diff(0.6, 4) > 1e-2


def test_sltt_is_bptt_with_the_membrane_detached():
    """The reference itself: without the detach the unrolled network gives BPTT's gradient."""
    leak, T = 0.6, 4
    net, (x, y) = tiny_net(leak), data()
    _, ref_grads, _ = unrolled_grads(net, x, y, T, leak, detach=False)
    _, _, grads = strategy_grads(net, x, y, "bptt", T)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, **TOL)


def test_sltt_k_equal_to_t_is_sltt():
    leak, T = 0.6, 4
    net, (x, y) = tiny_net(leak), data()
    loss, out, grads = strategy_grads(net, x, y, "sltt", T)
    loss_k, out_k, grads_k = strategy_grads(net, x, y, "sltt", T, K=T)
    torch.testing.assert_close(loss_k, loss, **TOL)
    torch.testing.assert_close(out_k, out, **TOL)
    for g, r in zip(grads_k, grads):
        torch.testing.assert_close(g, r, **TOL)


@pytest.mark.parametrize("K", [1, 2, 3])
def test_sltt_k_gradient_is_the_sum_of_the_drawn_steps_gradients_over_t(K):
    leak, T = 0.6, 5
    net, (x, y) = tiny_net(leak), data()
    drawn = set()
    for seed in range(4):
        torch.manual_seed(seed)
        loss, out, grads = strategy_grads(net, x, y, "sltt", T, K=K)
        torch.manual_seed(seed)  # the draw of the strategy: K distinct steps on the global RNG
        steps = set(torch.randperm(T)[:K].tolist())
        drawn.add(frozenset(steps))
        ref_out, ref_grads, _ = unrolled_grads(net, x, y, T, leak, detach=True, steps=steps)
        # all T steps ran forward and updated the membranes: the outputs are SLTT's
        torch.testing.assert_close(out, ref_out, **TOL)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, **TOL)
        # the reported loss still covers all T steps
        full, _, _ = strategy_grads(net, x, y, "sltt", T)
        torch.testing.assert_close(loss, full, **TOL)
    assert len(drawn) > 1  # the draw changes from batch to batch


def test_sltt_k_backward_calls_flag_the_last_backward_not_the_last_step():
    """Under DDP the module all-reduces at the call flagged ``last_step``: with K < T that must be
    the last of the K backward calls, exactly once."""
    leak, T, K = 0.6, 6, 2
    net, (x, y) = tiny_net(leak), data()
    for seed in range(5):
        calls = []
        torch.manual_seed(seed)
        strat = STRATEGIES.build("sltt", T=T, K=K)
        strat.train_step(net, x, y, SpikingLoss(per_step=True),
                         backward=lambda loss, last: calls.append((loss.requires_grad, last)))
        assert calls == [(True, False)] * (K - 1) + [(True, True)], calls


def test_sltt_forward_and_spikes_equal_bptt_only_gradients_differ():
    leak, T = 0.6, 4
    net, (x, y) = tiny_net(leak), data()
    spikes = {"sltt": [], "bptt": []}
    record = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: record.append(out.detach().clone()))
             for m in net.modules() if isinstance(m, SpikingNeuron)]
    _, out_s, gs = strategy_grads(net, x, y, "sltt", T)
    spikes["sltt"], record[:] = list(record), []
    _, out_b, gb = strategy_grads(net, x, y, "bptt", T)
    spikes["bptt"] = list(record)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(out_s, out_b, **TOL)
    # SLTT calls each layer once per step ([1, B, n]), BPTT once per batch ([T, B, n])
    n_layers = len(spikes["bptt"])
    per_layer = [torch.cat(spikes["sltt"][i::n_layers]) for i in range(n_layers)]
    for s, b in zip(per_layer, spikes["bptt"]):
        assert s.shape == b.shape and 0 < float(b.mean()) < 1  # some spikes, not all
        torch.testing.assert_close(s, b)  # spikes are 0 / 1: any flip is a difference of 1
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(gs, gb))


@pytest.mark.parametrize("K", [0, 5, -1])
def test_bad_k_is_a_clear_error(K):
    with pytest.raises(ValueError, match=rf"'sltt': K .* must be an integer in 1\.\.T=4, or null .*got {K!r}"
                       .replace("(", r"\(").replace(")", r"\)")):
        STRATEGIES.build("sltt", T=4, K=K)


@pytest.mark.parametrize("K", [1.5, True, "2"])
def test_k_of_another_type_is_a_clear_error(K):
    with pytest.raises(ValueError, match=rf"'sltt' argument K: expected an integer or null, got {K!r}"):
        STRATEGIES.build("sltt", T=4, K=K)


def test_sltt_trains_plain_synapses():
    """No traces: a model with plain ``nn.Linear`` after its spiking layers (which OTTT rejects)."""
    from lightning_snn.models.base import SpikingNet
    from lightning_snn.neurons import LIF
    from lightning_snn.layers import TimeDistributed

    class Plain(SpikingNet):
        def __init__(self):
            super().__init__()
            self.fc1 = TimeDistributed(torch.nn.Linear(4, 6))
            self.lif = LIF(NeuronConfig(threshold=0.3, leak=0.5))
            self.fc2 = TimeDistributed(torch.nn.Linear(6, 3))

        def forward(self, x):
            return self.fc2(self.lif(self.fc1(x)))

    torch.manual_seed(0)
    net, strat = Plain(), STRATEGIES.build("sltt", T=3, K=2)
    strat.check_model(net)
    strat.train_step(net, torch.randn(4, 4) * 2, torch.tensor([0, 1, 2, 0]))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.slow
def test_sltt_k_under_two_process_ddp_equals_one_process_with_one_allreduce_per_batch(tmp_path):
    """SLTT-K (T=5, K=2) through Lightning: 2 DDP processes (gloo) end with the parameters of one
    process, both ranks draw the same steps, and the gradient is all-reduced once per batch, also
    in batches whose last time step does not back-propagate."""
    import json
    import subprocess
    import sys

    from procs import child_env
    from test_ottt import SCRIPT

    results = {}
    for devices in (1, 2):
        out = tmp_path / f"d{devices}"
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), str(devices), str(out), "sltt", '{"K": 2}', "5"],
            env=child_env(), cwd=tmp_path, capture_output=True, text=True, timeout=240,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        results[devices] = (torch.load(out / "params.pt"), json.loads((out / "calls.json").read_text()))
    one, two = results[1][0], results[2][0]
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-9, atol=1e-11)
    calls = results[2][1]
    assert calls["steps"] == 2 and calls["allreduce_per_rank"] == [2, 2], calls
    drawn = calls["backward_steps_per_rank"]
    assert drawn[0] == drawn[1] == results[1][1]["backward_steps_per_rank"][0]
    assert all(len(set(s)) == 2 for s in drawn[0]) and any(4 not in s for s in drawn[0]), drawn


def test_official_sltt_loss_and_gradient_by_hand():
    """The official SLTT setting: triangle surrogate max(0, 1 - |h - Vth|), leak 1 - 1/1.1, the
    per-step loss [(1 - lam) CE(o_t, y) + lam MSE(o_t, 1)] / T with a constant target of ones.
    Gradient written out by hand for Linear -> LIF -> Linear (no autograd): with
    e_t = dL_t/do_t = [(1 - lam)(softmax(o_t) - onehot(y)) / B + lam 2 (o_t - 1) / (B C)] / T,
    dW2 = sum_t e_t^T s_t, dh_t = (e_t W2) max(0, 1 - |h_t - Vth|) (no temporal route) and
    dW1 = sum_t dh_t^T x."""
    from lightning_snn.loss import LossConfig

    lam, T, leak = 0.05, 3, 1 - 1 / 1.1
    torch.manual_seed(0)
    cfg = NeuronConfig(threshold=1.0, leak=leak, surrogate="triangle", surrogate_alpha=1.0)
    net = MODELS.build("mlp", input_shape=(3,), num_classes=4, neuron=cfg, hidden=(6,),
                       batch_norm=False).double()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64) * 1.5 + 0.5
    y = torch.tensor([0, 1, 2, 3, 1])
    loss_fn = SpikingLoss.for_strategy(STRATEGIES.build("sltt", T=T),
                                       LossConfig(mse_weight=lam, mse_target=1.0))
    net.zero_grad()
    loss, out = STRATEGIES.build("sltt", T=T).train_step(net, x, y, loss_fn)

    lin1, lin2 = [m for m in net.modules() if isinstance(m, TraceLinear)]
    W1, b1, W2, b2 = (p.detach() for p in (lin1.weight, lin1.bias, lin2.weight, lin2.bias))
    B, C = 5, 4
    onehot = F.one_hot(y, C).double()
    v = torch.zeros(B, 6, dtype=torch.float64)
    total, gW1, gb1, gW2, gb2 = 0.0, 0 * W1, 0 * b1, 0 * W2, 0 * b2
    for t in range(T):
        h = leak * v + x @ W1.T + b1
        s = (h >= 1.0).double()
        v = h - s
        o = s @ W2.T + b2
        torch.testing.assert_close(out[t], o, **TOL)
        logp = o - o.exp().sum(1, keepdim=True).log()
        total += ((1 - lam) * -(logp * onehot).sum(1).mean() + lam * ((o - 1) ** 2).mean()) / T
        e = ((1 - lam) * (logp.exp() - onehot) / B + lam * 2 * (o - 1) / (B * C)) / T
        gW2, gb2 = gW2 + e.T @ s, gb2 + e.sum(0)
        dh = (e @ W2) * (1 - (h - 1.0).abs()).clamp(min=0)
        gW1, gb1 = gW1 + dh.T @ x, gb1 + dh.sum(0)
    torch.testing.assert_close(loss, torch.as_tensor(total, dtype=torch.float64), **TOL)
    for p, ref in ((lin1.weight, gW1), (lin1.bias, gb1), (lin2.weight, gW2), (lin2.bias, gb2)):
        assert ref.abs().max() > 1e-3  # a real gradient in every layer
        torch.testing.assert_close(p.grad, ref, **TOL)
    # the constant target is not the one-hot one: the gradient differs
    net.zero_grad()
    STRATEGIES.build("sltt", T=T).train_step(net, x, y, SpikingLoss(per_step=True, mse_weight=lam))
    assert (lin2.bias.grad - gb2).abs().max() > 1e-3


@pytest.mark.parametrize("target", ["ones", True, float("nan"), None])
def test_bad_mse_target_is_a_clear_error(target):
    from lightning_snn.loss import LossConfig

    with pytest.raises(ValueError, match="loss mse_target must be 'one_hot' or a finite number"):
        LossConfig(mse_weight=0.1, mse_target=target)


@pytest.mark.parametrize("config", ["cifar10_resnet18_sltt.yaml", "reference/imagenet_nfresnet34_sltt.yaml"])
def test_sltt_paper_configs_carry_the_official_neuron_and_loss(config):
    """tau 1.1 with the official charge v (1 - 1/tau) + x: leak exactly 1 - 1/1.1 in float64;
    triangle surrogate with alpha 1; the MSE target a constant 1.0 (``loss_means``)."""
    from pathlib import Path

    import yaml

    model = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / config).read_text())["model"]
    assert model["neuron"]["leak"] == 1 - 1 / 1.1
    assert (model["neuron"]["surrogate"], model["neuron"]["surrogate_alpha"]) == ("triangle", 1.0)
    assert model["loss"]["mse_target"] == 1.0
