"""SPIDE: the spiking adjoint's parameter gradient against the exact implicit gradient (dense solve
of ``(I - J^T) beta = dL/da``, tests/spide_fixture.py) as the backward time T_b grows; the
strategy on the feedback models; bad options."""

import pytest
import torch
import torch.nn.functional as F

from lightning_snn.models import MODELS
from lightning_snn.neurons import NeuronConfig
from lightning_snn.strategies import STRATEGIES
from spide_fixture import exact_gradient, implicit_params, implicit_parts, relative_errors, small_net


def test_spide_gradient_approaches_the_implicit_gradient_single_layer():
    err = relative_errors("f_mlp", [50, 100, 250])
    # rate resolution c / T_b = 1 / T_b against |beta| <= 0.5: about 1/(2 T_b) per unit
    assert err[50] > err[100] > err[250]
    assert err[250] < 0.01, err


def test_spide_gradient_approaches_the_implicit_gradient_multilayer():
    err = relative_errors("multilayer_f", [50, 250, 1000])
    assert err[50] > err[250] > err[1000]
    assert err[250] < 0.02 and err[1000] < 0.005, err  # five layers of quantised backward spikes


def test_spide_gradient_of_a_feed_forward_net_with_zero_feedback():
    """SNNZero (LeNet): J = 0 at the last layer, the adjoint still crosses three layers of
    backward spikes. The first layer's adjoint is ~100x smaller than the last one's (rates about
    0.005 at this loss scale): below the resolution 1/T_b it is mostly lost, so the error falls
    slowly until T_b resolves it, then like 1/T_b."""
    err = relative_errors("lenet_zero", [50, 250, 1000])
    assert err[50] > err[250] > err[1000]
    assert err[1000] < 0.06, err


def test_the_feedback_term_matters():
    """Without the feedback adjoint (beta = dL/da) the gradient is far from the implicit one: the
    tolerance above would catch a SPIDE that dropped or flipped J^T."""
    net, x, y = small_net("f_mlp")
    exact, _ = exact_gradient(net, x, y)
    ctx, a_star = implicit_parts(net, x)
    a = a_star.detach().requires_grad_()
    (g,) = torch.autograd.grad(F.cross_entropy(net.readout(a), y), a)
    params = [p for _, p in implicit_params(net)]
    naive = torch.autograd.grad(net.equilibrium_map(a_star, ctx, bn="batch"), params, g)
    naive = torch.cat([t.flatten() for t in naive])
    assert (naive - exact).norm() / exact.norm() > 0.1


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
