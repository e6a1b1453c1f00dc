"""The memory suite: StepCost's step memory and time, ratio rows of a suite file, the ratio report,
and the synthetic inputs of the papers' shapes it trains on."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_snn.data import VisionDataModule
from lightning_snn.module import SNNModule
from lightning_snn.neurons import NeuronConfig
from lightning_snn.profiling import TensorMemoryTracker
from lightning_snn.suite.__main__ import main as suite_main
from lightning_snn.suite.memory import StepCost
from lightning_snn.suite.report import ratio_table, write_report
from lightning_snn.suite.spec import Options, load_suite

from test_suite import row, tiny, write_suite


def fit_steps(strategy: str, T: int, steps: int = 4) -> tuple[StepCost, SNNModule]:
    torch.manual_seed(0)
    module = SNNModule("mlp", num_classes=3, input_shape=(1, 8, 8), network_args={"hidden": [64]},
                       neuron=NeuronConfig(threshold=0.5, leak=0.5, detach_reset=True), strategy=strategy,
                       T=T, optimizer="sgd", lr=0.01, momentum=0.9, scheduler="constant")
    x, y = torch.randn(64, 1, 8, 8), torch.arange(64) % 3
    cost = StepCost()
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=[cost])
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=16))
    return cost, module


def test_step_cost_measures_the_second_step_and_times_the_rest():
    cost, module = fit_steps("bptt", T=4)
    r = cost.result()
    assert cost.step == 4 and len(cost.times) == 2 and r["step_s"] > 0
    assert r["step_memory_kind"].startswith("tensor storages")
    # the same step measured outside Lightning: TensorMemoryTracker around forward + backward +
    # optimiser step of the trained module on a batch of the same shape
    x, y = torch.randn(16, 1, 8, 8), torch.arange(16) % 3
    opt = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    for measured in (False, True):  # the first step makes the momentum buffers, as in the fit
        opt.zero_grad(set_to_none=True)
        with TensorMemoryTracker() as mem:
            module.strategy.train_step(module.net, x, y, module.loss)
            opt.step()
    # the same tensors up to Lightning's small bookkeeping (logged metrics, closure)
    assert mem.peak > 50_000
    assert r["step_memory_gb"] * 2**30 == pytest.approx(mem.peak, rel=0.05, abs=16 * 1024)


def test_bptt_step_memory_grows_with_T_and_ottt_does_not():
    """BPTT keeps every step's graph (memory linear in T); OTTT one step's (constant in T)."""
    mem = {(s, T): fit_steps(s, T)[0].result()["step_memory_gb"] for s in ("bptt", "ottt_a") for T in (2, 8)}
    assert mem[("bptt", 8)] > 2.5 * mem[("bptt", 2)]
    assert mem[("ottt_a", 8)] == pytest.approx(mem[("ottt_a", 2)], rel=0.1)
    assert mem[("ottt_a", 8)] < mem[("bptt", 8)] / 2


def mem_row(name, value, time=None, baseline=None, grade="single-source", **kw):
    r = row(name, overrides=["--model.strategy=bptt"], value=value, grade=grade, time=time, **kw)
    r["reference"].update(metric="step_memory_gb", protocol="measured")
    if baseline:
        r["baseline"] = baseline
    return r


def test_ratio_rows_are_checked(tmp_path, capsys):
    path = write_suite(tmp_path / "m.yaml", [mem_row("a", 3.0), mem_row("b", 1.0, baseline="c")])
    assert suite_main(["status", str(path)]) == 2
    err = capsys.readouterr().err
    assert "row 'b': baseline 'c' is not a row of the suite (valid: a)" in err and len(err.strip().splitlines()) == 1
    path = write_suite(tmp_path / "m.yaml", [mem_row("a", 3.0, baseline="a")])
    assert suite_main(["status", str(path)]) == 2
    assert "baseline must name another row" in capsys.readouterr().err


def test_report_gives_ratios_to_the_baseline_next_to_the_papers(tmp_path):
    path = write_suite(tmp_path / "mem.yaml", [
        mem_row("bptt", 3.00, 6.35), mem_row("sltt", 1.09, 4.58, baseline="bptt"),
        mem_row("big", 1.09, None, baseline="bptt", grade="primary"), mem_row("nobody", 2.0, baseline="bptt")])
    suite = load_suite(path)
    root = tmp_path / "runs"
    made = {"bptt": [(2.0, 1.0), (2.2, 1.2)], "sltt": [(0.6, 0.8), (0.66, 0.8)], "big": [(1.0, 1.0), (1.2, 1.0)]}
    for name, runs in made.items():
        for seed, (gb, s) in enumerate(runs):
            d = root / "mem" / name / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "result.json").write_text(json.dumps({
                "row": name, "seed": seed, "metric": "step_memory_gb", "protocol": "measured", "value": gb,
                "shortened": False, "device": "cpu", "devices": 1, "device_hours": 0.001,
                "step_memory_gb": gb, "step_memory_kind": "tensor storages", "step_s": s}))
    rows, runs = write_report(suite, Options(root=root))
    ratios = ratio_table(suite, runs).set_index("row")
    assert ratios.loc["sltt", "memory_ratio"] == pytest.approx(0.63 / 2.1)
    assert ratios.loc["sltt", "paper_memory_ratio"] == pytest.approx(1.09 / 3.00)
    assert ratios.loc["sltt", "time_ratio"] == pytest.approx(0.8 / 1.1)
    assert ratios.loc["sltt", "paper_time_ratio"] == pytest.approx(4.58 / 6.35)
    assert pd_isnull(ratios.loc["big", "paper_time_ratio"])
    assert ratios["verdict"].to_dict() == {"sltt": "at or below (provisional)", "big": "above (provisional)",
                                           "nobody": "not run"}
    verdicts = rows.set_index("row")["verdict"].to_dict()
    assert verdicts["bptt"] == "baseline" and verdicts["sltt"] == "at or below (provisional)"
    md = (root / "mem" / "results.md").read_text()
    assert "## Ratios to the baseline row" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| sltt") and "bptt" in ln)
    assert "0.30" in line and "0.36" in line and "0.73" in line and "0.72" in line


def pd_isnull(v) -> bool:
    import pandas as pd

    return bool(pd.isna(v))


@pytest.mark.parametrize("name, shape, classes", [
    ("synthetic_cifar10", (3, 32, 32), 10), ("synthetic_imagenet", (3, 224, 224), 1000),
    ("synthetic_cifar10_dvs", (3, 2, 48, 48), 10), ("synthetic_dvs128_gesture", (3, 2, 128, 128), 11)])
def test_synthetic_inputs_have_the_papers_shapes_and_repeat(name, shape, classes, tmp_path):
    dm = VisionDataModule(name, root=str(tmp_path), batch_size=2, num_workers=0, frames=3)
    assert dm.num_classes == classes
    dm.setup("fit")
    x, y = dm.data_test[5]
    assert tuple(x.shape) == shape and y == 5 % classes
    assert torch.equal(dm.data_test[5][0], x)  # sample i is fixed
    assert not torch.equal(dm.data_test[6][0], x)


@pytest.mark.slow
def test_memory_suite_end_to_end_on_a_tiny_net(tmp_path, data_root, suite_here):
    """Two ratio rows of a tiny MLP (BPTT baseline, OTTT_A at T=8) run through the suite launcher:
    the result files carry the step measurements and the report the ratio."""
    step = ["--trainer.max_steps=4", "--trainer.callbacks+=lightning_snn.suite.memory.StepCost", "--model.T=8"]
    rows = [mem_row("bptt", 3.0, 2.0), mem_row("ottt", 1.0, 2.0, baseline="bptt")]
    rows[0]["overrides"] = step + ["--model.strategy=bptt"]
    rows[1]["overrides"] = step + ["--model.strategy=ottt_a"]
    path = write_suite(tmp_path / "tinymem.yaml", rows, seeds=[0])
    root = tmp_path / "runs"
    code, out, err = suite_here("run", path, "--root", root, "--", *tiny(data_root, "--data.val_size=0"))
    assert code == 0, out + err
    for name in ("bptt", "ottt"):
        r = json.loads((root / "tinymem" / name / "seed0" / "result.json").read_text())
        assert r["value"] == r["step_memory_gb"] > 0 and r["step_s"] > 0
        assert r["step_memory_kind"].startswith("tensor storages")
    code, out, err = suite_here("report", path, "--root", root)
    assert code == 0, err
    assert "## Ratios to the baseline row" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("| ottt") and "bptt" in ln)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert float(cells[2]) < 1.0 and cells[3] == "0.33"  # OTTT at T=8 keeps less than BPTT; paper 1/3
    assert cells[-1] in ("at or below (provisional)", "above (provisional)")
