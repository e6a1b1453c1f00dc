"""``report --convention neurobench`` against NeuroBench 2.3.0 itself (pinned in
tests/requirements.txt; under LIGHTNING_SNN_CI a missing NeuroBench fails, never skips).

NeuroBench runs on the network exported to NIR and read by snnTorch (``readers.read_snntorch``),
one time step at a time, the static image given at each of the T steps: its own hooks, its own
counting (``Effective_MACs``, ``Effective_ACs``, ``Dense``, ``ActivationSparsity``,
``ClassificationAccuracy``); ``Footprint`` and ``ConnectionSparsity`` are its static metrics on
our network. The exported network has its batch norms folded into the weights, a float32
round-off that can flip a spike whose potential lies within a few ulps of the threshold. Every
such flip is counted here (our spikes against snnTorch's, step by step) and bounds the
disagreement it can cause (:func:`_bounds`); with no flip, every count must agree to the
operation. Footprint, dense operations and connection sparsity do not depend on spikes.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from procs import require
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_snn.cli import main
from lightning_snn.commands import _test_images, load_weights
from lightning_snn.data import VisionDataModule
from lightning_snn.energy import SpikeEnergyReport
from lightning_snn.module import SNNModule
from lightning_snn.nir import readers
from lightning_snn.nir.export import to_nir
from lightning_snn.nir.verify import record_spikes

require("neurobench")
from neurobench.benchmarks import Benchmark  # noqa: E402
from neurobench.metrics.static import ConnectionSparsity, Footprint  # noqa: E402
from neurobench.metrics.workload import ActivationSparsity, ClassificationAccuracy, SynapticOperations  # noqa: E402
from neurobench.models import SNNTorchModel, TorchModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# NeuroBench rounds ConnectionSparsity to 4 decimals: half a unit of the last one
CONNECTION_SPARSITY_ROUNDING = 0.5e-4
# its ActivationSparsity is a batch-size-weighted mean of per-batch ratios: a few float64 ulps per batch
FLOAT64_SUM = 1e-12
# its ClassificationAccuracy per batch is a float32 mean of 0 / 1 (exact sum, one rounding of the
# division: half an ulp of a value below 1, 2^-25), then weighted by batch size in float64
FLOAT32_MEAN = 2.0**-25
LAYERS = 4  # connection layers of the largest model here


class _Steps(nn.Module):
    """The snnTorch graph run over ``[B, T, ...]`` from rest, one step at a time -> ``[T, B, classes]``."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, x: Tensor) -> Tensor:
        for cell in readers.spiking_layers(self.graph, "snntorch").values():
            cell.reset_mem()
        state, ys = None, []
        for t in range(x.shape[1]):
            y, state = self.graph(x[:, t], state)
            ys.append(y)
        return torch.stack(ys)


def _neurobench(net: nn.Module, x: Tensor, y: Tensor, T: int, batch: int) -> tuple[dict, dict]:
    """NeuroBench's results on the exported ``net`` and our spikes against snnTorch's."""
    shape = tuple(x.shape[1:])
    model = readers.read_snntorch(to_nir(net, shape))
    bench = Benchmark(SNNTorchModel(_Steps(model), custom_forward=True),
                      DataLoader(TensorDataset(x.unsqueeze(1).expand(len(x), T, *shape), y), batch_size=batch),
                      [], [lambda out: out.sum(1).argmax(-1)],  # [B, T, classes]: the class of the summed output
                      [[], [ClassificationAccuracy, ActivationSparsity, SynapticOperations]])
    res = bench.run(quiet=True)
    res["Footprint"] = Footprint()(TorchModel(net))
    res["ConnectionSparsity"] = ConnectionSparsity()(TorchModel(net))
    seq = x.unsqueeze(0).expand(T, *x.shape)
    out_ours, ours = record_spikes(net, seq)
    out_theirs, theirs = readers.run(model, seq, "snntorch")
    flips = {n: (ours[n] != theirs[n].reshape(ours[n].shape)) for n in ours}
    return res, {"flips": flips, "ours": ours}


def _report(module: SNNModule, x: Tensor, y: Tensor, out: Path, convention: str, batch: int) -> SpikeEnergyReport:
    cb = SpikeEnergyReport(out_dir=str(out), convention=convention)
    pl.Trainer(logger=False, callbacks=[cb], enable_progress_bar=False, enable_model_summary=False,
               accelerator="cpu").test(module, DataLoader(TensorDataset(x, y), batch_size=batch), verbose=False)
    return cb


def _max_fan_out(net: nn.Module) -> int:
    """The most synapses one input element of any connection layer drives (a bound on what one
    spike, or one pooled value, adds to the operation counts)."""
    worst = 0
    for m in net.modules():
        if isinstance(m, nn.Linear):
            worst = max(worst, m.out_features)
        elif isinstance(m, nn.Conv2d):
            worst = max(worst, m.out_channels * m.kernel_size[0] * m.kernel_size[1])
    return worst


