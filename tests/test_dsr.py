"""DSR: forward rate against the clamp map, input / threshold gradients against the closed-form
clamp derivatives (IF and LIF, both spike-value conventions), the strategy on a model."""

import datetime

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from lightning_snn.models import MODELS
from lightning_snn.neurons import LIF, NeuronConfig
from lightning_snn.strategies import STRATEGIES
from lightning_snn.strategies.dsr import dsr_dynamics

TOL = dict(rtol=1e-10, atol=1e-12)


def layer(vth, leak, trainable=True):
    return LIF(NeuronConfig(threshold=vth, leak=leak, trainable_threshold=trainable,
                            threshold_floor=1e-3)).double()


@pytest.mark.parametrize("T", [1, 4, 7, 20])
@pytest.mark.parametrize("vth", [1.0, 0.375, 6.0])
def test_if_rate_within_half_step_of_clamp_map_for_alpha_half(T, vth):
    torch.manual_seed(T)
    x = (torch.rand(500, dtype=torch.float64) * 2 - 0.5) * vth  # [-0.5 Vth, 1.5 Vth]
    x[:4] = torch.tensor([0.0, vth, 0.5 * vth / T, vth * (1 - 0.5 / T)])
    lif = layer(vth, 1.0)
    out = dsr_dynamics(lif, x.expand(T, -1), alpha=0.5, spike_value="threshold")
    assert set(out.unique().tolist()) <= {0.0, vth}  # spikes carry the value Vth
    err = (out.mean(0) - x.clamp(0, vth)).abs()
    assert err.max() <= vth / (2 * T) + 1e-12
    assert err.max() > vth / (2 * T) * 0.8  # the bound is tight: the rate is really quantised
    unit = dsr_dynamics(lif, x.expand(T, -1), alpha=0.5, spike_value="unit")
    torch.testing.assert_close(unit * vth, out, **TOL)
    # alpha = 1 floors instead of rounding: the error reaches almost Vth / T
    floor = dsr_dynamics(lif, x.expand(T, -1), alpha=1.0, spike_value="threshold")
    assert ((floor.mean(0) - x.clamp(0, vth)).abs().max() <= vth / T + 1e-12)


@pytest.mark.parametrize("leak", [0.9, 0.5])
def test_lif_weighted_rate_within_half_step_of_clamp_map(leak):
    torch.manual_seed(0)
    T, lif = 8, layer(0.7, leak)
    vth = float(lif.threshold.detach())
    x = (torch.rand(400, dtype=torch.float64) * 2 - 0.5) * vth
    s = dsr_dynamics(lif, x.expand(T, -1), alpha=0.5, spike_value="unit")
    w = leak ** torch.arange(T - 1, -1, -1, dtype=torch.float64)
    rate = (w[:, None] * s).sum(0) / w.sum()
    # |v[T]| <= Vth/2  =>  |rate - clamp(x / Vth, 0, 1)| <= 1 / (2 sum w)
    assert ((rate - (x / vth).clamp(0, 1)).abs().max() <= 1 / (2 * w.sum()) + 1e-12)


@pytest.mark.parametrize("leak", [1.0, 0.8])
@pytest.mark.parametrize("spike_value", ["threshold", "unit"])
def test_input_and_threshold_gradients_are_the_clamp_derivatives(leak, spike_value):
    torch.manual_seed(1)
    T = 6
    lif = layer(0.9, leak)
    vth = float(lif.threshold.detach())
    x = (torch.randn(T, 3, 40, dtype=torch.float64) * 0.8 + 0.4).requires_grad_()
    out = dsr_dynamics(lif, x, alpha=0.5, spike_value=spike_value, threshold_grad_scale=1.0)
    g = torch.randn_like(out)
    out.backward(g)
    # closed form, written out
    w = torch.tensor([leak ** (T - 1 - t) for t in range(T)], dtype=torch.float64)
    xbar = (w[:, None, None] * x.detach()).sum(0) / w.sum()
    G = g.sum(0)
    inside = ((xbar > 0) & (xbar < vth)).double()
    sat = (xbar >= vth).double()
    if spike_value == "threshold":  # r = clamp(xbar, 0, Vth)
        gx = G * inside
        gvth = (G * sat).sum()
    else:  # r = clamp(xbar / Vth, 0, 1)
        gx = G * inside / vth
        gvth = -(G * inside * xbar).sum() / vth**2
    expected_x = gx[None] * (w / w.sum())[:, None, None]
    assert inside.mean() > 0.3 and sat.mean() > 0.05  # both regions exercised
    torch.testing.assert_close(x.grad, expected_x, **TOL)
    torch.testing.assert_close(lif.threshold.grad, gvth, **TOL)
    if leak == 1.0:  # the official IF rule: dL/dx_t = (1/T) sum_t' g_t' on the unsaturated units
        if spike_value == "threshold":
            torch.testing.assert_close(x.grad[0], g.sum(0) / T * inside, **TOL)
    # and the same numbers from autograd through the clamp map
    xr = x.detach().clone().requires_grad_()
    th = torch.tensor(vth, dtype=torch.float64, requires_grad=True)
    xb = torch.einsum("t,t...->...", w, xr) / w.sum()
    r = torch.minimum(xb.clamp(min=0), th) if spike_value == "threshold" else (xb / th).clamp(0, 1)
    (r * G).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, **TOL)
    torch.testing.assert_close(lif.threshold.grad, th.grad, **TOL)


