"""The deep model zoo: parameter counts against the papers' figures (every model x strategy pair is
in tests/test_pairs.py), and the reference configs' models on random tensors (their data sets are not
offline, so the CLI fast_dev_run test cannot run them)."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from lightning_snn.loss import LossConfig
from lightning_snn.models import MODELS
from lightning_snn.module import SNNModule
from lightning_snn.neurons import NeuronConfig, SpikingNeuron
from lightning_snn.strategies import STRATEGIES
from lightning_snn.strategies.ottt import traced_synapses

REFERENCE = sorted((Path(__file__).resolve().parents[1] / "configs" / "reference").glob("*.yaml"))


def n_params(net):
    return sum(p.numel() for p in net.parameters())


def sws(k, c_in, c_out):
    """A scaled-WS conv k x k: weight, bias and per-channel gain."""
    return k * k * c_in * c_out + 2 * c_out


VGG_WS_CHANNELS = [3, 64, 128, 256, 256, 512, 512, 512, 512]


def vgg11_ws_count(classes):
    return sum(sws(3, a, b) for a, b in zip(VGG_WS_CHANNELS, VGG_WS_CHANNELS[1:])) + 512 * classes + classes


def nf_resnet34_count(classes):
    n, c = sws(7, 3, 64), 64  # stem
    for blocks, w in zip((3, 4, 6, 3), (64, 128, 256, 512)):
        for _ in range(blocks):  # two sWS convs, a skip gain, a 1x1 sWS shortcut where the width changes
            n += sws(3, c, w) + sws(3, w, w) + 1 + (sws(1, c, w) if c != w else 0)
            c = w
    return n + 512 * classes + classes


def nf_resnet_bottleneck_count(classes, blocks):
    n, c = sws(7, 3, 64), 64  # stem
    for b, w in zip(blocks, (64, 128, 256, 512)):
        for _ in range(b):  # sWS conv1x1, conv3x3, conv1x1 to 4w, a skip gain, a shortcut where the width changes
            n += sws(1, c, w) + sws(3, w, w) + sws(1, w, 4 * w) + 1 + (sws(1, c, 4 * w) if c != 4 * w else 0)
            c = 4 * w
    return n + c * classes + classes


@pytest.mark.parametrize(
    "name, shape, classes, count, millions",
    [
        ("vgg11_ws", (3, 32, 32), 10, vgg11_ws_count(10), 9.23),
        ("vgg11_ws", (3, 32, 32), 100, vgg11_ws_count(100), 9.27),
        # VGG-F: plus the feedback conv3x3 512 -> 64 with bias
        ("vgg11f_ws", (3, 32, 32), 10, vgg11_ws_count(10) + 9 * 512 * 64 + 64, 9.52),
        ("vgg11f_ws", (3, 32, 32), 100, vgg11_ws_count(100) + 9 * 512 * 64 + 64, 9.57),
        ("nf_resnet34", (3, 224, 224), 1000, nf_resnet34_count(1000), 21.80),
        # SLTT's: no figure in the paper; 25,557,048 and 44,549,193 counted on the official classes
        # (qymeng94/SLTT spiking_nfresnet50 / spiking_nfresnet101, 1000 classes)
        ("nf_resnet50", (3, 224, 224), 1000, nf_resnet_bottleneck_count(1000, (3, 4, 6, 3)), 25.56),
        ("nf_resnet101", (3, 224, 224), 1000, nf_resnet_bottleneck_count(1000, (3, 4, 23, 3)), 44.55),
    ],
)
def test_parameter_counts_match_the_papers(name, shape, classes, count, millions):
    """The count derived from the architecture, and the papers' rounded figure (in millions)."""
    net = MODELS.build(name, input_shape=shape, num_classes=classes)
    assert n_params(net) == count
    assert round(count / 1e6, 2) == millions


def test_vgg11_ws_count_by_hand():
    # sWS conv3x3 with bias and per-channel gain, then a 512 -> 10 linear read-out
    chans = [3, 64, 128, 256, 256, 512, 512, 512, 512]
    conv = sum(9 * a * b + 2 * b for a, b in zip(chans, chans[1:]))
    assert n_params(MODELS.build("vgg11_ws", input_shape=(3, 32, 32), num_classes=10)) == conv + 5130


# data sets of the reference configs: (classes, reduced input shape, event frames?)
DATA = {"imagenet": (1000, (3, 32, 32), False), "cifar10_dvs": (10, (2, 48, 48), True),
        "cifar100": (100, (3, 32, 32), False)}


