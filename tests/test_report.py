"""Spike / SOP / energy report: counts equal a hand count on tiny nets; the ``export`` and
``report`` commands from a config and a checkpoint (table, CSV, PNG, W&B offline run)."""

from __future__ import annotations

import csv
from pathlib import Path

import nir
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset
from wandb_offline import history, wait_until_written

from lightning_snn.checkpoints import CheckpointError
from lightning_snn.cli import main
from lightning_snn.module import SNNModule
from lightning_snn.energy import E_AC_PJ, E_MAC_PJ, SpikeEnergyReport

ROOT = Path(__file__).resolve().parents[1]


def _run_report(module: SNNModule, x: torch.Tensor, out: Path) -> SpikeEnergyReport:
    cb = SpikeEnergyReport(out_dir=str(out))
    data = DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=2)
    pl.Trainer(logger=False, callbacks=[cb], enable_progress_bar=False, enable_model_summary=False,
               accelerator="cpu").test(module, data, verbose=False)
    return cb


def test_mlp_counts_equal_a_hand_count(tmp_path: Path) -> None:
    """4 inputs -> 3 IF neurons (bias 1.5 / 0 / 0.5, zero input) -> 2 outputs, T = 4, Vth = 1.

    Spikes per sample: neuron 0 fires every step (4), neuron 1 never, neuron 2 at steps 2 and 4
    (h = 0.5, 1.0 -> fire, 0.5, 1.0 -> fire): 6 spikes, rate 6 / (3 x 4) = 0.5. Fan-out 2 (the
    read-out), so 12 SOPs. The input layer: 4 x 3 = 12 MACs, once (the static image's current is
    the same every step). ANN: 12 + 3 x 2 = 18 MACs.
    """
    module = SNNModule("mlp", num_classes=2, input_shape=(1, 2, 2), T=4,
                       network_args={"hidden": [3], "batch_norm": False})
    fc1, fc2 = module.net.layers[0][1], module.net.layers[2][0]
    with torch.no_grad():
        fc1.weight.fill_(1.0)
        fc1.bias.copy_(torch.tensor([1.5, 0.0, 0.5]))
        fc2.weight.fill_(0.5)
    cb = _run_report(module, torch.zeros(5, 1, 2, 2), tmp_path)
    rows = {r.layer: r for r in cb.rows}
    assert set(rows) == {"layers_0_1", "layers_1"}
    spk = rows["layers_1"]
    assert spk.spikes == pytest.approx(6.0) and spk.rate == pytest.approx(0.5)
    assert spk.fan_out == pytest.approx(2.0) and spk.sops == pytest.approx(12.0)
    assert rows["layers_0_1"].macs == pytest.approx(12.0)
    t = cb.totals
    assert t["samples"] == 5 and t["ann_macs"] == pytest.approx(18.0)
    assert t["snn_energy_pj"] == pytest.approx(12 * E_MAC_PJ + 12 * E_AC_PJ)
    assert t["ann_energy_pj"] == pytest.approx(18 * E_MAC_PJ)
    with open(tmp_path / "spike_report.csv") as f:
        table = {r["layer"]: r for r in csv.DictReader(f)}
    assert float(table["layers_1"]["sops"]) == pytest.approx(12.0)
    assert float(table["total_ann"]["macs"]) == pytest.approx(18.0)
    assert (tmp_path / "spike_report.png").stat().st_size > 1000


