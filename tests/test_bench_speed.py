"""bench/speed.py: the SpikingJelly twin computes the same loss and gradients as the lightning-snn
network (so the timings compare the same work), a twin that differs is caught before any timing,
and one small run writes its JSON and table. SpikingJelly is a bench-only extra
(bench/requirements.txt): without it these tests are skipped."""

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from procs import require

require("spikingjelly.activation_based")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import speed  # noqa: E402
from sj_models import to_spikingjelly  # noqa: E402

from lightning_snn.models import MODELS  # noqa: E402
from lightning_snn.neurons import NeuronConfig  # noqa: E402


@pytest.mark.parametrize("network", ["vgg11", "resnet18"])
def test_spikingjelly_twin_has_the_same_loss_and_gradients(network):
    torch.manual_seed(0)
    net = MODELS.build(network, input_shape=(3, 32, 32), num_classes=10, width=0.0625,
                       neuron=NeuronConfig(surrogate_alpha=4.0)).double()
    twin = to_spikingjelly(net)
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64) * 2
    y = torch.tensor([0, 3, 7])
    T = 3
    losses, grads = [], []
    for model, inp in ((net, x.unsqueeze(0).expand(T, *x.shape)), (twin, x.unsqueeze(0).repeat(T, 1, 1, 1, 1))):
        loss = F.cross_entropy(model(inp).mean(0), y)
        params = [p for p in model.parameters() if p.requires_grad]
        losses.append(loss.detach())
        grads.append(torch.autograd.grad(loss, params))
    assert len(grads[0]) == len(grads[1])
    # float64, same operations up to summation order: agreement to ~1e-12 relative
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-10, atol=1e-12)
    for ga, gb in zip(*grads):
        assert ga.shape == gb.shape
        torch.testing.assert_close(ga, gb, rtol=1e-8, atol=1e-10 * gb.abs().max().item() + 1e-14)
    assert any(g.abs().sum() > 0 for g in grads[0])  # spikes reached the loss


def test_a_twin_that_differs_is_caught_before_timing():
    args = argparse.Namespace(backend=None, width=0.0625, device=torch.device("cpu"))
    module = speed.build_module(args, "vgg11", "bptt", 2)
    twin = to_spikingjelly(module.net)
    for m in twin.modules():  # another surrogate width: same spikes, other gradients
        if hasattr(m, "surrogate_function"):
            m.surrogate_function.alpha = 2.0
    x = torch.rand(2, 3, 32, 32) * 2
    y = torch.tensor([1, 2])
    with pytest.raises(AssertionError, match="disagree"):
        speed.check_equal(speed.lsnn_runner(module, "bptt"), speed.sj_runner(twin, 2), x, y)


def test_speed_writes_json_and_table(tmp_path):
    res = speed.main(["--networks", "vgg11", "--T", "2", "--batch", "2", "--width", "0.0625",
                      "--precisions", "fp32", "--modes", "eager", "--strategies", "dsr",
                      "--warmup", "1", "--iters", "1", "--repeats", "2", "--device", "cpu",
                      "--out", str(tmp_path)])
    data = json.loads((tmp_path / "speed.json").read_text())
    assert data["rows"] == res["rows"] and not data["errors"]
    frameworks = {(r["strategy"], r["framework"]) for r in data["rows"]}
    assert frameworks == {("bptt", "lightning-snn"), ("bptt", "spikingjelly"), ("dsr", "lightning-snn")}
    for r in data["rows"]:
        assert r["images_per_s"] > 0 and len(r["ms_runs"]) == 2 and r["peak_mib"] > 0
    table = (tmp_path / "speed.md").read_text()
    assert "| vgg11 | fp32 | eager | 2 |" in table and "| dsr | vgg11 | fp32 | 2 |" in table


def test_bad_sizes_are_rejected_by_name(tmp_path, capsys):
    with pytest.raises(SystemExit):
        speed.main(["--T", "0", "--out", str(tmp_path)])
    assert "T=[0]" in capsys.readouterr().err
    assert not (tmp_path / "speed.json").exists()
