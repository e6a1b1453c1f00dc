"""SPIDE: the spiking adjoint's parameter gradient against the official rule computed by a dense
solve of ``(I - J^T) beta = dL/da`` with the rate mask ``1[0 < a < 1]`` on the forward rates
(tests/spide_fixture.py) as the backward time T_b grows, and by hand on a net where the rate mask
and the map's clamp mask disagree; the strategy on the feedback models; bad options."""

import pytest
import torch
import torch.nn.functional as F

from lightning_snn.models import MODELS
from lightning_snn.neurons import NeuronConfig
from lightning_snn.strategies import STRATEGIES
from spide_fixture import rate_mask_gradient, relative_errors, small_net, snn_rates


@pytest.mark.parametrize("name", ["f_mlp", "f_conv"])
def test_spide_gradient_approaches_the_rate_mask_gradient_single_layer(name):
    err = relative_errors(name, [50, 100, 250])
    # rate resolution c / T_b = 1 / T_b against |beta| <= 0.5: about 1/(2 T_b) per unit, summed
    # over the units of a layer (measured 0.0100 for f_mlp; a wrong scale or sign is O(1))
    assert err[50] > err[100] > err[250]
    assert err[250] < 0.015, err


def test_spide_gradient_approaches_the_rate_mask_gradient_multilayer():
    err = relative_errors("multilayer_f", [50, 250, 1000])
    assert err[50] > err[250] > err[1000]
    assert err[250] < 0.04 and err[1000] < 0.005, err  # five layers of quantised backward spikes


def test_spide_gradient_of_a_feed_forward_net_with_zero_feedback():
    """SNNZero (LeNet): J = 0 at the last layer, the adjoint still crosses three layers of
    backward spikes. The first layer's adjoint is much smaller than the last one's: below the
    resolution 1/T_b it is mostly lost, so the error falls slowly until T_b resolves it."""
    err = relative_errors("lenet_zero", [50, 250, 1000])
    assert err[50] > err[250] > err[1000]
    assert err[1000] < 0.06, err


def test_the_feedback_term_matters():
    """Without the feedback adjoint (beta = dL/da) the gradient is far from the implicit one: the
    tolerance above would catch a SPIDE that dropped or flipped J^T."""
    net, x, y = small_net("f_mlp")
    exact, _ = rate_mask_gradient(net, x, y)
    naive, _ = rate_mask_gradient(net, x, y, feedback=False)
    assert (naive - exact).norm() / exact.norm() > 0.1


def two_unit_net(w_fb):
    """F-MLP with 2 units, no batch norm, input 1: unit 0 gets 0.01 per step (silent for T = 30,
    rate 0, while its map value 0.01 + W_01 a_1 lies inside (0, 1)), unit 1 gets 0.5."""
    torch.manual_seed(0)
    net = MODELS.build("f_mlp", input_shape=(1, 1, 1), num_classes=3, neuron=NeuronConfig(threshold=1.0),
                       hidden=2, batch_norm=False).double().train()
    lin, fb = net.input[0][1], net.feedback
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.005], [0.3]]))
        lin.bias.copy_(torch.tensor([0.005, 0.2]))
        w = torch.tensor(w_fb, dtype=torch.float64)
        u, sv, vh = torch.linalg.svd(w)  # exact singular vectors: the restricted weight is w itself
        fb.op.weight.copy_(w)
        fb.u.copy_(u[:, 0])
        fb.v.copy_(vh[0])
        fb.gain.fill_(float(sv[0]))
        net.classifier.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 2.0], [-1.0, 0.3]]))
        net.classifier.bias.zero_()
    return net, torch.ones(1, 1, 1, 1, dtype=torch.float64), torch.tensor([0])


