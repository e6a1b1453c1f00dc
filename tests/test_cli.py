"""The command line end to end: every config runs, bad input fails early and clearly."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lightning_snn.checkpoints import ResumeCheckpoint
from lightning_snn.cli import main
from lightning_snn.models.base import SpikingNet
from lightning_snn.module import SNNModule
from lightning_snn.strategies.base import GradientStrategy

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# every experiment config (files that configure a model; strategy configs etc. live beside them),
# except configs/reference/: data sets with no offline copy (their models are tested on tensors);
# event-data configs run on the synthetic recordings of conftest
# an overlay (configs/ide/*.yaml) names its base with ``config:`` and sets dotted keys; the bases
# (configs/ide/base/) run through their overlays
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml")
                 if any(k in "\n" + p.read_text() for k in ("\nmodel:", "\nmodel.", "\nconfig:"))
                 and "reference" not in p.parts and "base" not in p.parts)
IDS = [str(c.relative_to(CONFIG_DIR).with_suffix("")) for c in CONFIGS]
DEMO = CONFIG_DIR / "fmnist_mlp_bptt.yaml"


def cli_args(config, tmp_path, data_root, *extra):
    return [
        "fit", "--config", str(config),
        f"--data.root={data_root}", "--data.num_workers=0", "--data.batch_size=4",
        "--data.eval_batch_size=4", "--data.val_size=0",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu",
        *extra,
    ]


# DVS128 Gesture configs feed 2x128x128 frames to a full VGG-11 (minutes a step on CPU): their fast
# run trains a narrow net of the same kind (seconds); the full nets are checked by tests/test_deep_models
NARROW = {"vgg11_ws": "--model.network_args={'cfg': [8, 'M', 16]}",
          "vgg11": "--model.network_args={'width': 0.0625, 'pool_size': 7, 'dropout': 0.4}"}


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_fast_dev_run_every_config(config, tmp_path, all_data_root):
    """Each config as written, on the offline data, with T=2, batches of 4 and at most 3 adjoint
    solver iterations to keep CI short (SLTT-K with K <= T; a narrow net on 128x128 event frames)."""
    extra = ["--data.verify_md5=false"] if "cifar" in config.stem else []
    if "gesture" in config.stem:
        net = "vgg11_ws" if "vgg11ws" in config.stem else "vgg11"
        extra.append(NARROW[net])
    if "K: 4" in config.read_text():
        extra.append("--model.strategy_args.K=2")
    if "ide" in config.parts or "strategy: ide" in config.read_text():
        extra.append("--model.strategy_args.max_iter=3")
    if "strategy: spide" in config.read_text():
        extra.append("--model.strategy_args.T_b=5")
    cli = main(cli_args(config, tmp_path, all_data_root, "--trainer.fast_dev_run=2", "--model.T=2", *extra))
    metrics = cli.trainer.callback_metrics  # test_after_fit ran the test loop after the fit
    assert cli.trainer.global_step == 2
    assert torch.isfinite(metrics["test/loss"])
    # the test loop saw fast_dev_run=2 batches of 4: the accuracy is a count out of 8
    assert float(metrics["test/acc"]) * 8 == pytest.approx(round(float(metrics["test/acc"]) * 8), abs=1e-5)


def test_fit_writes_checkpoint_then_test_and_predict(tmp_path, data_root):
    cfg = DEMO
    args = cli_args(cfg, tmp_path, data_root, "--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
                    "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2",
                    "--test_after_fit=null")
    cli = main(args)
    best_cb, resume_cb = cli.trainer.checkpoint_callbacks  # best by val/acc, then last/step/signal
    assert best_cb is cli.trainer.checkpoint_callback and isinstance(resume_cb, ResumeCheckpoint)
    best, last = Path(best_cb.best_model_path), Path(resume_cb.last_model_path)
    assert best.is_file() and last.is_file()
    base = [a for a in args[1:] if not a.startswith(("--trainer.max_epochs", "--test_after_fit"))]
    test = main(["test", *base, f"--ckpt_path={best}"])
    pred = main(["predict", *base, f"--ckpt_path={last}", "--trainer.limit_predict_batches=2"])
    # recompute both from the checkpoints on the first two test batches, outside Lightning
    batches = [b for _, b in zip(range(2), test.datamodule.test_dataloader())]
    expected = {}
    for name, ckpt in (("best", best), ("last", last)):
        module = SNNModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
        with torch.no_grad():
            expected[name] = torch.cat([module(x).argmax(-1) for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    acc = float(test.trainer.callback_metrics["test/acc"])
    assert acc == pytest.approx(float((expected["best"] == y).float().mean()), abs=1e-6)
    predictions = torch.cat(pred.trainer.predict_loop.predictions)
    assert predictions.shape == (8,) and torch.equal(predictions, expected["last"])


def test_state_reset_between_batches(data_root):
    torch.manual_seed(0)
    m = SNNModule("convnet", num_classes=10, input_shape=(1, 28, 28), T=5)  # train-mode BN
    x, other = torch.randn(3, 1, 28, 28), torch.randn(3, 1, 28, 28) + 1.0
    with torch.no_grad():
        first = m(x)
        m(other)
        assert torch.equal(m(x), first)
        assert not torch.equal(m(other), first)


# ----------------------------------------------------------------------------- bad input
def error_text(capsys, args):
    """Run the CLI on bad input; return what it reported (raised or printed by the parser)."""
    with pytest.raises((SystemExit, ValueError, FileNotFoundError)) as exc:
        main(args)
    if isinstance(exc.value, SystemExit):
        assert exc.value.code != 0
        return capsys.readouterr().err
    return str(exc.value)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("--model.network=resnet999", ["unknown model 'resnet999'", "mlp", "vgg11"]),
        ("--model.strategy=eprop", ["unknown strategy 'eprop'", "bptt"]),
        ("--data.dataset=imagenet22k", ["unknown dataset 'imagenet22k'", "fashion_mnist"]),
        ("--model.T=0", ["T must be a positive integer, got 0"]),
        ("--model.T=-3", ["T must be a positive integer, got -3"]),
        ("--model.neuron.threshold=-1", ["threshold must be > 0, got -1"]),
        ("--model.neuron.leak=1.5", ["leak must be in (0, 1]", "1.5"]),
        ("--model.neuron.leak=0", ["leak must be in (0, 1]"]),
        ("--model.neuron.thresold=1", ["thresold"]),
        ("--model.neuron.kind=alif", ["unknown neuron kind 'alif'", "if, lif, plif"]),
        ("--model.neuron.kind=plif", ["'plif' learns its leak", "got leak=1.0"]),
        ("--model.loss.mse_weight=2", ["mse_weight must be in [0, 1], got 2"]),
        ("--model.lerning_rate=1", ["lerning_rate"]),
        ("--model.network_args={'hiden': [10]}", ["no argument(s) ['hiden']", "hidden"]),
        ("--data.root=/nonexistent/fmnist", ["/nonexistent/fmnist/FashionMNIST does not exist",
                                             "fetch_data.sh", "download"]),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(override, expected, tmp_path, data_root, capsys):
    ckpt = tmp_path / "logs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"earlier run")
    cfg = DEMO
    text = error_text(capsys, cli_args(cfg, tmp_path, data_root, override))
    for piece in expected:
        assert piece in text, text
    assert ckpt.read_bytes() == b"earlier run"
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["logs", "lightning_logs", "version_0", "checkpoints", "last.ckpt"]
    )


def test_unknown_key_in_config_file(tmp_path, data_root, capsys):
    cfg = tmp_path / "bad.yaml"
    src = DEMO.read_text()
    cfg.write_text(src.replace("  T: 4", "  T: 4\n  time_steps: 4"))
    assert "time_steps" in error_text(capsys, cli_args(cfg, tmp_path, data_root))


def test_config_file_whose_top_level_is_a_list_is_named(tmp_path, data_root, capsys):
    cfg = tmp_path / "list.yaml"
    cfg.write_text("- model: {T: 2}\n- data: {}\n")
    text = error_text(capsys, cli_args(cfg, tmp_path, data_root))
    assert str(cfg) in text and "top level is a YAML list, not a mapping" in text, text


def test_strategy_that_cannot_train_model_names_both():
    class FeedbackOnly(GradientStrategy):
        name = "feedback_only"
        supported_kinds = frozenset({"feedback"})

        def forward(self, model, x):
            return model(x)

    class Net(SpikingNet):
        kind = "feedforward"

    with pytest.raises(ValueError, match=r"'feedback_only' cannot train model Net \(kind 'feedforward'\)"
                       r".*supports \['feedback'\].*\['ann', 'bptt', 'dsr', 'ottt_a', 'ottt_o', 'proxy', 'sltt'\]"):
        FeedbackOnly(T=2).check_model(Net())


@pytest.mark.parametrize("value, expected", [("1", 1), ("1.0", 1.0), ("0.25", 0.25)])
def test_limit_batches_integer_is_a_count_and_decimal_a_fraction_when_parsed(value, expected, tmp_path, data_root):
    """``1`` stays the integer 1 (one batch) and ``1.0`` the fraction 1.0 (every batch), as in
    Lightning's Python API, for each of the four options; ``pl.Trainer`` annotates them
    ``float | int``, which a parser trying the types in order reads as ``1.0``."""
    stages = ("train", "val", "test", "predict")
    cli = main(cli_args(DEMO, tmp_path, data_root, *[f"--trainer.limit_{s}_batches={value}" for s in stages])[1:],
               run=False)
    for s in stages:
        got = getattr(cli.trainer, f"limit_{s}_batches")
        assert got == expected and type(got) is type(expected), (s, value, got)


def test_limit_one_is_one_batch_whatever_was_imported_first():
    """typing caches ``Optional[Union[...]]`` by equality, and ``Union[float, int] == Union[int,
    float]``: in a process where ``Optional[Union[float, int]]`` was built first (as pl.Trainer's own
    annotation can be), an ``Optional[Union[int, float]]`` limit type came back float-first and
    ``--trainer.limit_val_batches 1`` meant every batch. A fresh interpreter builds that Union
    before importing the project, then parses the four limits."""
    code = textwrap.dedent("""
        from typing import Optional, Union
        float_first = Optional[Union[float, int]]
        from lightning_snn.commands import SNNTrainer
        from jsonargparse import ArgumentParser
        p = ArgumentParser()
        p.add_class_arguments(SNNTrainer, "trainer")
        ns = p.parse_args([f"--trainer.limit_{s}_batches=1" for s in ("train", "val", "test", "predict")])
        print(sorted({type(v).__name__ for k, v in vars(ns.trainer).items() if k.startswith("limit_")}))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=CONFIG_DIR.parent, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "['int']", out.stdout