def _bounds(net: nn.Module, check: dict, samples: int, batches: int) -> dict[str, float]:
    """What the flipped spikes can change. m flips (over every layer and step, cascades included)
    change the spike count by at most m, so activation sparsity by m / (neurons x T x samples); a
    flip changes one input of the next connection layer (a spike, or a pooled value's being
    nonzero), so the ACs + MACs by at most its fan-out: m x max fan-out over all samples; accuracy
    by the fraction of samples with any flip."""
    flips = check["flips"]
    m = sum(int(f.sum()) for f in flips.values())
    cells = sum(f.numel() for f in flips.values())
    touched = torch.zeros(samples, dtype=torch.bool)
    for f in flips.values():
        touched |= f.reshape(f.shape[0], samples, -1).any(2).any(0)
    return {"flips": m, "sparsity": m / cells + FLOAT64_SUM, "ops": m * _max_fan_out(net) / samples,
            "accuracy": float(touched.sum()) / samples + batches * FLOAT32_MEAN}


def _agree(t: dict[str, float], res: dict, bound: dict[str, float]) -> None:
    """The report's totals ``t`` against NeuroBench's results, within what flips and rounding allow."""
    ops = res["SynapticOperations"]
    assert t["accuracy"] == pytest.approx(res["ClassificationAccuracy"], abs=bound["accuracy"])
    assert t["activation_sparsity"] == pytest.approx(res["ActivationSparsity"], abs=bound["sparsity"])
    # the report sums per-layer quotients (count / samples), NeuroBench divides the sum: one
    # float64 rounding per layer apart
    per_layer = LAYERS * 2.0**-53
    assert t["sops"] == pytest.approx(ops["Effective_ACs"], rel=per_layer, abs=bound["ops"])
    assert t["snn_macs"] == pytest.approx(ops["Effective_MACs"], rel=per_layer, abs=bound["ops"])
    assert t["dense"] == ops["Dense"]  # integers / samples, computed the same way: no round-off
    assert t["footprint_bytes"] == res["Footprint"]
    assert t["connection_sparsity"] == pytest.approx(res["ConnectionSparsity"], abs=CONNECTION_SPARSITY_ROUNDING)


