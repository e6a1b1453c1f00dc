"""Proxy learning: the IF neuron of the paper against hand-counted spikes, the weight gradient
against autograd through an explicitly built ReLU twin whose output is overwritten by the SNN's
spike counts (the notebook's ``outputs.data.copy_``), batch-norm statistics, the paper's model."""

from functools import partial

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_snn.loss import LossConfig
from lightning_snn.models import MODELS
from lightning_snn.module import SNNModule
from lightning_snn.neurons import LIF, NeuronConfig
from lightning_snn.strategies import STRATEGIES
from lightning_snn.strategies.proxy import BN_STATISTICS, if_dynamics


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


def two_conv():
    """conv-BN-IF, conv-BN-IF, M, FC-IF, FC-IF: the second BN sees spikes in the SNN, ReLU in the ANN."""
    torch.manual_seed(3)
    return MODELS.build("proxy_convnet", input_shape=(1, 6, 6), num_classes=3,
                        neuron=NeuronConfig(threshold=0.5), channels=(4, 4, "M"), hidden=(8,)).double()


def bn_stats(bn, prefix=""):
    return [getattr(bn, prefix + n).clone() for n in BN_STATISTICS]


def updated(z, momentum=0.1):
    """Running statistics after one training-mode batch ``z`` [N, C, H, W] from (0, 1, 0)."""
    return [momentum * z.mean((0, 2, 3)), (1 - momentum) + momentum * z.var((0, 2, 3), unbiased=True),
            torch.tensor(1)]


def assert_stats(actual, expected):
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e.to(a.dtype), rtol=1e-10, atol=1e-12)


def test_ann_and_snn_keep_separate_running_statistics():
    """The SNN's pass updates only the module's own statistics (over the T*B spike maps of the
    second BN), the ANN's pass only the ``ann_*`` ones (over its B ReLU maps); both against the
    statistics computed by hand from an independent IF / ReLU run."""
    net, T = two_conv(), 4
    (conv1, bn1), (conv2, bn2) = net.layers[0], net.layers[2]
    x = torch.rand(5, 1, 6, 6, dtype=torch.float64) * 2
    strat = STRATEGIES.build("proxy", T=T)
    strat.prepare_model(net)
    fresh = [torch.zeros(4), torch.ones(4), torch.tensor(0)]
    with torch.no_grad():  # by hand: batch-normalised currents, IF with reset to 0
        z1 = conv1(x)
        cur1 = F.batch_norm(z1, None, None, bn1.weight, bn1.bias, training=True)
        v, spikes = torch.zeros_like(cur1), []
        for _ in range(T):
            v = v + cur1
            s = (v >= 0.5).double()
            v = v * (1 - s)
            spikes.append(s)
        z2_snn = conv2(torch.cat(spikes))  # [T*B, ...]
        z2_ann = conv2(F.relu(cur1))

    with torch.no_grad():
        _, output = strat.snn(net, x)
    assert output is net.layers[-1]  # the spiking output layer is found
    assert_stats(bn_stats(bn1), updated(z1))
    assert_stats(bn_stats(bn2), updated(z2_snn))
    for bn in (bn1, bn2):
        assert_stats(bn_stats(bn, "ann_"), fresh)  # the ANN's untouched
    snn_after = [bn_stats(bn1), bn_stats(bn2)]

    strat.ann(net, x, output).sum().backward()
    assert_stats(bn_stats(bn1, "ann_"), updated(z1))
    assert_stats(bn_stats(bn2, "ann_"), updated(z2_ann))
    for bn, before in zip((bn1, bn2), snn_after):  # the SNN's: the very same values
        assert all(torch.equal(a, b) for a, b in zip(bn_stats(bn), before))
    assert all(m.dynamics is None for m in net.spiking_layers())  # dynamics restored
    assert not torch.allclose(z2_snn.mean((0, 2, 3)), z2_ann.mean((0, 2, 3)), atol=1e-3)  # distinguishable
    # the ANN's statistics are model state: saved and loaded with it
    assert {"layers.2.1.ann_running_mean", "layers.2.1.ann_running_var"} <= set(net.state_dict())