def resolved(config: Path) -> dict:
    """A config file with its ``config:`` base read first and its dotted keys (``model.network:
    x``) set on top, as the command line's parser applies an overlay."""
    cfg = yaml.safe_load(config.read_text())
    if "config" not in cfg:
        return cfg
    out = resolved(config.parent / cfg.pop("config"))
    for key, value in cfg.items():
        *parents, leaf = key.split(".")
        node = out
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = value
    return out


@pytest.mark.slow
@pytest.mark.parametrize("config", REFERENCE, ids=[c.stem for c in REFERENCE])
def test_reference_config_models_forward_and_backward(config):
    cfg = resolved(config)
    m = dict(cfg["model"])
    if m["network"] == "nf_resnet101":  # 44.5M parameters (counted in test_parameter_counts...): a
        # quarter of the width keeps every block and the strategy's path at 1/16 of the cost
        m["network_args"] = {**m.get("network_args", {}), "width": 0.25}
    classes, shape, events = DATA[cfg["data"]["dataset"]]
    m["neuron"] = NeuronConfig(**m.get("neuron", {}))
    m["loss"] = LossConfig(**m.get("loss", {}))
    assert SNNModule(num_classes=classes, input_shape=shape, **m).strategy.T == cfg["model"]["T"]
    m["T"] = T = 2  # the full T only multiplies the cost of this check
    if m["strategy"] == "spide":  # and so does the backward phase's T_b
        m["strategy_args"] = {**m["strategy_args"], "T_b": 5}
    module = SNNModule(num_classes=classes, input_shape=shape, **m)
    torch.manual_seed(0)
    x = torch.rand(2, T, *shape) if events else torch.randn(2, *shape)
    y = torch.tensor([1, 7])
    loss, out = module.strategy.train_step(module.net, x, y, module.loss)
    # a feedback model, or DSR with a leaky spiking head, scores one rate: one output step
    assert out.shape[1:] == (2, classes) and out.shape[0] in (1, T) and torch.isfinite(loss)
    # the ANN form's ReLU reads no neuron parameter (threshold): those keep no gradient
    skip = ({id(p) for n in module.net.modules() if isinstance(n, SpikingNeuron) for p in n.parameters(recurse=False)}
            if m["strategy"] == "ann" else set())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters() if id(p) not in skip)


@pytest.mark.parametrize("strategy", ["bptt", "ottt_a", "dsr"])
@pytest.mark.parametrize("name", ["vgg11_ws", "convnet"])
def test_strategies_under_autocast(name, strategy):
    """Mixed precision (bfloat16 autocast on CPU): gradients arrive in the parameters' dtype."""
    kw = {"cfg": (8, "M", 16)} if name == "vgg11_ws" else {"channels": (4, "M"), "hidden": 16}
    net = MODELS.build(name, input_shape=(1, 12, 12), num_classes=3,
                       neuron=NeuronConfig(trainable_threshold=True), **kw)
    assert_autocast_step(net, strategy, torch.randn(2, 1, 12, 12))