def test_spike_totals_past_float32_are_exact_integers(tmp_path: Path) -> None:
    """4,097 IF neurons with bias 1.5 and zero input fire at every one of T = 5 steps, over 821
    samples: 4,097 x 5 x 821 = 16,818,185 spikes, odd and above 2^24 = 16,777,216, the largest
    range where float32 holds every integer (a float32 total reads 16,818,184). The report's total
    and the firing-rate monitor's per-layer count equal the exact integer."""
    from lightning_snn.callbacks import FiringRateMonitor

    H, T, S = 4097, 5, 821
    exact = H * T * S
    assert exact > 2**24 and float(torch.tensor(float(exact), dtype=torch.float32)) != exact
    module = SNNModule("mlp", num_classes=2, input_shape=(1, 1, 1), T=T,
                       network_args={"hidden": [H], "batch_norm": False})
    fc1 = module.net.layers[0][1]
    with torch.no_grad():
        fc1.weight.zero_()
        fc1.bias.fill_(1.5)
    report, monitor = SpikeEnergyReport(out_dir=str(tmp_path), stages=("validate",)), FiringRateMonitor(histograms=False)
    data = DataLoader(TensorDataset(torch.zeros(S, 1, 1, 1), torch.zeros(S, dtype=torch.long)), batch_size=411)
    pl.Trainer(logger=False, callbacks=[report, monitor], enable_progress_bar=False, enable_model_summary=False,
               accelerator="cpu").validate(module, data, verbose=False)
    row = next(r for r in report.rows if r.kind == "spiking")
    assert row.spike_count == exact and report.totals["spike_count"] == exact
    assert row.spikes == pytest.approx(exact / S, rel=1e-12) and row.rate == 1.0
    assert row.sops == pytest.approx(exact * 2 / S, rel=1e-12)  # fan-out 2: the read-out
    assert int(monitor._sums[0].sum()) == exact
    with open(tmp_path / "spike_report.csv") as f:
        table = {r["layer"]: r for r in csv.DictReader(f)}
    assert int(table["total_snn"]["spike_count"]) == exact


def test_conv_fan_out_counts_padding_borders(tmp_path: Path) -> None:
    """conv3x3 (pad 1) 1 -> 2 channels on 4x4 -> BN -> IF, then conv3x3 (pad 1) 2 -> 2.

    With zero input and BN shifts 1.5 / 0, channel 0 fires at every step (16 neurons x T = 4) and
    channel 1 never. A neuron's fan-out into the next conv is 2 channels x the output positions
    whose 3x3 window covers it: 4 at a corner, 6 on an edge, 9 inside, so one channel map drives
    2 x (4 x 4 + 8 x 6 + 4 x 9) = 200 synapses: SOPs = 4 steps x 200 = 800 per sample, mean
    fan-out over both channels 2 x 200 / 32 = 12.5. MACs count the same positions, no padding:
    an output's 3x3 window holds 4 real inputs at a corner, 6 on an edge, 9 inside, so one
    (input, output) channel pair does 4 x 4 + 8 x 6 + 4 x 9 = 100 (not 16 x 9 = 144): the input
    conv 2 x 100 = 200 MACs, the second conv 2 x 2 x 100 = 400 in the ANN.
    """
    module = SNNModule("convnet", num_classes=2, input_shape=(1, 4, 4), T=4,
                       network_args={"channels": [2, 2], "hidden": 3})
    conv1, bn1 = module.net.layers[0][0], module.net.layers[0][1]
    with torch.no_grad():
        conv1.weight.fill_(1.0)
        bn1.bias.copy_(torch.tensor([1.5, 0.0]))
    cb = _run_report(module, torch.zeros(3, 1, 4, 4), tmp_path)
    rows = {r.layer: r for r in cb.rows}
    assert rows["layers_0_0"].kind == "analogue-input" and rows["layers_0_0"].macs == pytest.approx(200.0)
    # ANN: both convs, the spiking FC layer (2 x 4 x 4 features -> 3) and the read-out (3 -> 2)
    assert cb.totals["ann_macs"] == pytest.approx(200 + 400 + 32 * 3 + 3 * 2)
    first = rows["layers_1"]
    assert first.spikes == pytest.approx(64.0) and first.rate == pytest.approx(0.5)
    assert first.fan_out == pytest.approx(12.5) and first.sops == pytest.approx(800.0)


@pytest.fixture()
def fmnist_ckpt(shared_mlp_checkpoint) -> Path:
    """A checkpoint of the README's first config's model (784-512-10 IF MLP), two AdamW steps."""
    return shared_mlp_checkpoint(512)