def two_conv_snn_by_hand(net, x, T, per_step):
    """Independent IF SNN (reset to 0, Vth 0.5) of :func:`two_conv` with training-mode batch
    norms: the output counts and the second BN's running (mean, var) after the pass from (0, 1).
    The second BN normalises each step's batch (``per_step``) or all T*B maps at once."""
    (conv1, bn1), (conv2, bn2) = net.layers[0], net.layers[2]
    fc1, fc2 = net.layers[5][1], net.layers[7][0]

    def if_run(currents):
        v, out = 0.0, []
        for cur in currents:
            v = v + cur
            s = (v >= 0.5).double()
            v = v * (1 - s)
            out.append(s)
        return out

    def bn(z):
        return F.batch_norm(z, None, None, bn2.weight, bn2.bias, training=True)

    cur1 = F.batch_norm(conv1(x), None, None, bn1.weight, bn1.bias, training=True)
    z2 = [conv2(s) for s in if_run([cur1] * T)]
    mean, var = torch.zeros(4, dtype=x.dtype), torch.ones(4, dtype=x.dtype)
    for z in (z2 if per_step else [torch.cat(z2)]):  # running <- 0.9 running + 0.1 batch
        mean, var = 0.9 * mean + 0.1 * z.mean((0, 2, 3)), 0.9 * var + 0.1 * z.var((0, 2, 3), unbiased=True)
    cur2 = [bn(z) for z in z2] if per_step else list(bn(torch.cat(z2)).chunk(T))
    s2 = if_run(cur2)
    s3 = if_run([fc1(F.max_pool2d(s, 2).flatten(1)) for s in s2])
    return sum(if_run([fc2(s) for s in s3])), mean, var


@pytest.mark.parametrize("per_step", [True, False])
def test_snn_batch_norm_per_step_as_the_notebook(per_step):
    net, T = two_conv(), 5
    bn1, bn2 = net.layers[0][1], net.layers[2][1]
    x = torch.rand(10, 1, 6, 6, dtype=torch.float64) * 2  # B a multiple of T: the static input stays whole
    with torch.no_grad():
        c, mean, var = two_conv_snn_by_hand(net, x, T, per_step)
        out, _ = STRATEGIES.build("proxy", T=T, bn_per_step=per_step).snn(net.train(), x)
    assert c.sum() > 0
    torch.testing.assert_close(out, c, rtol=0, atol=1e-12)
    torch.testing.assert_close(bn2.running_mean, mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bn2.running_var, var, rtol=1e-10, atol=1e-12)
    assert int(bn2.num_batches_tracked) == (T if per_step else 1)
    assert int(bn1.num_batches_tracked) == 1  # the static first layer runs once either way
    assert "forward" not in vars(bn2)  # the per-step forward is removed again


def test_frozen_batch_norm_normalises_with_each_network_s_own_running_statistics():
    """From ``freeze_bn_epoch`` on, the SNN normalises with its running statistics, the ANN with
    its own, neither changes them, and the gradient is the eval-mode ReLU twin's."""
    net, T = tiny(), 6
    conv, bn = net.layers[0][0], net.layers[0][1]
    fc1, fc2 = net.layers[3][1], net.layers[5][0]
    strat = STRATEGIES.build("proxy", T=T, freeze_bn_epoch=1)
    strat.prepare_model(net)
    with torch.no_grad():  # distinct statistics for the two networks
        bn.running_mean.uniform_(-0.3, 0.3), bn.running_var.uniform_(0.5, 2.0)
        bn.ann_running_mean.uniform_(-0.3, 0.3), bn.ann_running_var.uniform_(0.5, 2.0)
    snn_stats, ann_stats = bn_stats(bn), bn_stats(bn, "ann_")
    x = torch.rand(5, 1, 6, 6, dtype=torch.float64) * 3
    y = torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        c = snn_counts_by_hand(net.eval(), x, T)  # BN in eval mode: the SNN's statistics
    twin = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 8, bias=False), nn.ReLU(),
                         nn.Linear(8, 3, bias=False)).double().eval()
    with torch.no_grad():
        for dst, src in [(twin[0], conv), (twin[5], fc1), (twin[7], fc2)]:
            dst.weight.copy_(src.weight)
        twin[1].weight.copy_(bn.weight), twin[1].bias.copy_(bn.bias)
        twin[1].running_mean.copy_(bn.ann_running_mean), twin[1].running_var.copy_(bn.ann_running_var)

    net.train()
    strat.on_train_epoch_start(net, 0)  # not yet frozen: batch statistics, so other counts
    with torch.no_grad():
        assert not torch.equal(strat.forward(net, x)[0], c)
    with torch.no_grad():
        bn.num_batches_tracked.zero_(), bn.ann_num_batches_tracked.zero_()
        for t, v in zip([bn.running_mean, bn.running_var], snn_stats[:2]):
            t.copy_(v)
    strat.on_train_epoch_start(net, 1)
    out = strat.forward(net, x)
    torch.testing.assert_close(out[0].detach(), c, rtol=0, atol=1e-12)
    F.mse_loss(out[0], F.one_hot(y, 3).double()).backward()
    y_ann = twin(x)
    y_ann.data.copy_(c)
    F.mse_loss(y_ann, F.one_hot(y, 3).double()).backward()
    for dst, src in [(twin[0], conv), (twin[1], bn), (twin[5], fc1), (twin[7], fc2)]:
        for (name, p), q in zip(src.named_parameters(), dst.parameters()):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12)
    assert net.training and bn.training  # the modes are restored
    assert_stats(bn_stats(bn)[:2], snn_stats[:2])
    assert_stats(bn_stats(bn, "ann_")[:2], ann_stats[:2])
    assert int(bn.num_batches_tracked) == 0 and int(bn.ann_num_batches_tracked) == 0


