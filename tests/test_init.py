"""Every registered model starts as its official code starts it (``lightning_snn/models/init.py``).

The formulas are written out here from the official files (not read from our rules' code):
kaiming normal, std = sqrt(2 / fan) with fan_in = shape[1] x kernel area and fan_out = shape[0] x
kernel area (``torch.nn.init``'s convention, which the official code calls); N(0, 0.01);
PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)); IDE's unit rows. Zeros and ones are checked
exactly; a random layer's sample mean and std are checked within 5 standard errors, from the
number of weights n:

- normal N(0, s^2): SE(mean) = s / sqrt(n), SE(sample std) = s / sqrt(2 n);
- uniform U(-b, b) (std b / sqrt(3)): SE(mean) = b / sqrt(3 n), SE(sample std) = b / sqrt(15 n)
  (var of the sample variance (mu4 - sigma^4) / n = 4 b^4 / (45 n), divided by 2 sigma).

At fan-in 27 vs fan-out 576 (a first conv) the two kaiming stds differ 4.6x; N(0, 0.01) and the
default U(+-1/sqrt(512)) (std 0.0255) differ 2.5x: far outside these bands at the full sizes.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lightning_snn.nir.importer  # noqa: F401  (registers the "nir" model, built from a file)
from lightning_snn.models import MODELS
from lightning_snn.models.init import Initialisation

# every registered model, full size: (input shape, classes, network args); a model registered
# later fails test_every_registered_model_is_listed until it is added here
BUILD = {
    "mlp": ((1, 28, 28), 10, {}),
    "convnet": ((1, 28, 28), 10, {}),
    "vgg11": ((3, 32, 32), 10, {}),
    "vgg11_dvs": ((2, 48, 48), 10, {}),
    "vgg11_ws": ((3, 32, 32), 10, {}),
    "vgg11f_ws": ((3, 32, 32), 10, {}),
    "preact_resnet18": ((3, 32, 32), 10, {}),
    "resnet18": ((3, 224, 224), 1000, {}),
    "resnet34": ((3, 224, 224), 1000, {}),
    "nf_resnet34": ((3, 224, 224), 1000, {}),
    "nf_resnet50": ((3, 224, 224), 1000, {}),
    "nf_resnet101": ((3, 224, 224), 1000, {}),
    "proxy_convnet": ((1, 28, 28), 10, {}),
    "proxy_fmnist": ((1, 28, 28), 10, {}),
    "f_mlp": ((1, 28, 28), 10, {}),
    "f_conv": ((1, 28, 28), 10, {}),
    "multilayer_f": ((3, 32, 32), 10, {"channels": (32, 64, 64, 64, 32)}),
    "alexnet_f": ((3, 32, 32), 10, {"batch_norm": False, "feedback_init_scale": 0.1}),
    "cifarnet_f": ((3, 32, 32), 100, {}),
    "lenet_zero": ((1, 28, 28), 10, {}),
    "r_mlp": ((1, 28, 28), 10, {}),
    "nir": None,  # built from a file: test_nir_model_keeps_the_files_weights
}
# the source each model's declaration must name (the official file, read for this table)
SOURCES = {
    "mlp": "none", "convnet": "none",
    "vgg11": "qymeng94/SLTT models/spiking_vgg_bn.py",
    "vgg11_dvs": "qymeng94/DSR cifar/modules/vgg.py",
    "vgg11_ws": "pkuxmq/OTTT-SNN models/spiking_vgg.py", "vgg11f_ws": "pkuxmq/OTTT-SNN models/spiking_vgg.py",
    "preact_resnet18": "qymeng94/DSR cifar/modules/preresnet.py",
    "resnet18": "qymeng94/DSR imagenet/preresnet_snn.py", "resnet34": "qymeng94/DSR imagenet/preresnet_snn.py",
    "nf_resnet34": "pkuxmq/OTTT-SNN models/spiking_resnet_imagenet.py",
    "nf_resnet50": "qymeng94/SLTT models/spiking_resnet_imagenet.py",
    "nf_resnet101": "qymeng94/SLTT models/spiking_resnet_imagenet.py",
    "proxy_convnet": "SRKH/ProxyLearning", "proxy_fmnist": "SRKH/ProxyLearning",
    "f_mlp": "pkuxmq/IDE-FSNN modules/snn_modules.py", "f_conv": "pkuxmq/IDE-FSNN modules/snn_modules.py",
    "multilayer_f": "pkuxmq/IDE-FSNN modules/snn_modules.py", "alexnet_f": "pkuxmq/IDE-FSNN modules/snn_modules.py",
    "cifarnet_f": "pkuxmq/IDE-FSNN modules/snn_modules.py",
    "lenet_zero": "pkuxmq/SPIDE-FSNN models/snn_spide_mnist_lenet.py",
    "r_mlp": "pkuxmq/IDE-FSNN modules/snn_modules.py",
}


def fans(w: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) as torch.nn.init computes them: dims 1 and 0 times the kernel area."""
    area = w[0][0].numel() if w.dim() > 2 else 1
    return w.shape[1] * area, w.shape[0] * area