@pytest.mark.slow
def test_export_and_report_commands(fmnist_ckpt: Path, tmp_path: Path, data_root, monkeypatch) -> None:
    config = str(ROOT / "configs" / "fmnist_mlp_bptt.yaml")
    common = [f"--data.root={data_root}", "--data.num_workers=0", "--trainer.accelerator=cpu",
              "--trainer.enable_progress_bar=false"]
    out = tmp_path / "deploy" / "model.nir"
    main(["export", "--config", config, "--ckpt_path", str(fmnist_ckpt), "--out", str(out), *common])
    g = nir.read(str(out))
    assert [type(g.nodes[k]).__name__ for k in ("layers_0_0", "layers_0_1", "layers_1", "layers_2_0")] == \
        ["Flatten", "Affine", "IF", "Affine"]

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cli = main(["report", "--config", config, "--ckpt_path", str(fmnist_ckpt), "--out_dir", str(tmp_path / "rep"),
                *common, "--data.eval_batch_size=16", "--trainer.limit_test_batches=2",
                "--trainer.logger=pytorch_lightning.loggers.WandbLogger", "--trainer.logger.project=snn-tests",
                f"--trainer.logger.save_dir={tmp_path}"])
    cli.trainer.logger.experiment.finish()
    with open(tmp_path / "rep" / "spike_report.csv") as f:
        rows = {r["layer"]: r for r in csv.DictReader(f)}
    assert float(rows["layers_1"]["fan_out"]) == pytest.approx(10.0)  # 512 IF neurons -> 10 classes
    assert float(rows["layers_0_1"]["macs"]) == pytest.approx(784 * 512)
    assert float(rows["total_ann"]["macs"]) == pytest.approx(784 * 512 + 512 * 10)
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    wait_until_written(run_file)
    keys = set().union(*history(run_file))
    assert {"spike_report/table", "spike_report/chart"} <= {k.split("/_type")[0] for k in keys} | keys, sorted(keys)


def test_export_errors_leave_the_output_alone(fmnist_ckpt: Path, tmp_path: Path, data_root) -> None:
    config = str(ROOT / "configs" / "fmnist_mlp_bptt.yaml")
    out = tmp_path / "model.nir"
    out.write_bytes(b"previous")
    common = ["--config", config, f"--data.root={data_root}", "--trainer.accelerator=cpu", "--out", str(out)]
    with pytest.raises(CheckpointError, match="--ckpt_path missing.ckpt does not exist"):
        main(["export", "--ckpt_path", "missing.ckpt", *common])
    broken = torch.load(fmnist_ckpt, weights_only=False)
    del broken["state_dict"]["net.layers.2.0.weight"]
    torch.save(broken, tmp_path / "broken.ckpt")
    with pytest.raises(ValueError, match=r"does not fit the configured model: missing keys \['net.layers.2.0.weight'\]"):
        main(["export", "--ckpt_path", str(tmp_path / "broken.ckpt"), *common])
    assert out.read_bytes() == b"previous"


