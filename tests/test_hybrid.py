"""Training that starts from another run: ``fit --init_from`` (weights only, mismatches listed),
the ANN form of a feed-forward network (strategy ``ann``), and suite rows that start from another
row (hybrid ANN -> SNN, two stages T = 1 -> T = 4), end to end on tiny MLPs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from procs import ROOT, mlp_checkpoint

from lightning_snn.checkpoints import CheckpointError
from lightning_snn.cli import main
from lightning_snn.errors import UsageError
from lightning_snn.init_from import init_weights
from lightning_snn.module import SNNModule
from lightning_snn.neurons import NeuronConfig
from lightning_snn.suite.__main__ import main as suite_main

CONFIG = str(ROOT / "configs" / "fmnist_mlp_bptt.yaml")


def _params(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.endswith(("weight", "bias"))}


# ------------------------------------------------------------------ --init_from
def test_init_from_copies_every_tensor_and_lists_mismatches(tmp_path: Path) -> None:
    ckpt = mlp_checkpoint(tmp_path / "a.ckpt", 16)
    stored = torch.load(ckpt, weights_only=False)["state_dict"]
    fresh = SNNModule("mlp", num_classes=10, input_shape=(1, 28, 28), T=1, network_args={"hidden": [16]})
    report = init_weights(fresh, ckpt)
    assert sorted(report.loaded) == sorted(stored)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, stored[k]), k
    # another read-out (5 classes): an error naming the reshaped keys, unless ignored
    other = SNNModule("mlp", num_classes=5, input_shape=(1, 28, 28), T=4, network_args={"hidden": [16]})
    before = other.net.layers[2][0].weight.detach().clone()
    with pytest.raises(CheckpointError, match=r"reshaped keys: net.layers.2.0.weight \(10, 16\) -> \(5, 16\), "
                                              r"net.layers.2.0.bias \(10,\) -> \(5,\)"):
        init_weights(other, ckpt)
    report = init_weights(other, ckpt, ["net.layers.2.*"])
    assert report.reshaped == ["net.layers.2.0.weight", "net.layers.2.0.bias"]
    assert torch.equal(other.net.layers[2][0].weight, before)  # kept at initialisation
    assert torch.equal(other.net.layers[0][1].weight, stored["net.layers.0.1.weight"])
    # a network without batch norm: the checkpoint's BN tensors are unexpected
    plain = SNNModule("mlp", num_classes=10, input_shape=(1, 28, 28), network_args={"hidden": [16], "batch_norm": False})
    with pytest.raises(CheckpointError, match=r"unexpected keys: net.layers.0.2.weight"):
        init_weights(plain, ckpt)


def _fit(ckpt: Path, data_root: Path, tmp_path: Path, *extra: str):
    return main(["fit", "--config", CONFIG, f"--data.root={data_root}", "--data.num_workers=0", "--data.val_size=0",
                 "--model.network_args={'hidden': [16]}", "--trainer.accelerator=cpu", "--trainer.max_steps=0",
                 "--trainer.enable_progress_bar=false", "--test_after_fit=null", f"--trainer.default_root_dir={tmp_path}",
                 f"--trainer.logger.init_args.save_dir={tmp_path}", f"--checkpoint.dirpath={tmp_path / 'ck'}", *extra])


def test_fit_init_from_takes_weights_not_optimiser_epoch_or_T(tmp_path: Path, data_root: Path) -> None:
    ckpt = mlp_checkpoint(tmp_path / "a.ckpt", 16)  # T = 4, AdamW, 2 steps
    stored = torch.load(ckpt, weights_only=False)
    cli = _fit(ckpt, data_root, tmp_path, "--model.T=2", "--model.optimizer=sgd", "--model.lr=0.05",
               f"--init_from={ckpt}")
    assert cli.trainer.global_step == 0 and cli.trainer.current_epoch == 0 and cli.model.hparams.T == 2
    for k, v in cli.model.state_dict().items():
        assert torch.equal(v, stored["state_dict"][k]), k
    assert isinstance(cli.trainer.optimizers[0], torch.optim.SGD)
    with pytest.raises(CheckpointError, match="reshaped keys: net.layers.0.1.weight"):
        _fit(ckpt, data_root, tmp_path, "--model.network_args={'hidden': [8]}", f"--init_from={ckpt}")
    with pytest.raises(UsageError, match=r"--init_from_ignore \['x'\] without --init_from"):
        _fit(ckpt, data_root, tmp_path, "--init_from_ignore=[x]")
    with pytest.raises(CheckpointError, match="does not exist"):
        _fit(ckpt, data_root, tmp_path, f"--init_from={tmp_path / 'missing.ckpt'}")


# ------------------------------------------------------------------ the ANN form
@pytest.mark.parametrize("activation", ["relu", "clamp"])
def test_ann_form_is_the_network_with_activations(activation: str) -> None:
    """784 -> 12 (no bias) -> BN -> hidden -> 10 by hand (evaluation mode): the spiking layer is ReLU, or ReLU
    capped at the threshold (0.5) for ``clamp``; the read-out is linear."""
    torch.manual_seed(0)
    module = SNNModule("mlp", num_classes=10, input_shape=(1, 28, 28), T=3, strategy="ann",
                       strategy_args={"activation": activation}, network_args={"hidden": [12]},
                       neuron=NeuronConfig(threshold=0.5))
    module.eval()
    x = torch.rand(5, 1, 28, 28)
    fc1, bn, fc2 = module.net.layers[0][1], module.net.layers[0][2], module.net.layers[2][0]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        z = x.flatten(1) @ fc1.weight.T  # no bias before a batch norm
        z = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        h = F.relu(z) if activation == "relu" else z.clamp(0.0, 0.5)
        expected = h @ fc2.weight.T + fc2.bias
        out = module.strategy.forward(module.net, x)
    assert out.shape == (1, 5, 10)
    torch.testing.assert_close(out[0], expected, rtol=1e-5, atol=1e-5)  # float32 sums of 784 terms


def test_ann_form_refuses_event_frames_and_unknown_activations() -> None:
    with pytest.raises(ValueError, match="activation 'tanh' is not one of relu, clamp"):
        SNNModule("mlp", num_classes=10, input_shape=(1, 28, 28), strategy="ann", strategy_args={"activation": "tanh"})
    module = SNNModule("mlp", num_classes=10, input_shape=(2, 8, 8), strategy="ann", network_args={"hidden": [4]})
    with pytest.raises(ValueError, match="got event frames"):
        module.strategy.forward(module.net, torch.rand(2, 3, 2, 8, 8))


# ------------------------------------------------------------------ suites: a row starts from another
def _row(name: str, overrides: list[str], init_from: str | None = None) -> dict:
    row = {"name": name, "config": CONFIG, "overrides": overrides,
           "reference": {"metric": "test/acc", "value": None, "protocol": "final", "source": "test"}}
    return {**row, "init_from": init_from} if init_from else row


TINY = ["--data.num_workers=0", "--data.val_size=0", "--data.eval_batch_size=100", "--model.network_args={'hidden': [16]}",
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=2", "--trainer.accelerator=cpu", "--trainer.enable_model_summary=false"]
# the second stage barely moves (Adam, lr 1e-9: at most ~3e-9 per parameter in 3 steps), so its final
# parameters equal its source's final ones iff it started from them (a fresh start differs by ~0.1)
FROZEN = ["--model.optimizer=adam", "--model.lr=1e-9", "--model.weight_decay=0", "--model.scheduler=constant"]


@pytest.mark.slow
def test_hybrid_and_two_stage_suites_run_end_to_end(tmp_path: Path, data_root: Path, suite_here) -> None:
    suite = tmp_path / "stages.yaml"
    suite.write_text(yaml.safe_dump({"seeds": [0], "rows": [
        _row("snn_from_ann", ["--model.T=4", *FROZEN], "ann"),  # listed before its source
        _row("ann", ["--model.strategy=ann", "--model.T=1"]),
        _row("t1", ["--model.T=1"]),
        _row("t4_from_t1", ["--model.T=4", *FROZEN], "t1"),
    ]}, sort_keys=False))
    root = tmp_path / "runs"
    code, out, err = suite_here("run", suite, "--root", root, "--parallel", "2", "--", f"--data.root={data_root}", *TINY)
    assert code == 0, out + err
    events = [line for line in out.splitlines() if ": started" in line or ": done" in line]
    for stage, source in (("snn_from_ann", "ann"), ("t4_from_t1", "t1")):
        # the second stage starts after its source ended
        started = next(i for i, e in enumerate(events) if e.startswith(f"{stage}/seed0: started"))
        ended = next(i for i, e in enumerate(events) if e.startswith(f"{source}/seed0: done"))
        assert ended < started, events
        a = torch.load(root / "stages" / source / "seed0" / "checkpoints" / "last.ckpt", weights_only=False)
        b = torch.load(root / "stages" / stage / "seed0" / "checkpoints" / "last.ckpt", weights_only=False)
        pa, pb = _params(a["state_dict"]), _params(b["state_dict"])
        assert pa.keys() == pb.keys()
        assert max(float((pa[k] - pb[k]).abs().max()) for k in pa) < 1e-6
        assert b["hyper_parameters"]["T"] == 4 and (root / "stages" / stage / "seed0" / "result.json").is_file()


def test_a_run_whose_source_failed_is_reported_failed_without_starting(tmp_path: Path) -> None:
    from lightning_snn.suite.execute import execute
    from lightning_snn.suite.plan import run_state
    from lightning_snn.suite.spec import Options, load_suite

    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"seeds": [0], "rows": [_row("a", []), _row("b", [], "a")]}))
    suite, opts = load_suite(f), Options(root=tmp_path / "runs")
    src = tmp_path / "runs" / "s" / "a" / "seed0"
    src.mkdir(parents=True)
    (src / "failed.json").write_text(json.dumps({"error": "ValueError: boom"}))
    run = suite.select(["b"])[0]
    assert execute(run, opts) == "failed"
    state, detail = run_state(run, opts)
    assert state == "failed" and detail == "not started: source run a/seed0 failed (ValueError: boom)"
    assert not (tmp_path / "runs" / "s" / "b" / "seed0" / "logs").exists()  # nothing trained


def test_suite_sources_are_checked_and_imagenet_dry_runs_show_the_stages(tmp_path: Path, capsys) -> None:
    from lightning_snn.suite.spec import SuiteError, load_suite

    for rows, message in (([_row("a", [], "nope")], "init_from 'nope' is not another row"),
                          ([_row("a", [], "a")], "init_from 'a' is not another row"),
                          ([_row("a", [], "b"), _row("b", [], "a")], "cycle")):
        f = tmp_path / "bad.yaml"
        f.write_text(yaml.safe_dump({"seeds": [0], "rows": rows}))
        with pytest.raises(SuiteError, match=message):
            load_suite(f)
    for suite, first, second in (("sltt", "imagenet_nfresnet34_sltt_t1", "imagenet_nfresnet34_sltt"),
                                 ("dsr", "imagenet_resnet18_ann", "imagenet_resnet18_dsr")):
        s = load_suite(ROOT / "configs" / "suites" / f"{suite}.yaml")
        assert [r.row.name for r in s.select([second, first])] == [first, second]
        code = suite_main(["run", suite, "--rows", f"{second},{first}", "--dry-run", "--no-measure",
                           "--root", str(tmp_path / "r")])  # in this process: the plan is what is tested
        out = capsys.readouterr()
        assert code == 0, out.out + out.err
        lines = [line for line in out.out.splitlines() if line.startswith(f"| {first} ") or line.startswith(f"| {second} ")]
        assert lines[0].startswith(f"| {first} ") and f"2 (from {first})" in lines[1], out.out


# ------------------------------------------------------------------ DSR's threshold calibration
def test_calibration_sets_the_999th_percentile_of_the_ann_activation() -> None:
    """One hidden IF layer: its threshold becomes ``torch.quantile`` (0.999) of relu(BN(W x)) over
    every element of the first two of three batches, computed here by hand from the weights."""
    from lightning_snn.calibrate import calibrate_thresholds

    torch.manual_seed(0)
    module = SNNModule("mlp", num_classes=10, input_shape=(1, 28, 28), network_args={"hidden": [64]},
                       neuron=NeuronConfig(trainable_threshold=True, threshold=3.0))
    fc, bn = module.net.layers[0][1], module.net.layers[0][2]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    batches = [torch.rand(n, 1, 28, 28) for n in (50, 30, 40)]
    got = calibrate_thresholds(module.net, iter(batches), num_batches=2)
    with torch.no_grad():
        z = torch.cat(batches[:2]).flatten(1) @ fc.weight.T
        a = F.relu((z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias)
        expected = float(torch.quantile(a.flatten().double(), 0.999))
    (name,) = got
    layer = dict(module.net.named_modules())[name]
    assert float(layer.threshold) == pytest.approx(expected, rel=1e-6)  # float32 activations
    assert module.training  # mode restored
    leaky = SNNModule("mlp", num_classes=10, input_shape=(1, 28, 28), network_args={"hidden": [4]},
                      neuron=NeuronConfig(leak=0.5))
    with pytest.raises(ValueError, match="leaky layers"):
        calibrate_thresholds(leaky.net, iter(batches))


def test_slurm_dry_run_submits_a_later_stage_after_its_source_stage(tmp_path: Path, data_root: Path, capsys) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"seeds": [0, 1], "rows": [_row("b", ["--model.T=4"], "a"), _row("a", ["--model.T=1"])]}))
    code = suite_main(["run", str(f), "--root", str(tmp_path / "r"), "--launcher", "slurm", "--partition", "debug",
                       "--time", "1:00:00", "--dry-run", "--no-measure", "--", f"--data.root={data_root}"])
    res = capsys.readouterr()
    assert code == 0, res.out + res.err
    out = res.out
    first, second = out.index("# ---- stage 1 of 2: a/seed0, a/seed1"), out.index("# ---- stage 2 of 2: b/seed0, b/seed1")
    assert first < second and out.count("#SBATCH --array=0-1") == 2
    assert out.index("#SBATCH --dependency=afterany:<previous stage job id>") > second
    assert "--row b" in out[second:] and "--row b" not in out[first:second]
