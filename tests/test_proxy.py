"""Proxy learning: the IF neuron of the paper against hand-counted spikes, the weight gradient
against autograd through an explicitly built ReLU twin whose output is overwritten by the SNN's
spike counts (the notebook's ``outputs.data.copy_``), batch-norm statistics, the paper's model."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_snn.models import MODELS
from lightning_snn.neurons import LIF, NeuronConfig
from lightning_snn.strategies import STRATEGIES
from lightning_snn.strategies.proxy import if_dynamics


@pytest.mark.parametrize("value, T, reset, count", [
    (0.75, 20, "hard", 6), (0.75, 20, "subtract", 7),  # REFERENCE-NEXT 1.7
    (1.0, 10, "hard", 5),  # v >= Vth fires every 2nd step (a strict > would give 3)
])
def test_if_neuron_counts(value, T, reset, count):
    lif = LIF(NeuronConfig(threshold=2.0))
    s = if_dynamics(lif, torch.full((T, 1), value), reset)
    assert int(s.sum()) == count and set(s.unique().tolist()) <= {0.0, 1.0}


def tiny():
    torch.manual_seed(0)
    net = MODELS.build("proxy_convnet", input_shape=(1, 6, 6), num_classes=3,
                       neuron=NeuronConfig(threshold=0.5), channels=(4, "M"), hidden=(8,)).double()
    for m in net.modules():  # non-trivial BN affine parameters
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return net


def snn_counts_by_hand(net, x, T, vth=0.5):
    """Independent IF simulation (reset to 0) of the tiny model: counts of the output layer."""
    conv, bn = net.layers[0][0], net.layers[0][1]
    fc1, fc2 = net.layers[3][1], net.layers[5][0]
    cur0 = bn(conv(x))  # static input: the same current every step
    v = [0.0, 0.0, 0.0]
    count = 0.0
    for _ in range(T):
        outs, inp = [], None
        for i, f in enumerate([lambda _: cur0, lambda s: fc1(F.max_pool2d(s, 2).flatten(1)), fc2]):
            v[i] = v[i] + f(inp)
            s = (v[i] >= vth).double()
            v[i] = v[i] * (1 - s)
            inp = s
            outs.append(s)
        count = count + outs[-1]
    return count


def relu_twin(net):
    """An explicitly built ReLU ANN holding copies of the model's parameters."""
    conv, bn = net.layers[0][0], net.layers[0][1]
    fc1, fc2 = net.layers[3][1], net.layers[5][0]
    twin = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 8, bias=False), nn.ReLU(),
                         nn.Linear(8, 3, bias=False)).double()
    for dst, src in [(twin[0], conv), (twin[1], bn), (twin[5], fc1), (twin[7], fc2)]:
        dst.load_state_dict(src.state_dict())
    return twin, [(twin[0], conv), (twin[1], bn), (twin[5], fc1), (twin[7], fc2)]


def test_weight_gradient_equals_relu_twin_with_overwritten_output():
    net, T = tiny(), 6
    x = torch.rand(5, 1, 6, 6, dtype=torch.float64) * 3
    y = torch.tensor([0, 1, 2, 0, 1])
    twin, pairs = relu_twin(net)
    with torch.no_grad():
        c = snn_counts_by_hand(net.train(), x, T)
    assert c.sum() > 0 and (c < T).any()  # the SNN fires, and not at saturation everywhere

    strat = STRATEGIES.build("proxy", T=T)
    net.zero_grad()
    out = strat.forward(net, x)
    torch.testing.assert_close(out[0].detach(), c, rtol=0, atol=1e-12)  # counts are integers
    F.mse_loss(out[0], F.one_hot(y, 3).double()).backward()

    y_ann = twin(x)
    y_ann.data.copy_(c)  # the notebook's replacement of the output values
    F.mse_loss(y_ann, F.one_hot(y, 3).double()).backward()
    for dst, src in pairs:
        for (name, p), q in zip(src.named_parameters(), dst.parameters()):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12)