def test_export_file_is_readable_like_checkpoints_and_an_unwritable_out_is_named(tmp_path: Path) -> None:
    """``write_nir``: the file gets the umask's mode (0644 under umask 022), not mkstemp's 0600; a
    folder that cannot be written is one line naming ``--out``, leaving nothing behind."""
    import os
    import stat

    from lightning_snn.nir_export import to_nir, write_nir

    module = SNNModule("mlp", num_classes=2, input_shape=(1, 2, 2), T=2, network_args={"hidden": [3]})
    graph = to_nir(module.net, (1, 2, 2))
    old = os.umask(0o022)
    try:
        out = write_nir(graph, tmp_path / "model.nir")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match=r"--out '.*a_file/model.nir': cannot write in .*\(valid: a file in a writable"):
        write_nir(graph, blocker / "model.nir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "model.nir"]

def test_feedback_model_under_ide_counts_its_recurrent_synapses(tmp_path: Path) -> None:
    """F-MLP (16 inputs -> 8 IF neurons with 8 x 8 feedback -> 3 classes), T = 5, under IDE, which
    runs its neurons step by step (``LIF.step``). Zero input weights, BN shifts 1.5 / 0.5 on
    neurons 0 / 2 (0 elsewhere), and a positive feedback matrix with entries 0.1 / 8:

    neuron 0 fires at every step (5 spikes); neuron 2 integrates 0.5 + feedback >= 0, so it fires
    at steps 2 and 4 (its post-reset potential, under 2 x 5 x 0.0125, never reaches 0.5 more); the
    other six get at most 5 steps x 2 spikes x 0.0125 = 0.125 < 1 and never fire: 7 spikes per
    sample, rate 7 / (8 x 5) = 0.175. A neuron's fan-out is its feedback synapses (all 8) plus the
    read-out's 3: SOPs = 7 x 11 = 77. The input layer: 16 x 8 weights, but all are zero: 0 MACs.
    """
    module = SNNModule("f_mlp", num_classes=3, input_shape=(1, 4, 4), T=5, strategy="ide",
                       network_args={"hidden": 8})
    net = module.net
    fc, bn = net.input[0][1], net.input[1]
    with torch.no_grad():
        fc.weight.zero_()
        fc.bias.zero_()
        bn.bias.copy_(torch.tensor([1.5, 0, 0.5, 0, 0, 0, 0, 0]))
        net.feedback.op.weight.fill_(1.0)  # sigma = 8 with u = v = 1 / sqrt(8)
        net.feedback.u.fill_(8 ** -0.5)
        net.feedback.v.fill_(8 ** -0.5)
        net.feedback.gain.fill_(0.1)
    cb = _run_report(module, torch.rand(4, 1, 4, 4), tmp_path)
    (row,) = [r for r in cb.rows if r.kind == "spiking"]
    assert row.layer == "neurons_0" and row.neurons == 8 and row.fan_out == pytest.approx(8 + 3)
    assert row.spikes == pytest.approx(7.0) and row.rate == pytest.approx(0.175)
    assert row.sops == pytest.approx(77.0)
    assert cb.totals["snn_macs"] == 0.0


def test_report_title_names_the_run_and_its_energy(tmp_path: Path) -> None:
    """The chart's title: model, T, data set, counting convention and the energy per sample, SNN vs ANN."""
    from lightning_snn.energy import title

    totals = {"T": 4.0, "snn_energy_pj": 1852e3, "ann_energy_pj": 1870e3, "energy_ratio_snn_over_ann": 0.99}
    assert title(totals, "mlp", "fashion_mnist") == \
        "mlp, T = 4, fashion_mnist, project convention: 1852 nJ per sample (SNN) vs 1870 nJ (ANN), ratio 0.990"
    assert title(totals, "mlp", "fashion_mnist", "neurobench").startswith("mlp, T = 4, fashion_mnist, neurobench convention: ")
    module = SNNModule("mlp", num_classes=2, input_shape=(1, 2, 2), T=3, network_args={"hidden": [3]})
    cb = _run_report(module, torch.rand(4, 1, 2, 2), tmp_path)
    assert cb.title.startswith("mlp, T = 3, ") and "nJ per sample (SNN)" in cb.title
    assert (tmp_path / "spike_report.png").stat().st_size > 1000


class _Payload:
    """Unpickling this object would create ``marker`` (what a malicious checkpoint could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_load_weights_refuses_a_pickled_payload(fmnist_ckpt: Path, tmp_path: Path) -> None:
    """``load_weights`` (behind ``export`` / ``report``, and callable from Python) reads with
    ``weights_only=True``: a checkpoint that carries a pickled object is refused, never run."""
    from lightning_snn.commands import load_weights

    module = SNNModule("mlp", num_classes=10, input_shape=(1, 28, 28), T=4, network_args={"hidden": [512]})
    before = {k: v.clone() for k, v in module.state_dict().items()}
    ckpt = torch.load(fmnist_ckpt, weights_only=False)
    marker = tmp_path / "payload-ran"
    ckpt["extra"] = _Payload(marker)
    torch.save(ckpt, tmp_path / "payload.ckpt")
    with pytest.raises(CheckpointError, match=r"payload\.ckpt cannot be read"):
        load_weights(module, str(tmp_path / "payload.ckpt"))
    assert not marker.exists()
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())
    del ckpt["extra"]  # the same checkpoint without the payload loads
    torch.save(ckpt, tmp_path / "clean.ckpt")
    load_weights(module, str(tmp_path / "clean.ckpt"))
    assert torch.equal(module.state_dict()["net.layers.2.0.weight"], ckpt["state_dict"]["net.layers.2.0.weight"])