def test_rate_mask_where_it_disagrees_with_the_map_mask_by_hand():
    """The official mask is on the forward rate: a unit silent in the SNN passes no gradient, even
    though its map value is inside (0, 1) (the clamp mask would pass it). By hand, with
    m = (0, 1), Vth = 1, g = dL/da: beta_1 = g_1 / (1 - W_11) (the W_01 route is masked), and
    the input layer's gradient is (0, beta_1) for the bias and the weight (input 1)."""
    W = [[0.0, 0.01], [0.2, 0.4]]
    net, x, y = two_unit_net(W)
    ctx, (a,) = snn_rates(net, x)
    assert float(a[0, 0]) == 0.0 and 0.0 < float(a[0, 1]) < 1.0  # unit 0 silent, unit 1 inside
    z0 = 0.01 + W[0][1] * float(a[0, 1])  # unit 0's map value
    assert 0.0 < z0 < 1.0
    with torch.no_grad():
        p = torch.softmax(net.classifier(a), -1)[0]
    g = net.classifier.weight.detach().T @ (p - F.one_hot(y, 3)[0].double())  # dL/da by hand
    beta1 = float(g[1]) / (1.0 - W[1][1])
    expected = torch.tensor([0.0, beta1], dtype=torch.float64)

    dense, beta_max = rate_mask_gradient(net, x, y)
    lin = net.input[0][1]
    n_w = lin.weight.numel()
    # the dense reference's input-layer part (weight, then bias), as named by implicit_params
    torch.testing.assert_close(dense[:n_w], expected, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(dense[n_w:n_w + 2], expected, rtol=1e-12, atol=1e-15)

    strat = STRATEGIES.build("spide", T=30, T_b=2000, grad_scale=0.5 / beta_max)
    out = strat.forward(net, x)
    F.cross_entropy(out.mean(0), y).backward()
    assert float(lin.bias.grad[0]) == 0.0 and float(lin.weight.grad[0, 0]) == 0.0  # masked exactly
    torch.testing.assert_close(lin.bias.grad, expected, rtol=5e-3, atol=0.0)
    torch.testing.assert_close(lin.weight.grad[:, 0], expected, rtol=5e-3, atol=0.0)
    # the map's clamp mask would give unit 0 the gradient beta_0 = g_0 + W_10 beta_1 (not 0)
    assert abs(float(g[0]) + W[1][0] * beta1) > 0.05


@pytest.mark.parametrize("name, shape", [("f_conv", (1, 8, 8)), ("alexnet_f", (3, 8, 8)),
                                         ("lenet_zero", (1, 8, 8))])
def test_spide_trains_feedback_models(name, shape):
    torch.manual_seed(0)
    kw = {"channels": 4} if name == "f_conv" else {}
    net = MODELS.build(name, input_shape=shape, num_classes=3, neuron=NeuronConfig(threshold=0.5),
                       dropout=0.2, **kw)
    strat = STRATEGIES.build("spide", T=8, T_b=20, grad_scale=50.0)
    strat.check_model(net)
    out = strat.forward(net, torch.rand(2, *shape) * 4)
    F.cross_entropy(out.mean(0), torch.tensor([0, 2])).backward()
    assert net.input[0].weight.grad.abs().sum() > 0
    assert net.feedback is None or net.feedback.gain.grad is not None
    stats = strat.step_metrics()
    assert 0 < stats["spide/backward_rate"] <= 1 and 0 <= stats["spide/saturated"] <= 1
    assert strat.step_metrics() == {}


def test_spide_rejects_bad_options_and_models():
    for kw, msg in [({"T_b": 0}, "T_b must be a positive integer"), ({"Vth_b": 0.0}, "Vth_b"),
                    ({"u_rest_b": 0.7}, "u_rest_b must be below"), ({"grad_scale": -1.0}, "grad_scale")]:
        with pytest.raises(ValueError, match=msg):
            STRATEGIES.build("spide", T=4, **kw)
    mlp = MODELS.build("mlp", input_shape=(1, 4, 4), num_classes=3)
    with pytest.raises(ValueError, match="cannot train model"):
        STRATEGIES.build("spide", T=4).check_model(mlp)


@pytest.mark.parametrize("T", [5, 12])
def test_official_forward_neuron_rounds(T):
    """alpha = 0.5 (fire at Vth/2, subtract Vth: the official neuron) keeps the rate within
    1/(2T) of the equivalent map; the model's neuron (alpha = 1) floors, up to 1/T."""
    from lightning_snn.strategies.spide import firing_at

    net, x, _ = small_net("f_mlp")
    with torch.no_grad():
        net.feedback.gain.zero_()  # a = clamp(I / Vth): the map is exact without feedback
        ctx = net.prepare(STRATEGIES.build("spide", T=T).encode(x))
        target = net.equilibrium_map(torch.zeros(6, 24, dtype=torch.float64), ctx, bn="running")
        assert ((target > 0.05) & (target < 0.95)).double().mean() > 0.2  # many units inside
        rounded = net.simulate(ctx, step=firing_at(0.5))
        floored = net.simulate(ctx, step=firing_at(1.0))
        torch.testing.assert_close(floored, net.simulate(ctx), rtol=0, atol=1e-12)  # the model's
    assert (rounded - target).abs().max() <= 1 / (2 * T) + 1e-12
    assert (floored - target).abs().max() > 1 / (2 * T)
    with pytest.raises(ValueError, match="alpha"):
        STRATEGIES.build("spide", T=4, alpha=0.0)