@pytest.mark.parametrize("value", ["1", "1.0"])
def test_limit_batches_runs_what_it_says_in_every_loop(value, tmp_path, all_data_root, caplog):
    """fit / validate / test / predict with ``--trainer.limit_*_batches 1`` run one batch each, with
    ``1.0`` every batch (the 20-image CIFAR-10 copy: 12 training images in batches of 4: 3; 8
    validation and 20 test images in batches of 4: 2 and 5), and the run log says which limit was
    applied."""
    import logging

    caplog.set_level(logging.INFO)
    one = value == "1"
    base = [a for a in cli_args(DEMO, tmp_path, all_data_root) if not a.startswith("--data.val_size")][1:]
    base += ["--data.dataset=cifar10", "--data.verify_md5=false", "--data.val_size=8",
             "--model.network_args.hidden=[8]", "--model.T=1", "--test_after_fit=null"]
    limits = [f"--trainer.limit_{s}_batches={value}" for s in ("train", "val", "test", "predict")]
    fit = main(["fit", *base, "--trainer.max_epochs=1", "--trainer.num_sanity_val_steps=0", *limits])
    assert fit.trainer.global_step == (1 if one else 3)
    assert fit.trainer.num_val_batches == [1 if one else 2]
    ckpt = f"--ckpt_path={fit.trainer.checkpoint_callbacks[1].last_model_path}"
    val = main(["validate", *base, ckpt, *limits])
    assert val.trainer.num_val_batches == [1 if one else 2]
    test = main(["test", *base, ckpt, *limits])
    assert test.trainer.num_test_batches == [1 if one else 5]
    pred = main(["predict", *base, ckpt, *limits])
    assert len(pred.trainer.predict_loop.predictions) == (1 if one else 5)
    log = caplog.text
    if one:
        for s, total in (("train", 3), ("val", 2), ("test", 5), ("predict", 5)):
            assert f"limit_{s}_batches: 1 batch (of {total})" in log
    else:
        for s, total in (("train", 3), ("val", 2), ("test", 5), ("predict", 5)):
            assert f"limit_{s}_batches: 100% of {total} batches ({total})" in log



def test_lightning_tips_and_the_srun_hint_stay_out_of_the_output(tmp_path, data_root, caplog, monkeypatch):
    import logging
    import warnings

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        main(cli_args(DEMO, tmp_path, data_root)[1:], run=False)
        from lightning_fabric.utilities.rank_zero import rank_zero_warn
        rank_zero_warn("The `srun` command is available on your system but is not used.")
    assert "Tip: For seamless" not in caplog.text and "Seed set to 0" in caplog.text
    assert not [w for w in seen if "srun" in str(w.message)]
