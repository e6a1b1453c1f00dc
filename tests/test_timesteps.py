"""``python -m lightning_snn timesteps``: a trained checkpoint evaluated at several T. Each CSV row is
checked against a direct evaluation of the checkpoint's weights in a network built for that T
(accuracy by argmax of the time-averaged output, spikes by counting the neurons' nonzero outputs,
SOPs and energy from the closed form of the MLP: every hidden spike reaches the 10 read-out
synapses, the input layer does 784 x hidden MACs once per static image)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from procs import mlp_checkpoint

from lightning_snn.checkpoints import CheckpointError
from lightning_snn.cli import main
from lightning_snn.data import VisionDataModule
from lightning_snn.errors import UsageError
from lightning_snn.module import SNNModule
from lightning_snn.loss import LossConfig
from lightning_snn.neurons import LIF, NeuronConfig
from lightning_snn.energy import E_AC_PJ, E_MAC_PJ
from lightning_snn.timesteps import read_csv

ROOT = Path(__file__).resolve().parents[1]
HIDDEN, IMAGES = 16, 40


def _test_batch(data_root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    dm = VisionDataModule("fashion_mnist", root=str(data_root), num_workers=0, eval_batch_size=IMAGES, val_size=0)
    dm.setup("test")
    return next(iter(dm.test_dataloader()))


class SpikeCounter:
    """Nonzero outputs of every spiking layer, whether run over all steps (``forward``) or step by
    step (``step``, as IDE runs them)."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.spikes = 0.0
        for m in net.modules():
            if isinstance(m, LIF):
                m.register_forward_hook(lambda _m, _i, out: self._add(out))
                orig = m.step
                m.step = lambda x, orig=orig: self._add(orig(x))  # type: ignore[method-assign]

    def _add(self, s: torch.Tensor) -> torch.Tensor:
        self.spikes += float((s != 0).sum())
        return s