class _Record(pl.Callback):
    def __init__(self):
        self.stats, self.affine = [], []

    def on_train_epoch_end(self, trainer, module):
        bns = [m for m in module.net.modules() if isinstance(m, nn.BatchNorm2d)]
        self.stats.append([bn_stats(bn) + bn_stats(bn, "ann_") for bn in bns])
        self.affine.append([torch.cat([bn.weight, bn.bias]).detach().clone() for bn in bns])


def test_batch_norm_frozen_after_the_first_epoch_with_a_trainer():
    """Two epochs of ``fit`` with ``freeze_bn_epoch: 1`` and the notebook's Adam: the running
    statistics of both networks move in epoch 0 (one update per batch each) and are exactly the
    same after epoch 1, while gamma / beta keep training."""
    torch.manual_seed(0)
    module = SNNModule(network="proxy_convnet", num_classes=3, input_shape=(1, 6, 6),
                       network_args={"channels": [4, 4, "M"], "hidden": [8]},
                       neuron=NeuronConfig(threshold=0.5), strategy="proxy",
                       strategy_args={"freeze_bn_epoch": 1}, T=3, loss=LossConfig(mse_weight=1.0),
                       optimizer=partial(torch.optim.Adam, lr=1e-2, betas=(0.8, 0.99), eps=1e-8,
                                         weight_decay=1e-6), scheduler="constant")
    data = TensorDataset(torch.rand(12, 1, 6, 6) * 3, torch.randint(0, 3, (12,)))
    record = _Record()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=[record])
    trainer.fit(module, DataLoader(data, batch_size=4))
    (epoch0, epoch1), (affine0, affine1) = record.stats, record.affine
    for i, (bn0, bn1) in enumerate(zip(epoch0, epoch1)):
        mean, var, n, ann_mean, ann_var, ann_n = bn0
        assert int(n) == 3 and int(ann_n) == 3  # 3 batches: one update of each network's per batch
        # the first BN sees the same static conv output in both networks, the second spikes / ReLU
        assert torch.allclose(mean, ann_mean) == (i == 0)
        assert not torch.allclose(mean, torch.zeros_like(mean)) and not torch.allclose(var, torch.ones_like(var))
        assert all(torch.equal(a, b) for a, b in zip(bn0, bn1))  # frozen in epoch 1
    assert all(not torch.allclose(a, b) for a, b in zip(affine0, affine1))  # gamma / beta trained
    assert all(m.training for m in module.net.modules())  # the BN modes were restored


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
    with pytest.raises(ValueError, match=r"freeze_bn_epoch must be an epoch >= 0 or null, got -1"):
        STRATEGIES.build("proxy", T=3, freeze_bn_epoch=-1)
    with pytest.raises(ValueError, match=r"argument bn_per_step: expected true or false, got 1"):
        STRATEGIES.build("proxy", T=3, bn_per_step=1)
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