def test_ann_pass_leaves_running_statistics_to_the_snn():
    net, T = tiny(), 4
    bn = net.layers[0][1]
    x = torch.rand(4, 1, 6, 6, dtype=torch.float64)
    strat = STRATEGIES.build("proxy", T=T)
    before = bn.running_mean.clone()
    with torch.no_grad():
        _, output = strat.snn(net, x)
    assert output is net.layers[-1]  # the spiking output layer is found
    after_snn = bn.running_mean.clone()
    assert not torch.allclose(before, after_snn)
    strat.ann(net, x, output).sum().backward()
    assert torch.equal(bn.running_mean, after_snn)  # not recomputed: the very same values
    assert all(m.dynamics is None for m in net.spiking_layers())  # dynamics restored
    assert bn.momentum == 0.1


def test_paper_model_and_bad_options():
    net = MODELS.build("proxy_fmnist", input_shape=(1, 28, 28), num_classes=10,
                       neuron=NeuronConfig(threshold=2.0))
    assert sum(p.numel() for p in net.parameters()) == 19_599_744
    strat = STRATEGIES.build("proxy", T=3)
    with torch.no_grad():
        out = strat.forward(net.eval(), torch.zeros(2, 1, 28, 28))
    assert out.shape == (1, 2, 10) and out.abs().sum() == 0  # no input, no spikes
    with pytest.raises(ValueError, match="reset must be one of"):
        STRATEGIES.build("proxy", T=3, reset="soft")
    with pytest.raises(ValueError, match=r"no argument\(s\) \[.loss.\]"):  # the loss is the module's (model.loss)
        STRATEGIES.build("proxy", T=3, loss="ce")
    lif_net = MODELS.build("proxy_convnet", input_shape=(1, 6, 6), num_classes=3,
                           neuron=NeuronConfig(leak=0.9), channels=(4,), hidden=())
    with pytest.raises(ValueError, match="leak to 1.0"):
        strat.check_model(lif_net)
    trained = MODELS.build("proxy_convnet", input_shape=(1, 6, 6), num_classes=3, channels=(4,),
                           hidden=(), neuron=NeuronConfig(trainable_threshold=True))
    with pytest.raises(ValueError, match=r"cannot train thresholds.*trainable_threshold to false"):
        strat.check_model(trained)
    with pytest.raises(ValueError, match="cannot train model"):
        strat.check_model(MODELS.build("f_mlp", input_shape=(1, 4, 4), num_classes=3))


def test_linear_readout_model_uses_the_mean_readout_and_relu_twin():
    """A model ending in a linear read-out (``mlp``): the SNN's output is the time mean of the
    read-out, the ANN's last layer is that linear layer."""
    torch.manual_seed(1)
    net = MODELS.build("mlp", input_shape=(1, 3, 3), num_classes=3, neuron=NeuronConfig(threshold=0.5),
                       hidden=(7,), batch_norm=False).double()
    fc1, fc2 = net.layers[0][1], net.layers[2][0]
    x, T = torch.rand(4, 1, 3, 3, dtype=torch.float64) * 2, 5
    with torch.no_grad():  # IF with reset to 0, by hand
        cur, v, spikes = fc1(x.flatten(1)), 0.0, 0.0
        for _ in range(T):
            v = v + cur
            s = (v >= 0.5).double()
            v = v * (1 - s)
            spikes = spikes + s
        c = fc2(spikes / T)
    strat = STRATEGIES.build("proxy", T=T)
    out = strat.forward(net, x)
    torch.testing.assert_close(out[0].detach(), c, rtol=1e-12, atol=1e-12)
    out[0].square().sum().backward()
    w1, w2 = fc1.weight.detach().clone().requires_grad_(), fc2.weight.detach().clone().requires_grad_()
    y_ann = F.linear(F.relu(F.linear(x.flatten(1), w1, fc1.bias)), w2, fc2.bias)
    y_ann.data.copy_(c)
    y_ann.square().sum().backward()
    torch.testing.assert_close(fc1.weight.grad, w1.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fc2.weight.grad, w2.grad, rtol=1e-10, atol=1e-12)