def _fashion_mnist(n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` Fashion-MNIST test images, normalised as the data module does."""
    return _test_images(VisionDataModule("fashion_mnist", root=str(ROOT / "data"), eval_batch_size=n,
                                         num_workers=0), n)


def test_readme_model_agrees_with_neurobench(shared_mlp_checkpoint, tmp_path: Path) -> None:
    """``report --convention neurobench`` on the README config's MLP (784-512-10, IF, T = 4, its
    batch norm folded in the export) equals NeuroBench on the same images; the project convention
    counts the input layer's 784 x 512 MACs once, NeuroBench at each of the 4 steps."""
    config = str(ROOT / "configs" / "fmnist_mlp_bptt.yaml")
    ckpt = shared_mlp_checkpoint(512)
    common = ["--config", config, "--ckpt_path", str(ckpt), f"--data.root={ROOT / 'data'}", "--data.num_workers=0",
              "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--data.eval_batch_size=32",
              "--trainer.limit_test_batches=2", "--trainer.logger=false"]
    main(["report", *common, "--convention", "neurobench", "--out_dir", str(tmp_path / "nb"),
          f"--trainer.default_root_dir={tmp_path / 'nb'}"])
    with open(tmp_path / "nb" / "spike_report.csv") as f:
        nb_rows = {(r["layer"], r["kind"]): r for r in csv.DictReader(f)}
    main(["report", *common, "--out_dir", str(tmp_path / "project"),
          f"--trainer.default_root_dir={tmp_path / 'project'}"])
    with open(tmp_path / "project" / "spike_report.csv") as f:
        pr_rows = {(r["layer"], r["kind"]): r for r in csv.DictReader(f)}
    assert {r["convention"] for r in nb_rows.values()} == {"neurobench"}
    assert {r["convention"] for r in pr_rows.values()} == {"project"}

    x, y = _fashion_mnist(64)  # the two test batches of 32 the report ran on
    # the config's model (784-512-10, IF, T = 4) with the checkpoint's weights
    module = SNNModule("mlp", num_classes=10, input_shape=(1, 28, 28), T=4, network_args={"hidden": [512]})
    load_weights(module, str(ckpt))
    module.eval()
    res, check = _neurobench(module.net, x, y, 4, 32)
    bound = _bounds(module.net, check, len(x), 2)
    total = nb_rows[("total_snn", "snn")]
    totals = {k: float(total[k]) for k in ("accuracy", "activation_sparsity", "sops", "dense",
                                           "footprint_bytes", "connection_sparsity")}
    totals["snn_macs"] = float(total["macs"])
    _agree(totals, res, bound)
    print(f"README MLP: {bound['flips']} flipped spikes; NeuroBench {res}")

    # the documented difference: input MACs once (project) vs at every step (neurobench, NeuroBench);
    # the hidden layer's spikes into the read-out are ACs in both, spike for spike
    input_macs = float(pr_rows[("layers_0_1", "analogue-input")]["macs"])
    assert input_macs == 784 * 512 and float(nb_rows[("layers_0_1", "synaptic")]["macs"]) == 4 * input_macs
    assert float(nb_rows[("layers_2_0", "synaptic")]["sops"]) == float(pr_rows[("layers_1", "spiking")]["sops"])
    assert float(pr_rows[("total_snn", "snn")]["macs"]) * 4 == float(total["macs"])
    assert float(total["sops"]) > 0


def test_conv_model_agrees_with_neurobench(tmp_path: Path) -> None:
    """A conv SNN (conv-BN-IF, 2x2 average pool, conv-BN-IF, FC-BN-IF, read-out; T = 4) on real
    Fashion-MNIST images, batch norms with non-trivial statistics (folded in the export):
    ``--convention neurobench`` agrees with NeuroBench; the project convention counts the first
    layer's spikes through the pool as ACs (spikes x fan-out), NeuroBench the pooled rates' MACs."""
    torch.manual_seed(0)
    T = 4
    module = SNNModule("convnet", num_classes=10, input_shape=(1, 28, 28), T=T,
                       network_args={"channels": [4, "M", 8], "hidden": 24})
    g = torch.Generator().manual_seed(1)
    for m in module.net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(1.0 + 0.5 * torch.rand(n, generator=g))
            m.bias.data.copy_(0.6 * torch.rand(n, generator=g))
        if isinstance(m, (nn.Conv2d, nn.Linear)):  # a third of the synapses pruned: zero weights
            m.weight.data.mul_((torch.rand(m.weight.shape, generator=g) > 1 / 3).float())
    module.eval()
    x, y = _fashion_mnist(24)
    nb = _report(module, x, y, tmp_path / "nb", "neurobench", 8)
    pr = _report(module, x, y, tmp_path / "project", "project", 8)
    res, check = _neurobench(module.net, x, y, T, 8)
    bound = _bounds(module.net, check, len(x), 3)
    print(f"conv model: {bound['flips']} flipped spikes; NeuroBench {res}")
    _agree(nb.totals, res, bound)
    assert all(int(s.sum()) > 0 for s in check["ours"].values()), "every spiking layer fires"

    rows = {r.layer: r for r in nb.rows}
    prow = {r.layer: r for r in pr.rows}
    # the input layer: every pixel of a normalised image is nonzero, so its MACs are x T exactly
    assert rows["layers_0_0"].macs == T * prow["layers_0_0"].macs and rows["layers_0_0"].sops == 0
    # after the pool: MACs on the nonzero pooled values, at most (one per spike) the project's ACs
    assert rows["layers_3_0"].sops == 0 and 0 < rows["layers_3_0"].macs <= prow["layers_1"].sops
    # spikes straight into a connection layer: ACs, spike for spike, in both conventions
    assert rows["layers_5_1"].sops == prow["layers_4"].sops > 0
    assert rows["layers_7_0"].sops == prow["layers_6"].sops > 0
    assert nb.totals["activation_sparsity"] == pr.totals["activation_sparsity"]
    # pruned weights: effective operations skip them, dense operations count every weight
    assert 0.3 < nb.totals["connection_sparsity"] < 0.37
    assert nb.totals["sops"] + nb.totals["snn_macs"] < nb.totals["dense"]
    with open(tmp_path / "nb" / "spike_report.csv") as f:
        table = list(csv.DictReader(f))
    assert {r["convention"] for r in table} == {"neurobench"}
    assert "neurobench convention" in nb.title and "project convention" in pr.title
    assert (tmp_path / "nb" / "spike_report.png").stat().st_size > 1000


def test_unknown_convention_and_feedback_networks_are_refused(tmp_path: Path) -> None:
    """An unknown convention is one line naming the valid ones; a feedback network (IDE's f_mlp,
    whose feedback weight is no connection module NeuroBench hooks) is refused under the
    neurobench convention instead of being counted in part."""
    with pytest.raises(ValueError, match="convention must be one of project, neurobench, got 'nb'"):
        SpikeEnergyReport(convention="nb")
    module = SNNModule("f_mlp", num_classes=3, input_shape=(1, 4, 4), T=4, strategy="ide")
    with pytest.raises(ValueError, match="counts feed-forward networks; .* is feedback"):
        _report(module, torch.rand(2, 1, 4, 4), torch.zeros(2, dtype=torch.long), tmp_path, "neurobench", 2)
