"""The deep model zoo: parameter counts against the papers' figures, every strategy on every model
(small widths), and the reference configs' models on random tensors (their data sets are not
offline, so the CLI fast_dev_run test cannot run them)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from lightning_snn.models import MODELS
from lightning_snn.module import SNNModule
from lightning_snn.neurons import NeuronConfig
from lightning_snn.strategies import STRATEGIES

REFERENCE = sorted((Path(__file__).resolve().parents[1] / "configs" / "reference").glob("*.yaml"))


def n_params(net):
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(
    "name, shape, classes, exact, millions",
    [
        ("vgg11_ws", (3, 32, 32), 10, 9_228_362, 9.23),
        ("vgg11_ws", (3, 32, 32), 100, 9_274_532, 9.27),
        ("nf_resnet34", (3, 224, 224), 1000, 21_797_688, 21.80),
    ],
)
def test_parameter_counts_match_the_papers(name, shape, classes, exact, millions):
    net = MODELS.build(name, input_shape=shape, num_classes=classes)
    assert n_params(net) == exact
    assert round(n_params(net) / 1e6, 2) == millions


def test_vgg11_ws_count_by_hand():
    # sWS conv3x3 with bias and per-channel gain, then a 512 -> 10 linear read-out
    chans = [3, 64, 128, 256, 256, 512, 512, 512, 512]
    conv = sum(9 * a * b + 2 * b for a, b in zip(chans, chans[1:]))
    assert n_params(MODELS.build("vgg11_ws", input_shape=(3, 32, 32), num_classes=10)) == conv + 5130


SMALL = {
    "vgg11_ws": ((3, 16, 16), {"cfg": (8, "M", 16)}),
    "preact_resnet18": ((3, 16, 16), {"width": 0.0625, "head": "spiking", "dropout": 0.1}),
    "resnet18": ((3, 32, 32), {"width": 0.0625}),
    "resnet34": ((3, 32, 32), {"width": 0.0625}),
    "nf_resnet34": ((3, 32, 32), {"width": 0.0625}),
    "vgg11_dvs": ((2, 32, 32), {"width": 0.0625}),
    "vgg11": ((3, 32, 32), {"width": 0.0625}),
}


@pytest.mark.parametrize("strategy", ["bptt", "ottt_a", "ottt_o", "dsr"])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_strategy_trains_every_model(name, strategy):
    torch.manual_seed(0)
    shape, kwargs = SMALL[name]
    cfg = NeuronConfig(threshold=0.5, leak=0.8, trainable_threshold=True)
    net = MODELS.build(name, input_shape=shape, num_classes=5, neuron=cfg, **kwargs)
    strat = STRATEGIES.build(strategy, T=3)
    strat.check_model(net)
    x, y = torch.randn(3, *shape) * 2, torch.tensor([0, 4, 2])
    if strategy.startswith("ottt"):
        loss, out = strat.run(net, x, y)
    else:
        out = strat.forward(net, x)
        F.cross_entropy(out.mean(0), y).backward()
    assert out.shape == (3, 3, 5)
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), name
    nonzero = [n for n, g in grads.items() if g.abs().sum() > 0]
    if name == "nf_resnet34":  # zero-initialised read-out: only it learns at the first step
        assert "head.1.3.weight" in nonzero
    else:
        assert len(nonzero) > len(grads) // 2, (name, strategy, sorted(set(grads) - set(nonzero)))
    net.eval()
    with torch.no_grad():
        assert strat.forward(net, x).shape == (3, 3, 5)


# data sets of the reference configs: (classes, reduced input shape, event frames?)
DATA = {"imagenet": (1000, (3, 32, 32), False), "cifar10_dvs": (10, (2, 48, 48), True),
        "cifar100": (100, (3, 32, 32), False)}


@pytest.mark.slow
@pytest.mark.parametrize("config", REFERENCE, ids=[c.stem for c in REFERENCE])
def test_reference_config_models_forward_and_backward(config):
    cfg = yaml.safe_load(config.read_text())
    m = dict(cfg["model"])
    classes, shape, events = DATA[cfg["data"]["dataset"]]
    m["neuron"] = NeuronConfig(**m.get("neuron", {}))
    assert SNNModule(num_classes=classes, input_shape=shape, **m).strategy.T == cfg["model"]["T"]
    m["T"] = T = 2  # the full T only multiplies the cost of this check
    module = SNNModule(num_classes=classes, input_shape=shape, **m)
    torch.manual_seed(0)
    x = torch.rand(2, T, *shape) if events else torch.randn(2, *shape)
    y = torch.tensor([1, 7])
    if m["strategy"].startswith("ottt"):
        loss, out = module.strategy.run(module.net, x, y)
    else:
        out = module.strategy.forward(module.net, x)
        loss = module.loss(out, y)
        loss.backward()
    assert out.shape == (T, 2, classes) and torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())


@pytest.mark.parametrize("strategy", ["bptt", "ottt_a", "dsr"])
@pytest.mark.parametrize("name", ["vgg11_ws", "convnet"])
def test_strategies_under_autocast(name, strategy):
    """Mixed precision (bfloat16 autocast on CPU): gradients arrive in the parameters' dtype."""
    kw = {"cfg": (8, "M", 16)} if name == "vgg11_ws" else {"channels": (4, "M"), "hidden": 16}
    net = MODELS.build(name, input_shape=(1, 12, 12), num_classes=3,
                       neuron=NeuronConfig(trainable_threshold=True), **kw)
    strat = STRATEGIES.build(strategy, T=2)
    x, y = torch.randn(2, 1, 12, 12), torch.tensor([0, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if strategy == "ottt_a":
            strat.run(net, x, y)
        else:
            F.cross_entropy(strat.forward(net, x).mean(0).float(), y).backward()
    for p in net.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