def check_normal(name: str, p: torch.Tensor, std: float) -> None:
    n = p.numel()
    mean, s = float(p.mean()), float(p.std())
    assert abs(mean) < 5 * std / math.sqrt(n), f"{name}: mean {mean:.3g}, expected 0 (std {std:.3g}, n {n})"
    assert abs(s - std) < 5 * std / math.sqrt(2 * n), f"{name}: std {s:.4g}, expected {std:.4g} (n {n})"


def check_uniform(name: str, p: torch.Tensor, bound: float) -> None:
    n = p.numel()
    mean, s = float(p.mean()), float(p.std())
    assert float(p.abs().max()) <= bound, f"{name}: |w| above the bound {bound:.3g}"
    assert abs(mean) < 5 * bound / math.sqrt(3 * n), f"{name}: mean {mean:.3g} (bound {bound:.3g}, n {n})"
    assert abs(s - bound / math.sqrt(3)) < 5 * bound / math.sqrt(15 * n), \
        f"{name}: std {s:.4g}, expected {bound / math.sqrt(3):.4g} (U(+-{bound:.3g}), n {n})"


def check_parameter(model: nn.Module, name: str, m: nn.Module, p: torch.Tensor, rule) -> str:
    """Check one parameter against its declared rule; returns the rule's kind."""
    p = p.detach().double()
    if rule.kind == "constant":
        assert torch.all(p == rule.value), f"{name}: expected all {rule.value}"
    elif rule.kind in ("kaiming_normal", "normal"):
        fan_in, fan_out = fans(p)
        std = rule.value if rule.kind == "normal" else math.sqrt(2.0 / (fan_out if rule.mode == "fan_out" else fan_in))
        check_normal(name, p, std)
    elif rule.kind == "pytorch_default":
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert torch.all(p == (1.0 if name.endswith("weight") else 0.0)), name
        else:
            fan_in, _ = fans(m.weight)
            check_uniform(name, p, 1.0 / math.sqrt(fan_in))
    elif rule.kind == "unit_rows":
        rows = (p.transpose(0, 1) if isinstance(m, nn.ConvTranspose2d) else p).flatten(1)
        torch.testing.assert_close(rows.norm(dim=1), torch.full((rows.shape[0],), rule.value, dtype=p.dtype),
                                   rtol=1e-5, atol=0.0, msg=f"{name}: rows not of norm {rule.value}")
        if rows.numel() >= 10_000:  # unit-norm rows of uniforms: entries' kurtosis 1.8 (a normal's: 3)
            z = rows / rows.norm(dim=1, keepdim=True)
            assert abs(float((z**4).mean() / (z**2).mean() ** 2) - 1.8) < 0.15, name
    elif rule.kind == "given":
        pass  # checked per model below (the feedback gain) or from the file (nir)
    else:  # pragma: no cover
        raise AssertionError(f"{name}: unknown rule {rule}")
    return rule.kind


