"""Surrogate BPTT against an independent, hand-unrolled computation of the same network."""

import pytest
import torch
import torch.nn.functional as F

from lightning_snn.models import MODELS
from lightning_snn.neurons import NeuronConfig
from lightning_snn.strategies import STRATEGIES

# Straight-through forms: forward value exactly H(x), gradient the surrogate's derivative,
# built from ordinary differentiable functions (no custom autograd.Function).
SMOOTH = {
    "sigmoid": lambda x, a: torch.sigmoid(a * x),
    "atan": lambda x, a: torch.atan(torch.pi / 2 * a * x) / torch.pi,
    "rectangle": lambda x, a: torch.clamp(a * x, -0.5, 0.5),
    # SpikingJelly's PiecewiseQuadratic less 1/2: a x - a^2 x |x| / 2 on |x| <= 1/a, +-1/2 outside
    "triangle": lambda x, a: torch.where(x.abs() <= 1 / a, a * x - a * a * x * x.abs() / 2,
                                         0.5 * torch.sign(x)),
}


def ste(x, name, alpha):
    smooth = SMOOTH[name](x, alpha)
    return (x >= 0).to(x.dtype) + smooth - smooth.detach()


def unrolled(params, x, y, T, cfg):
    """Two spiking layers and a read-out, written out step by step."""
    (w1, b1), (w2, b2), (w3, b3) = params["layers"]
    vth1, vth2 = params["vth"]
    v1 = v2 = 0.0
    outs = []
    for _ in range(T):
        spikes = []
        for (w, b), vth, v_name in (((w1, b1), vth1, "v1"), ((w2, b2), vth2, "v2")):
            inp = x if v_name == "v1" else spikes[-1]
            v = v1 if v_name == "v1" else v2
            h = cfg.leak * v + inp @ w.T + b
            s = ste(h - vth, cfg.surrogate, cfg.surrogate_alpha)
            v = h - vth * (s.detach() if cfg.detach_reset else s)
            if v_name == "v1":
                v1 = v
            else:
                v2 = v
            spikes.append(s)
        outs.append(spikes[-1] @ w3.T + b3)
    return F.cross_entropy(torch.stack(outs).mean(0), y)


@pytest.mark.parametrize("surrogate", ["sigmoid", "atan", "rectangle", "triangle"])
@pytest.mark.parametrize("leak, detach_reset", [(1.0, False), (0.8, False), (0.8, True)])
@pytest.mark.parametrize("T", [1, 3, 5])
def test_bptt_gradient_equals_unrolled(surrogate, leak, detach_reset, T):
    torch.manual_seed(0)
    cfg = NeuronConfig(
        threshold=0.7, leak=leak, surrogate=surrogate, surrogate_alpha=1.5,
        detach_reset=detach_reset, trainable_threshold=True,
    )
    net = MODELS.build("mlp", input_shape=(6,), num_classes=3, neuron=cfg, hidden=(8, 5),
                       batch_norm=False).double()
    with torch.no_grad():  # make thresholds differ per layer
        net.spiking_layers()[1].threshold.fill_(0.9)
    x = torch.randn(4, 6, dtype=torch.float64) * 1.5
    y = torch.tensor([0, 1, 2, 1])
    out = STRATEGIES.build("bptt", T=T).forward(net, x)
    assert out.shape == (T, 4, 3)
    F.cross_entropy(out.mean(0), y).backward()

    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    params = {
        "layers": [(m.weight.detach().clone().requires_grad_(), m.bias.detach().clone().requires_grad_())
                   for m in linears],
        "vth": [n.threshold.detach().clone().requires_grad_() for n in net.spiking_layers()],
    }
    loss = unrolled(params, x, y, T, cfg)
    loss.backward()
    checked = 0
    for m, (w, b) in zip(linears, params["layers"]):
        torch.testing.assert_close(m.weight.grad, w.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(m.bias.grad, b.grad, rtol=1e-10, atol=1e-12)
        checked += int(w.grad.abs().sum() > 0)
    for n, vth in zip(net.spiking_layers(), params["vth"]):
        torch.testing.assert_close(n.threshold.grad, vth.grad, rtol=1e-10, atol=1e-12)
    assert checked >= 2, "test inputs give no gradient: the comparison would be vacuous"


def test_per_step_loss_is_mean_of_step_losses():
    from lightning_snn.module import SNNModule

    from lightning_snn.loss import LossConfig

    m = SNNModule("mlp", num_classes=3, input_shape=(4,), loss=LossConfig(per_step=True), T=3)
    out, y = torch.randn(3, 5, 3), torch.tensor([0, 1, 2, 0, 1])
    expected = sum(F.cross_entropy(out[t], y) for t in range(3)) / 3
    torch.testing.assert_close(m.loss(out, y), expected)