def direct(ckpt: Path, T: int, x: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> tuple[float, float]:
    """Accuracy and spikes per sample of the checkpoint's weights in a module built for ``T``."""
    stored = torch.load(ckpt, map_location="cpu", weights_only=False)
    hp = {k: v for k, v in {**stored["hyper_parameters"], **kwargs, "T": T}.items() if not k.startswith("_")}
    hp["neuron"], hp["loss"] = NeuronConfig(**hp["neuron"]), LossConfig(**hp["loss"])
    module = SNNModule(**hp)
    module.load_state_dict(stored["state_dict"])
    module.eval()
    counter = SpikeCounter(module.net)
    with torch.no_grad():
        acc = float((module(x).argmax(-1) == y).float().mean())
    return acc, counter.spikes / len(x)


def _args(ckpt: Path, data_root: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(ROOT / "configs" / "fmnist_mlp_bptt.yaml"), "--ckpt_path", str(ckpt),
            f"--data.root={data_root}", "--data.num_workers=0", "--data.val_size=0",
            f"--data.eval_batch_size={IMAGES // 2}", "--trainer.limit_test_batches=2", "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={out}",
            f"--trainer.logger.init_args.save_dir={out}", f"--model.network_args={{'hidden': [{HIDDEN}]}}",
            "--model.optimizer=adamw", "--model.lr=0.002", *extra]


def test_curve_rows_equal_a_direct_evaluation_at_each_T(tmp_path: Path, data_root: Path) -> None:
    ckpt = mlp_checkpoint(tmp_path / "mlp.ckpt", HIDDEN)  # trained at T = 4
    out = tmp_path / "curve"
    main(["timesteps", *_args(ckpt, data_root, tmp_path, "--T", "8", "1", "2", "4", "--out_dir", str(out))])
    rows = read_csv(out / "timesteps.csv")
    assert [r.T for r in rows] == [1, 2, 4, 8]
    assert [r.training_T for r in rows] == [False, False, True, False]
    x, y = _test_batch(data_root)
    w_in = torch.load(ckpt, weights_only=False)["state_dict"]["net.layers.0.1.weight"]
    macs = float((w_in != 0).sum())  # every input pixel meets every nonzero weight, once per image
    for r in rows:
        acc, spikes = direct(ckpt, r.T, x, y)
        assert r.samples == IMAGES
        assert r.acc == pytest.approx(acc, abs=0.5 / IMAGES)  # a count of IMAGES: equal
        assert r.spikes == pytest.approx(spikes, rel=1e-9)  # sums of at most IMAGES x 16 x 8 ones
        assert r.sops == pytest.approx(10 * spikes, rel=1e-9)
        assert r.macs == pytest.approx(macs, rel=1e-9)
        assert r.energy_pj == pytest.approx(10 * spikes * E_AC_PJ + macs * E_MAC_PJ, rel=1e-9)
    assert rows[0].spikes < rows[-1].spikes  # more steps, more spikes
    assert (out / "timesteps.png").stat().st_size > 1000
    assert (out / "T8" / "spike_report.csv").is_file()  # each T's own report


def test_only_timesteps_may_change_T_and_nothing_else(tmp_path: Path, data_root: Path) -> None:
    ckpt = mlp_checkpoint(tmp_path / "mlp.ckpt", HIDDEN)
    with pytest.raises(CheckpointError, match=r"model.T: checkpoint 4, requested 8"):
        main(["test", *_args(ckpt, data_root, tmp_path, "--model.T=8")])
    with pytest.raises(CheckpointError, match=r"model.neuron.threshold: checkpoint 1.0, requested 0.5"):
        main(["timesteps", *_args(ckpt, data_root, tmp_path, "--model.neuron.threshold=0.5", "--T", "2")])
    # the config's T may be anything: the curve marks the checkpoint's own
    main(["timesteps", *_args(ckpt, data_root, tmp_path, "--model.T=2", "--T", "4", "--out_dir", str(tmp_path / "o"))])
    (row,) = read_csv(tmp_path / "o" / "timesteps.csv")
    assert row.T == 4 and row.training_T


@pytest.mark.parametrize("values, message", [(["0", "2"], "--T \\[0, 2\\]: 0 is not a positive integer"),
                                             (["2", "2"], "a time step is repeated")])
def test_bad_time_steps_are_one_line(tmp_path: Path, data_root: Path, values: list[str], message: str) -> None:
    ckpt = mlp_checkpoint(tmp_path / "mlp.ckpt", HIDDEN)
    with pytest.raises(UsageError, match=message):
        main(["timesteps", *_args(ckpt, data_root, tmp_path, "--T", *values, "--out_dir", str(tmp_path / "o"))])
    assert not (tmp_path / "o").exists()


def test_feedback_model_under_ide_runs_its_simulation_for_each_T(tmp_path: Path, data_root: Path) -> None:
    """An F-MLP trained two steps under IDE (T = 5): the curve's rows equal a module built for each T
    (IDE's forward simulation length), which runs its neurons step by step."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_snn.timesteps import sweep

    module = SNNModule("f_mlp", num_classes=10, input_shape=(1, 28, 28), T=5, strategy="ide",
                       network_args={"hidden": 12}, optimizer="adamw", lr=2e-3)
    x, y = _test_batch(data_root)
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=20))
    trainer.save_checkpoint(tmp_path / "f.ckpt")
    dm = VisionDataModule("fashion_mnist", root=str(data_root), num_workers=0, eval_batch_size=IMAGES // 2,
                          val_size=0)
    ev = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                    limit_test_batches=2)
    rows = sweep(ev, module, dm, [1, 3, 5, 9], 5, tmp_path / "curve")
    assert module.strategy.T == 5  # restored
    for r in rows:
        acc, spikes = direct(tmp_path / "f.ckpt", r.T, x, y)
        assert r.acc == pytest.approx(acc, abs=0.5 / IMAGES)
        assert r.spikes == pytest.approx(spikes, rel=1e-9)
    assert [r.training_T for r in rows] == [False, False, True, False]


# ------------------------------------------------------------------ suite rows with a curve
def test_suite_row_with_timesteps_reports_the_curve_of_its_final_weights(tmp_path: Path, data_root: Path) -> None:
    import yaml

    from lightning_snn.suite.execute import execute
    from lightning_snn.suite.report import write_report
    from lightning_snn.suite.spec import Options, load_suite

    suite_file = tmp_path / "curve.yaml"
    suite_file.write_text(yaml.safe_dump({"seeds": [0], "rows": [{
        "name": "mlp", "config": str(ROOT / "configs" / "fmnist_mlp_bptt.yaml"),
        "reference": {"metric": "test/acc", "value": None, "protocol": "final", "source": "test"},
        "timesteps": {"T": [2, 1], "reference": {2: 50.0}, "source": "made up"}}]}))
    suite = load_suite(suite_file)
    opts = Options(root=tmp_path / "runs", extra=[
        f"--data.root={data_root}", "--data.num_workers=0", "--data.val_size=0", f"--data.eval_batch_size={IMAGES // 2}",
        f"--model.network_args={{'hidden': [{HIDDEN}]}}", "--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2", "--trainer.accelerator=cpu",
        "--trainer.enable_model_summary=false"])
    (run,) = suite.select()
    assert execute(run, opts) == "finished"
    d = run.directory(opts.root)
    result = json.loads((d / "result.json").read_text())
    curve = {p["T"]: p for p in result["timesteps"]}
    assert sorted(curve) == [1, 2]
    x, y = _test_batch(data_root)
    for T, p in curve.items():  # the final weights (last.ckpt) at each T
        acc, spikes = direct(d / "checkpoints" / "last.ckpt", T, x, y)
        assert p["acc"] == pytest.approx(acc, abs=0.5 / IMAGES) and p["spikes"] == pytest.approx(spikes, rel=1e-9)
    # the run's own metric is still the final test at the training T (T = 4), not the sweep's
    assert result["value"] == pytest.approx(100 * direct(d / "checkpoints" / "last.ckpt", 4, x, y)[0], abs=50 / IMAGES)
    write_report(suite, opts)
    table = pd.read_csv(opts.root / "curve" / "timesteps.csv")
    assert list(table["T"]) == [1, 2] and list(table["paper_acc"].fillna(-1)) == [-1, 50.0]
    md = (opts.root / "curve" / "results.md").read_text()
    assert "Accuracy against inference time steps" in md and "made up" in md and "| 50.00" in md
    assert (opts.root / "curve" / "timesteps_mlp.png").stat().st_size > 1000


@pytest.mark.parametrize("steps, message", [([0, 2], "must be a non-empty list of distinct integers >= 1"),
                                            ({"T": [1, 2], "reference": {4: 60.0}}, "T 4 is not one of"),
                                            ({"T": [1], "colour": 1}, "unknown key 'colour'")])
def test_bad_suite_timesteps_are_one_line_errors(tmp_path: Path, steps: Any, message: str) -> None:
    import yaml

    from lightning_snn.suite.spec import SuiteError, load_suite

    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({"seeds": [0], "rows": [{
        "name": "a", "config": str(ROOT / "configs" / "fmnist_mlp_bptt.yaml"), "timesteps": steps,
        "reference": {"metric": "test/acc", "value": None, "protocol": "final", "source": "test"}}]}))
    with pytest.raises(SuiteError, match=message):
        load_suite(f)


def test_ottt_imagenet_row_carries_the_published_sweep() -> None:
    from lightning_snn.suite.spec import load_suite

    steps = load_suite(ROOT / "configs" / "suites" / "ottt.yaml").row("imagenet_nfresnet34_ottt_a").timesteps
    assert steps.T == (1, 2, 4, 6, 8, 10, 12)
    assert dict(steps.reference) == {1: 58.92, 2: 62.63, 4: 64.52, 6: 65.15, 8: 65.23, 10: 65.35, 12: 65.40}
