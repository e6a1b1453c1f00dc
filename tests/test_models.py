"""Model registry, shapes, and the folded-time layer."""

import pytest
import torch
from torch import nn

from lightning_snn.layers import TimeDistributed
from lightning_snn.models import MODELS


@pytest.mark.parametrize(
    "name, shape, classes, params",
    [
        ("mlp", (1, 28, 28), 10, 784 * 512 + 2 * 512 + 512 * 10 + 10),
        ("convnet", (1, 28, 28), 10, None),
        ("vgg11", (3, 32, 32), 100, None),
    ],
)
def test_models_map_sequences_to_per_step_scores(name, shape, classes, params):
    net = MODELS.build(name, input_shape=shape, num_classes=classes)
    x = torch.randn(3, 2, *shape)
    assert net(x).shape == (3, 2, classes)
    if params is not None:
        assert sum(p.numel() for p in net.parameters()) == params


def test_vgg11_parameter_count():
    # 8 conv3x3 layers (no bias) + BN (2 per channel) + 512->10 read-out
    chans = [3, 64, 128, 256, 256, 512, 512, 512, 512]
    conv = sum(9 * a * b for a, b in zip(chans, chans[1:]))
    bn = 2 * sum(chans[1:])
    net = MODELS.build("vgg11", input_shape=(3, 32, 32), num_classes=10)
    assert sum(p.numel() for p in net.parameters()) == conv + bn + 512 * 10 + 10


def test_time_distributed_static_input_shortcut_is_exact():
    torch.manual_seed(0)
    op = TimeDistributed(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
    x = torch.randn(5, 3, 8, 8)
    expanded = x.unsqueeze(0).expand(4, *x.shape)
    fast = op(expanded)
    mean_fast = op[1].running_mean.clone()
    op[1].reset_running_stats()
    slow = op(expanded.contiguous())
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mean_fast, op[1].running_mean)
    assert fast.shape == (4, 5, 4, 8, 8)


@pytest.mark.parametrize("name, shape, feedback_sigma", [
    ("f_mlp", (1, 28, 28), 1.874),  # the official FC-400's sigma(W_init), measured on its code
    ("f_conv", (1, 28, 28), 1.145),  # the official MNIST conv's
])
def test_feedback_nets_start_from_the_official_initialisation(name, shape, feedback_sigma):
    """IDE-FSNN ``modules/snn_modules.py`` ``_initialize_weights``: U(-1, 1) rows scaled to unit norm,
    biases 0, BN 1 / 0 (the read-out keeps PyTorch's default)."""
    torch.manual_seed(0)
    net = MODELS.get(name)(shape, 10)
    first = net.input[0]
    ops = [first[-1] if isinstance(first, nn.Sequential) else first, net.feedback.op]
    for op in ops:
        rows = op.weight.detach().flatten(1)
        torch.testing.assert_close(rows.norm(dim=1), torch.ones(rows.shape[0]))
        if op.bias is not None:
            assert torch.count_nonzero(op.bias) == 0
        # a row of n uniforms scaled to unit norm: kurtosis of the entries 1.8 (uniform), not 3 (normal)
        z = rows * rows.shape[1] ** 0.5
        kurtosis = float((z**4).mean() / (z**2).mean() ** 2)
        assert abs(kurtosis - 1.8) < 0.15, kurtosis
    bn = net.input[1]
    assert torch.all(bn.weight == 1) and torch.count_nonzero(bn.bias) == 0
    # the restriction's gain starts at min(sigma(W_init), 1): sigma near the official net's
    sigma = float(torch.linalg.matrix_norm(net.feedback._matrix(net.feedback.op.weight.detach()), ord=2))
    assert abs(sigma - feedback_sigma) < 0.15 * feedback_sigma, sigma
    assert float(net.feedback.gain) == pytest.approx(min(sigma, 1.0), rel=1e-3)
