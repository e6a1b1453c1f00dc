"""Options that reproduce the official IDE code: the solver's absolute tolerance and the power
iteration order of the feedback restriction."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_snn.models import MODELS
from lightning_snn.models.feedback import RestrictedWeight
from lightning_snn.neurons import NeuronConfig
from lightning_snn.strategies import STRATEGIES


@pytest.mark.parametrize("op", [nn.Linear(7, 5, bias=False), nn.Conv2d(3, 4, 3, bias=False),
                                nn.ConvTranspose2d(4, 3, 3, stride=2, bias=False)])
def test_power_iteration_updates_v_then_u_like_torch_spectral_norm(op):
    torch.manual_seed(0)
    dim = 1 if isinstance(op, nn.ConvTranspose2d) else 0  # the output dimension of the weight
    ref = nn.utils.spectral_norm(copy.deepcopy(op), n_power_iterations=1, dim=dim).double()
    rw = RestrictedWeight(op, norm_range=10.0).double().train()
    ref.weight_orig.data.copy_(rw.op.weight.data)
    u0 = F.normalize(torch.randn_like(rw.u), dim=0)  # a start far from converged
    rw.u.copy_(u0)
    ref.weight_u.copy_(u0)
    w = rw.weight()
    x = torch.zeros((1, 7) if isinstance(op, nn.Linear) else (1, ref.in_channels, 5, 5),
                    dtype=torch.float64)
    ref.train()(x)  # spectral_norm's pre-forward hook runs one power iteration
    torch.testing.assert_close(rw.u, ref.weight_u, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(rw.v, ref.weight_v, rtol=1e-12, atol=1e-14)
    # the same sigma: W / gain equals spectral_norm's normalised weight
    torch.testing.assert_close(w / rw.gain, ref.weight, rtol=1e-12, atol=1e-14)


def _ide_step(tol, tol_mode, max_iter=30):
    torch.manual_seed(0)
    net = MODELS.build("f_mlp", input_shape=(1, 4, 4), num_classes=3,
                       neuron=NeuronConfig(threshold=1.0), hidden=16).double()
    strat = STRATEGIES.build("ide", T=20, solver="broyden", max_iter=max_iter, tol=tol,
                             tol_mode=tol_mode)
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64) * 2
    F.cross_entropy(strat.forward(net, x).mean(0), torch.arange(5) % 3).backward()
    return strat.step_metrics()


def test_absolute_tolerance_is_per_element_like_the_official_solver():
    rel = _ide_step(1e-5, "relative")
    assert rel["ide/residual"] <= 1e-5 and rel["ide/iterations"] < 30
    # the official eps 2e-10 sqrt(B d) (B d = 5 * 16): stops only below that absolute residual
    off = _ide_step(2e-10, "absolute")
    assert off["ide/abs_residual"] <= 2e-10 * 80 ** 0.5 or off["ide/iterations"] == 30
    assert off["ide/abs_residual"] < rel["ide/abs_residual"]
    # a tolerance between the two bounds: the first iterate's absolute residual (0.22) is above
    # tol = 0.1 but below tol * sqrt(80) = 0.89, so only the per-element bound stops there
    loose = _ide_step(0.1, "absolute")
    assert 0.1 < loose["ide/abs_residual"] <= 0.1 * 80 ** 0.5
    assert loose["ide/iterations"] == 1
    with pytest.raises(ValueError, match="tol_mode must be one of"):
        STRATEGIES.build("ide", T=4, tol_mode="rel")


# ----------------------------------------------------------------------------- DSR, official LIF
def test_dsr_official_lif_rule_by_hand():
    """The official formulas, written out with Python floats on 4 units over T = 3 steps."""
    from lightning_snn.neurons import LIF
    from lightning_snn.strategies.dsr import dsr_dynamics

    tau, dt, vth, alpha, T = 1.0, 0.5, 0.3, 0.5, 3
    beta = math.exp(-dt / tau)
    lif = LIF(NeuronConfig(threshold=vth, leak=beta, trainable_threshold=True,
                           threshold_floor=1e-3)).double()
    xs = [[0.4, 0.2, 0.5], [1.0, 0.9, 0.8], [-0.2, 0.1, -0.3], [0.05, 0.1, 0.3]]  # unit x time
    gs = [[0.3, -0.1, 0.2], [0.5, 0.4, -0.6], [1.0, 1.0, 1.0], [-0.2, 0.7, 0.1]]
    x = torch.tensor(xs, dtype=torch.float64).T.contiguous().requires_grad_()  # [T, 4]
    g = torch.tensor(gs, dtype=torch.float64).T
    out = dsr_dynamics(lif, x, alpha=alpha, spike_value="threshold", rule="official", tau=tau, dt=dt)
    out.backward(g)
    th = lif.threshold.item()  # the value the neuron really uses
    w = [beta ** (T - 1 - t) for t in range(T)]  # w_i = exp(-(T dt - i dt) / tau), i = 1..T
    exp_out, exp_gx, exp_gvth = [], [], 0.0
    for xi, gi in zip(xs, gs):
        m, o = 0.0, []
        for t in range(T):
            m = beta * m + (1 - beta) * xi[t]
            s = th if m >= alpha * th else 0.0
            m -= s
            o.append(s / dt)
        exp_out.append(o)
        r_in = sum(wt * v for wt, v in zip(w, xi)) / sum(w)
        G = sum(wt * v for wt, v in zip(w, gi)) / sum(w)
        exp_gx.append([G / tau if 0 < r_in < th * tau / dt else 0.0] * T)
        exp_gvth += dt * T * G if r_in > th * tau / dt else 0.0
    exp_out_t = torch.tensor(exp_out, dtype=torch.float64).T
    assert exp_out_t.abs().sum() > 0 and (exp_out_t == 0).any()  # fires, and not everywhere
    assert exp_gvth != 0 and any(v[0] == 0 for v in exp_gx) and any(v[0] != 0 for v in exp_gx)
    torch.testing.assert_close(out.detach(), exp_out_t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, torch.tensor(exp_gx, dtype=torch.float64).T,
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lif.threshold.grad, torch.tensor(exp_gvth, dtype=torch.float64),
                               rtol=1e-12, atol=1e-12)


def test_dsr_lif_readout_is_the_weighted_rate_and_official_checks():
    torch.manual_seed(0)
    beta = math.exp(-0.05)
    cfg = NeuronConfig(threshold=0.3, leak=beta)
    net = MODELS.build("vgg11", input_shape=(3, 32, 32), num_classes=4, neuron=cfg, width=0.05,
                       head="spiking").double()
    strat = STRATEGIES.build("dsr", T=4, spike_value="threshold", rule="official", tau=1.0, dt=0.05)
    strat.check_model(net)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    out = strat.forward(net, x)
    assert out.shape == (1, 3, 4)
    # the same run with per-step outputs kept: the score is their beta-weighted mean
    steps = []
    head = net.spiking_layers()[-1]
    hook = head.register_forward_hook(lambda m, i, o: steps.append(o))
    strat.forward(net, x)
    hook.remove()
    w = beta ** torch.arange(3, -1, -1, dtype=torch.float64)
    torch.testing.assert_close(out[0], torch.einsum("t,tbc->bc", w, steps[0]) / w.sum(),
                               rtol=1e-12, atol=1e-12)
    bad = STRATEGIES.build("dsr", T=4, spike_value="threshold", rule="official", dt=0.1)
    with pytest.raises(ValueError, match="leak = exp"):
        bad.check_model(net)
    with pytest.raises(ValueError, match="spike_value: threshold"):
        STRATEGIES.build("dsr", T=4, rule="official")
    with pytest.raises(ValueError, match="rule must be one of"):
        STRATEGIES.build("dsr", T=4, rule="paper")


@pytest.mark.parametrize("trainable", [True, False])
def test_threshold_follows_the_module_dtype_exactly(trainable):
    from lightning_snn.neurons import LIF

    lif = LIF(NeuronConfig(threshold=0.3, trainable_threshold=trainable))
    assert lif.threshold.dtype == torch.get_default_dtype()
    lif = lif.double()
    assert lif.threshold.dtype == torch.float64 and lif.threshold.item() == 0.3
    assert isinstance(lif.threshold, nn.Parameter) == trainable
    assert lif.float().threshold.item() == float(torch.tensor(0.3, dtype=torch.float32))
    if trainable:  # a learnt value is converted, not reset
        with torch.no_grad():
            lif.threshold.fill_(0.7)
        assert lif.double().threshold.item() == float(torch.tensor(0.7, dtype=torch.float32))