def test_every_registered_model_is_listed():
    assert sorted(MODELS.names()) == sorted(BUILD), "add the new model to BUILD and SOURCES (and declare its init)"


@pytest.mark.parametrize("name", [n for n in BUILD if BUILD[n] is not None])
def test_model_starts_as_its_official_code(name):
    torch.manual_seed(0)
    shape, classes, kwargs = BUILD[name]
    net = MODELS.get(name)(shape, classes, **kwargs)
    init = net.initialisation
    assert isinstance(init, Initialisation), f"{name} declares no initialisation (lightning_snn/models/init.py)"
    assert SOURCES[name] in init.source, (name, init.source)
    kinds = []
    for pname, m, p, rule in init.parameters(net):
        assert rule is not None, f"{name}: no rule for {pname}"
        kinds.append(check_parameter(net, f"{name}.{pname}", m, p, rule))
    assert kinds, name
    fb = getattr(net, "feedback", None)
    if hasattr(fb, "reset_estimate"):  # IDE: the restriction's gain is min(sigma(W_init), range)
        sigma = float(torch.linalg.matrix_norm(fb._matrix(fb.op.weight.detach()).double(), ord=2))
        # sigma by 100 power iterations: from below, within 1 % for these spectra
        gain = float(fb.gain.detach())
        assert min(sigma, fb.norm_range) * 0.99 <= gain <= min(sigma, fb.norm_range) * (1 + 1e-5), (gain, sigma)


def test_the_official_zeros_and_random_layers_where_the_papers_put_them():
    """Spot checks of the declarations against the official files, layer by layer."""
    torch.manual_seed(0)
    vgg = MODELS.get("vgg11_ws")((3, 32, 32), 10)
    fc = vgg.layers[-1][-1]
    check_normal("vgg11_ws read-out", fc.weight.detach(), 0.01)  # not PyTorch's U(+-1/sqrt(512))
    assert torch.all(fc.bias == 0)
    conv1 = vgg.layers[0][0]
    check_normal("vgg11_ws conv1", conv1.weight.detach(), math.sqrt(2 / (64 * 9)))  # fan_out, not fan_in 27
    vggf = MODELS.get("vgg11f_ws")((3, 32, 32), 10)
    assert torch.all(vggf.fb_conv.weight == 0) and torch.all(vggf.fb_conv.bias == 0)
    nf = MODELS.get("nf_resnet34")((3, 64, 64), 10, width=0.25)
    head = nf.head[-1][-1]
    assert torch.all(head.weight == 0)
    check_uniform("nf_resnet34 fc bias", head.bias.detach(), 1 / math.sqrt(head.in_features))  # official: default
    assert all(float(b.skipinit_gain) == 0 for b in nf.blocks)
    spide = MODELS.get("alexnet_f")((3, 32, 32), 10, feedback_init_scale=0.1)
    rows = spide.feedback.op.weight.detach().transpose(0, 1).flatten(1)  # out units along dim 1
    torch.testing.assert_close(rows.norm(dim=1), torch.full((rows.shape[0],), 0.1))
    lenet = MODELS.get("lenet_zero")((1, 28, 28), 10)
    check_normal("lenet conv1", lenet.input[0].weight.detach(), math.sqrt(2 / 25))  # kaiming fan_in 1*5*5


def test_nir_model_keeps_the_files_weights(tmp_path):
    from lightning_snn.nir.export import to_nir, write_nir

    torch.manual_seed(0)
    src = MODELS.get("mlp")((1, 4, 4), 3, hidden=(5,), batch_norm=False).eval()
    path = write_nir(to_nir(src, (1, 4, 4)), tmp_path / "m.nir")
    net = MODELS.get("nir")((1, 4, 4), 3, path=str(path))
    assert "file" in net.initialisation.source
    theirs = sorted(float(v) for v in torch.cat([p.detach().flatten() for p in src.parameters()]))
    ours = sorted(float(v) for v in torch.cat([p.detach().flatten() for p in net.parameters()]))
    assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-7)