def test_threshold_grad_scale_and_floor():
    torch.manual_seed(2)
    lif = layer(0.5, 1.0)
    x = torch.rand(4, 10, dtype=torch.float64) * 2
    dsr_dynamics(lif, x, spike_value="threshold", threshold_grad_scale=1e-3).sum().backward()
    scaled = lif.threshold.grad.clone()
    lif.threshold.grad = None
    dsr_dynamics(lif, x, spike_value="threshold").sum().backward()
    torch.testing.assert_close(scaled, lif.threshold.grad * 1e-3, **TOL)
    with torch.no_grad():
        lif.threshold.fill_(-1.0)  # an optimiser step drove it below the floor
    dsr_dynamics(lif, x)
    assert float(lif.threshold) == pytest.approx(1e-3)


def dsr_conv_step(spike_value, seed):
    """One DSR backward of a small conv net (the same weights everywhere) on data ``seed``."""
    torch.manual_seed(3)
    cfg = NeuronConfig(threshold=1.0, leak=0.9, trainable_threshold=True)
    net = MODELS.build("convnet", input_shape=(1, 12, 12), num_classes=4, neuron=cfg, channels=(4, "M"),
                       hidden=16)
    strat = STRATEGIES.build("dsr", T=5, alpha=0.5, spike_value=spike_value)
    strat.check_model(net)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(6, 1, 12, 12, generator=g), torch.randint(0, 4, (6,), generator=g)
    out = strat.forward(net, x)
    assert out.shape == (5, 6, 4)
    F.cross_entropy(out.mean(0), y).backward()
    assert all(n.dynamics is None for n in net.spiking_layers())  # restored after the run
    return {name: p.grad.clone() for name, p in net.named_parameters()}


def _dsr_rank(rank, world, init_file, out_dir, spike_value):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        torch.save(dsr_conv_step(spike_value, seed=rank), f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("spike_value", ["unit", "threshold"])
def test_dsr_trains_a_conv_net(spike_value):
    grads = dsr_conv_step(spike_value, seed=0)
    for name, g in grads.items():
        assert torch.isfinite(g).all(), name
    assert all(float(g.abs().sum()) > 0 for n, g in grads.items() if n.endswith("threshold"))


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")  # multi-process runs one at a time (2 CPUs)
def test_dsr_backward_never_communicates_under_a_real_process_group(tmp_path):
    """Two gloo processes, different data, no DDP: each rank's gradients must be those of its own
    data alone (a collective inside the backward would mix them, or hang on the timeout)."""
    for attempt in range(2):
        try:
            mp.spawn(_dsr_rank, args=(2, str(tmp_path / f"store{attempt}"), str(tmp_path), "threshold"),
                     nprocs=2)
            break
        except mp.ProcessRaisedException as e:
            # gloo's connection set-up between the two processes, before any computation, can be
            # closed by a loaded machine: start the pair again once; anything else is a failure
            if attempt or "connectFullMesh" not in str(e):
                raise
    for rank in range(2):
        got = torch.load(tmp_path / f"{rank}.pt")
        for name, g in dsr_conv_step("threshold", seed=rank).items():
            torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-7)
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    assert not torch.allclose(ranks[0]["layers.5.0.weight"], ranks[1]["layers.5.0.weight"])


def test_dsr_rejects_bad_options():
    with pytest.raises(ValueError, match="spike_value"):
        STRATEGIES.build("dsr", T=2, spike_value="vth")
    with pytest.raises(ValueError, match="alpha"):
        STRATEGIES.build("dsr", T=2, alpha=0.0)
