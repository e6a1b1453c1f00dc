"""``r_mlp`` (R400): IDE's F400 layer run step by step, trained through time (BPTT) or online (OTTT).

The BPTT gradient is checked against the network written out by hand step by step (autograd through
the unrolled equations), the OTTT gradient of the recurrent weight against its closed form (error x
presynaptic trace of the delayed spikes)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from lightning_snn.loss import SpikingLoss
from lightning_snn.models import MODELS
from lightning_snn.neurons import NeuronConfig
from lightning_snn.strategies import STRATEGIES
from lightning_snn.strategies.ottt import traced_synapses

F64 = dict(rtol=1e-10, atol=1e-12)


def tiny(leak=0.7, hidden=6, **kw):
    torch.manual_seed(0)
    cfg = NeuronConfig(threshold=0.3, leak=leak, surrogate="sigmoid", surrogate_alpha=3.0, **kw)
    net = MODELS.build("r_mlp", input_shape=(1, 3, 3), num_classes=3, neuron=cfg, hidden=hidden).double()
    with torch.no_grad():  # a recurrent weight large enough to change spikes
        net.recurrent[0].weight.mul_(3.0)
    x = torch.rand(4, 1, 3, 3, dtype=torch.float64) * 2
    return net, x, torch.tensor([0, 1, 2, 1])


def ste(z, alpha):
    """Forward exactly H(z), gradient the sigmoid surrogate's."""
    smooth = torch.sigmoid(alpha * z)
    return (z >= 0).to(z.dtype) + smooth - smooth.detach()


def unrolled(p, x, T, cfg, detach_recurrent=False):
    """The net written out: I[t] = BN(F x) + W s[t-1]; u[t] = leak v[t-1] + I[t];
    s[t] = H(u[t] - Vth); v[t] = u[t] - Vth s[t]; o[t] = W_out s[t]."""
    c = F.linear(x.flatten(1), p["w_in"], p["b_in"])
    c = F.batch_norm(c, None, None, p["bn_w"], p["bn_b"], True, 0.0, 1e-5)
    v = 0.0
    s = torch.zeros(x.shape[0], p["w_rec"].shape[0], dtype=x.dtype)
    outs = []
    for _ in range(T):
        prev = s.detach() if detach_recurrent else s
        u = cfg.leak * v + c + F.linear(prev, p["w_rec"])
        s = ste(u - cfg.threshold, cfg.surrogate_alpha)
        v = u - cfg.threshold * s
        outs.append(F.linear(s, p["w_out"], p["b_out"]))
    return torch.stack(outs)


NAMES = {"w_in": "input.1.weight", "b_in": "input.1.bias", "bn_w": "input.2.weight", "bn_b": "input.2.bias",
         "w_rec": "recurrent.0.weight", "w_out": "classifier.0.weight", "b_out": "classifier.0.bias"}


def test_r400_count_and_initial_recurrent_norm():
    net = MODELS.build("r_mlp", input_shape=(1, 28, 28), num_classes=10)
    # 784 -> 400 with bias, BN 400 (weight, bias), 400 x 400 recurrent without bias, 400 -> 10
    assert sum(p.numel() for p in net.parameters()) == 784 * 400 + 400 + 800 + 400 * 400 + 4010
    assert net.kind == "recurrent"
    # IDE's restricted feedback starts at spectral norm min(sigma, 1): sigma(U(-1,1) unit rows) ~ 1.9
    sigma = torch.linalg.matrix_norm(net.recurrent[0].weight.detach(), ord=2)
    assert float(sigma) == pytest.approx(1.0, abs=1e-5)
    rows = net.input[1].weight.detach().norm(dim=1)
    torch.testing.assert_close(rows, torch.ones_like(rows))  # official unit-norm rows


@pytest.mark.parametrize("per_step", [True, False])
def test_r400_bptt_equals_unrolled_network(per_step):
    T = 4
    net, x, y = tiny()
    cfg = net.neuron.config
    loss = SpikingLoss(per_step=per_step, mse_weight=0.2)
    out = STRATEGIES.build("bptt", T=T).forward(net, x)
    loss(out, y).backward()
    params = dict(net.named_parameters())
    assert sorted(params) == sorted(NAMES.values())
    grads = {}
    for detach in (False, True):
        p = {k: params[v].detach().clone().requires_grad_() for k, v in NAMES.items()}
        ref = unrolled(p, x, T, cfg, detach)
        if not detach:
            torch.testing.assert_close(out.detach(), ref.detach(), **F64)
        loss(ref, y).backward()
        grads[detach] = {k: t.grad for k, t in p.items()}
    for k, v in NAMES.items():
        torch.testing.assert_close(params[v].grad, grads[False][k], **F64)
    w = params["recurrent.0.weight"].grad
    assert w.abs().sum() > 0
    # the gradient flows back through the recurrent weight across steps: cutting it changes it
    assert not torch.allclose(w, grads[True]["w_rec"])


def test_r400_ottt_a_recurrent_gradient_is_error_times_trace():
    """dW_rec = sum_t g[t]^T a[t], g[t] the layer's input error at step t, a[t] = lambda a[t-1] +
    s[t-1] (the delayed spikes' trace, with the recurrent layer's own leak); the input layer,
    which sees pixels, is plain."""
    T = 4
    net, x, y = tiny(leak=0.6, detach_reset=True)
    leaks = {id(m): post.leak_value() for m, post in traced_synapses(net)}
    assert leaks == {id(net.recurrent[0]): 0.6, id(net.classifier[0]): 0.6}
    rec = {"x": [], "g": []}

    def hook(mod, inp, out):
        assert not inp[0].requires_grad  # the delayed spikes are detached between steps
        rec["x"].append(inp[0].clone())
        out.register_hook(lambda g: rec["g"].append(g.clone()))

    h = net.recurrent[0].register_forward_hook(hook)
    loss, out = STRATEGIES.build("ottt_a", T=T).train_step(net, x, y, SpikingLoss(per_step=True, mse_weight=0.2))
    h.remove()
    assert torch.isfinite(loss) and out.shape == (T, 4, 3)
    assert len(rec["x"]) == len(rec["g"]) == T and not rec["x"][0].any()  # at rest at step 0
    assert any(r.any() for r in rec["x"][1:])
    a, expected = torch.zeros_like(rec["x"][0]), 0
    for xi, g in zip(rec["x"], rec["g"]):
        a = 0.6 * a + xi
        expected = expected + g.reshape(-1, g.shape[-1]).t() @ a.reshape(-1, a.shape[-1])
    w = net.recurrent[0].weight.grad
    assert w.abs().sum() > 0
    torch.testing.assert_close(w, expected, **F64)


def test_r400_online_values_equal_the_unrolled_forward_and_state_is_reset():
    net, x, y = tiny()
    bptt, ottt = STRATEGIES.build("bptt", T=3), STRATEGIES.build("ottt_o", T=3)
    net.eval()
    first = bptt.forward(net, x)
    assert net.delay.value is None and net.neuron.v is None
    _, online = ottt.train_step(copy.deepcopy(net), x, y)
    torch.testing.assert_close(online, first.detach(), **F64)


@pytest.mark.parametrize("strategy", ["dsr", "ide"])
def test_r400_whole_sequence_strategies_refuse_it(strategy):
    net, _, _ = tiny()
    with pytest.raises(ValueError, match=rf"'{strategy}' cannot train model RecurrentMLP \(kind 'recurrent'\)"):
        STRATEGIES.build(strategy, T=3).check_model(net)