def assert_autocast_step(net, strategy: str, x) -> None:
    """One bfloat16-autocast training step of ``strategy`` (T=2): every parameter gets a finite
    float32 gradient."""
    strat, y = STRATEGIES.build(strategy, T=2), torch.tensor([0, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        strat.train_step(net, x, y)
    for p in net.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()


# ------------------------------------------------------------------------------ VGG-F (feedback)
def test_vgg11f_ws_count_by_hand():
    # VGG(sWS) plus the feedback conv3x3 512 -> 64 with bias
    for classes in (10, 100):
        plain = n_params(MODELS.build("vgg11_ws", input_shape=(3, 32, 32), num_classes=classes))
        net = MODELS.build("vgg11f_ws", input_shape=(3, 32, 32), num_classes=classes)
        assert n_params(net) == plain + 9 * 512 * 64 + 64
        assert net.feedback[0].scale_factor == 8 and net.fb_conv.weight.shape == (64, 512, 3, 3)
        assert not net.fb_conv.weight.any() and not net.fb_conv.bias.any()  # zero-initialised
    with pytest.raises(ValueError, match="not divisible by 8"):
        MODELS.build("vgg11f_ws", input_shape=(3, 28, 36), num_classes=10)


TINY_F = dict(input_shape=(3, 8, 8), num_classes=3, cfg=(4, "M", 8))  # last map 8 x 4 x 4, Upsample x2


def tiny_vggf(leak=0.8, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = NeuronConfig(threshold=0.5, leak=leak, surrogate="sigmoid", surrogate_alpha=2.0, **kw)
    return MODELS.build("vgg11f_ws", neuron=cfg, **TINY_F).double()


def set_feedback(net, seed=1, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        net.fb_conv.weight.copy_(torch.randn(net.fb_conv.weight.shape, generator=g, dtype=net.fb_conv.weight.dtype) * scale)
    return net


def tiny_input(seed=0, B=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, 8, 8, generator=g, dtype=torch.float64) * 2, torch.tensor([0, 2, 1, 0][:B])


# Float64 through a few hundred multiply-adds per output: different summation orders (another module
# structure, per-step vs time-folded convolutions, BLAS kernel choice) differ by a few ulp (~1e-16
# relative); a spike flipped by such a difference, or a wrong feedback, moves outputs by O(1e-2).
F64 = dict(rtol=1e-9, atol=1e-9)


def test_vgg11f_ws_starts_as_vgg11_ws_and_feedback_acts_from_the_second_step():
    net = tiny_vggf()
    x, _ = tiny_input()
    bptt = STRATEGIES.build("bptt", T=4)
    # zero feedback: VGG-F is VGG(sWS) with the same weights
    plain = MODELS.build("vgg11_ws", neuron=net.features[0].config, **TINY_F).double()
    src = dict(net.named_parameters())
    n_layers = len(plain.layers)
    for name, p in plain.named_parameters():
        idx, rest = name.split(".", 2)[1], name.split(".", 2)[2]
        key = ("conv1" if idx == "0" else "head" if int(idx) == n_layers - 1
               else f"features.{int(idx) - 1}") + "." + rest
        p.data.copy_(src[key])
    with torch.no_grad():
        off = bptt.forward(net, x)
        # two module structures, one computation: equal up to float64 summation order
        torch.testing.assert_close(off, bptt.forward(plain, x), **F64)
        # the last layer fires, so a non-zero feedback weight has something to carry
        spikes = []
        h = net.features[-2].register_forward_hook(lambda m, i, o: spikes.append(o))
        bptt.forward(net, x)
        h.remove()
        assert all(s.sum() > 0 for s in spikes[:-1])
        on = bptt.forward(set_feedback(net), x)
    torch.testing.assert_close(on[0], off[0], **F64)  # step 0: the network was at rest, nothing fed back
    for t in range(1, 4):
        assert not torch.allclose(on[t], off[t]), t


def test_vgg11f_ws_state_is_reset_between_batches():
    net = set_feedback(tiny_vggf())
    x, y = tiny_input()
    other = x.flip(0) + 1.0
    bptt, ottt = STRATEGIES.build("bptt", T=3), STRATEGIES.build("ottt_a", T=3)
    first = bptt.forward(net, x)
    assert net.delay.value is None and all(m.v is None for m in net.spiking_layers())  # nothing kept
    bptt.forward(net, other)
    torch.testing.assert_close(bptt.forward(net, x), first, **F64)
    with torch.no_grad():
        torch.testing.assert_close(net(bptt.encode(x)), first, **F64)  # the model itself
    # OTTT: one call per step, state carried by the strategy; same values as the unrolled forward
    _, online = ottt.train_step(net, x, y)
    ottt.train_step(net, other, y)
    _, again = ottt.train_step(net, x, y)
    assert net.delay.value is None
    torch.testing.assert_close(online, first.detach(), **F64)
    torch.testing.assert_close(again, online, **F64)


def ste(z, alpha):
    """Forward exactly H(z), gradient the sigmoid surrogate's (as tests/test_bptt.py)."""
    smooth = torch.sigmoid(alpha * z)
    return (z >= 0).to(z.dtype) + smooth - smooth.detach()


def sws(w, gain, eps=1e-4):
    """OTTT's ``ScaledWSConv2d.get_weight``: gain (W - mean) / sqrt(var fan_in + eps), var with N - 1."""
    n = w[0].numel()
    mean = w.sum((1, 2, 3), keepdim=True) / n
    var = ((w - mean) ** 2).sum((1, 2, 3), keepdim=True) / (n - 1)
    return (w - mean) / (var * n + eps) ** 0.5 * gain


def unrolled_tiny_vggf(p, x, y, T, cfg, scale, detach_feedback=False):
    """The tiny VGG-F (cfg (4, M, 8)) written out step by step: two sWS layers, feedback 8 -> 4."""
    v1 = v2 = 0.0
    f = torch.zeros(x.shape[0], 8, 4, 4, dtype=x.dtype)  # at rest
    outs = []
    for _ in range(T):
        prev = f.detach() if detach_feedback else f
        fb = F.conv2d(F.interpolate(prev, scale_factor=2, mode="nearest"), p["fb_w"], p["fb_b"], padding=1)
        h1 = cfg.leak * v1 + F.conv2d(x, sws(p["w1"], p["g1"]), p["b1"], padding=1) + fb
        s1 = ste(h1 - cfg.threshold, cfg.surrogate_alpha)
        v1 = h1 - cfg.threshold * s1
        h2 = cfg.leak * v2 + F.conv2d(F.avg_pool2d(s1 * scale, 2), sws(p["w2"], p["g2"]), p["b2"], padding=1)
        s2 = ste(h2 - cfg.threshold, cfg.surrogate_alpha)
        v2 = h2 - cfg.threshold * s2
        f = s2 * scale
        outs.append(F.linear(f.mean((2, 3)), p["fc_w"], p["fc_b"]))
    return F.cross_entropy(torch.stack(outs).mean(0), y)


def hand_sws(w, gain, eps, n_minus):
    """Scaled WS with plain Python floats, one output channel at a time:
    w_hat = gain (w - m) / sqrt(s2 / (N - n_minus) * N + eps), m and s2 = sum (w - m)^2 over the
    channel's N = fan-in weights (n_minus 1: torch.var's unbiased default, the official code's)."""
    out = []
    for ch, g in zip(w.tolist(), gain.flatten().tolist()):
        flat = [v for plane in ch for row in plane for v in row]
        n = len(flat)
        m = sum(flat) / n
        s2 = sum((v - m) ** 2 for v in flat)
        d = math.sqrt(s2 / (n - n_minus) * n + eps)
        out.append([[[g * (v - m) / d for v in row] for row in plane] for plane in ch])
    return torch.tensor(out, dtype=torch.float64)


def test_scaled_ws_weight_is_the_official_definition():
    """The sWS effective weight equals OTTT's / SLTT's ``get_weight`` (``torch.var`` default: N - 1)
    to round-off, at the first conv's fan-in 27 where N and N - 1 differ by sqrt(27 / 26) = 1.9 %;
    ``unbiased=False`` is the population (N) convention."""
    from lightning_snn.layers import ScaledWSConv2d

    torch.manual_seed(0)
    layer = ScaledWSConv2d(3, 5, 3, padding=1).double()
    with torch.no_grad():
        layer.gain.copy_(torch.rand(5, 1, 1, 1, dtype=torch.float64) + 0.5)
    w, g = layer.weight.detach(), layer.gain.detach()
    official = hand_sws(w, g, 1e-4, n_minus=1)
    # relative error of float64 round-off is ~1e-15; the N vs N - 1 difference is 1.9e-2
    torch.testing.assert_close(layer.effective_weight().detach(), official, rtol=1e-12, atol=1e-14)
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), F.conv2d(x, official, layer.bias, padding=1), rtol=1e-12, atol=1e-12)
    population = ScaledWSConv2d(3, 5, 3, padding=1, unbiased=False).double()
    population.load_state_dict(layer.state_dict())
    torch.testing.assert_close(population.effective_weight().detach(), hand_sws(w, g, 1e-4, n_minus=0),
                               rtol=1e-12, atol=1e-14)
    ratio = population.effective_weight() / layer.effective_weight()
    # the two differ by sqrt(N / (N - 1)) up to eps: far outside the tolerance above
    assert (ratio - math.sqrt(27 / 26)).abs().max() < 1e-3


def test_vgg11f_ws_bptt_gradient_equals_unrolled():
    T = 3
    net = set_feedback(tiny_vggf())
    cfg = net.features[0].config
    x, y = tiny_input()
    F.cross_entropy(STRATEGIES.build("bptt", T=T).forward(net, x).mean(0), y).backward()
    names = {"w1": "conv1.0.weight", "g1": "conv1.0.gain", "b1": "conv1.0.bias",
             "w2": "features.3.0.weight", "g2": "features.3.0.gain", "b2": "features.3.0.bias",
             "fc_w": "head.2.weight", "fc_b": "head.2.bias",
             "fb_w": "feedback.1.weight", "fb_b": "feedback.1.bias"}
    params = dict(net.named_parameters())
    assert sorted(params) == sorted(names.values())
    grads = {}
    for detach in (False, True):
        p = {k: params[v].detach().clone().requires_grad_() for k, v in names.items()}
        unrolled_tiny_vggf(p, x, y, T, cfg, net.features[1][0].scale, detach).backward()
        grads[detach] = {k: t.grad for k, t in p.items()}
    for k, v in names.items():
        torch.testing.assert_close(params[v].grad, grads[False][k], rtol=1e-10, atol=1e-12)
    fb = params["feedback.1.weight"].grad
    assert fb.abs().sum() > 0
    # the gradient flows back through the feedback across steps: cutting it changes the result
    assert not torch.allclose(fb, grads[True]["fb_w"])


def test_vgg11f_ws_ottt_a_feedback_gradient_is_error_times_trace():
    """OTTT_A: dW_fb = sum_t g[t] (x) a[t], g[t] the first layer's input error at step t and
    a[t] = lambda_1 a[t-1] + Upsample(f[t-1]) with lambda_1 the first layer's leak."""
    T = 4
    net = tiny_vggf(leak=0.8)
    lif1 = net.features[0]
    lif1.config = dataclasses.replace(lif1.config, leak=0.5)  # postsynaptic leak != the others'
    leaks = dict((id(m), post.leak_value()) for m, post in traced_synapses(net))
    assert leaks[id(net.fb_conv)] == 0.5 and leaks[id(net.features[3][0])] == 0.8
    assert id(net.conv1[0]) not in leaks  # the input conv sees the image: plain, as in the paper
    x, y = tiny_input()
    rec = {"x": [], "g": []}

    def hook(mod, inp, out):
        assert not inp[0].requires_grad  # the delayed features are detached between steps
        rec["x"].append(inp[0].clone())
        out.register_hook(lambda g: rec["g"].append(g.clone()))

    h = net.fb_conv.register_forward_hook(hook)
    loss, out = STRATEGIES.build("ottt_a", T=T).train_step(net, x, y)
    h.remove()
    assert torch.isfinite(loss) and out.shape == (T, 2, 3)
    assert len(rec["x"]) == len(rec["g"]) == T
    assert not rec["x"][0].any()  # step 0 sees the network at rest
    w = net.fb_conv.weight
    a, expected = torch.zeros_like(rec["x"][0]), torch.zeros_like(w)
    for xi, g in zip(rec["x"], rec["g"]):
        a = 0.5 * a + xi
        expected += torch.nn.grad.conv2d_weight(a, w.shape, g, padding=1)
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    torch.testing.assert_close(w.grad, expected, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(net.fb_conv.bias.grad, sum(g.sum((0, 2, 3)) for g in rec["g"]))


@pytest.mark.parametrize("strategy", ["bptt", "ottt_a", "ottt_o", "dsr", "ide"])
def test_vgg11f_ws_strategies(strategy):
    net = MODELS.build("vgg11f_ws", neuron=NeuronConfig(threshold=0.5, leak=0.8, trainable_threshold=True),
                       **TINY_F)
    strat = STRATEGIES.build(strategy, T=3)
    if strategy in ("dsr", "ide"):
        with pytest.raises(ValueError, match=rf"'{strategy}' cannot train model SpikingVGG11FWS "
                           r"\(kind 'recurrent'\).*\['bptt', 'ottt_a', 'ottt_o', 'sltt'\]"):
            strat.check_model(net)
        return
    strat.check_model(net)
    torch.manual_seed(0)
    x, y = torch.randn(3, 3, 8, 8) * 2, torch.tensor([0, 2, 1])
    _, out = strat.train_step(net, x, y)
    assert out.shape == (3, 3, 3)
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert net.fb_conv.weight.grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        assert strat.forward(net, x).shape == (3, 3, 3)


@pytest.mark.parametrize("strategy", ["bptt", "ottt_a"])
def test_vgg11f_ws_under_autocast(strategy):
    net = MODELS.build("vgg11f_ws", neuron=NeuronConfig(trainable_threshold=True), **TINY_F)
    assert_autocast_step(net, strategy, torch.randn(2, 3, 8, 8))
