"""Benchmark suites: suite files, the local / SLURM / Ray launchers, resume, locks, the report.

Runs are real ``fit`` runs (tiny MLPs, a few batches of the offline Fashion-MNIST / MNIST) in child
processes, as a user starts them; results are recomputed from each run's own ``metrics.csv``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from lightning_snn.suite.__main__ import main as suite_main
from lightning_snn.suite.execute import read_metrics
from lightning_snn.suite.plan import gpu_here
from lightning_snn.suite.report import verdict, write_report
from lightning_snn.suite.spec import Options, Reference, load_suite
from procs import ROOT, child_env

SMOKE = ROOT / "configs" / "suites" / "smoke.yaml"
TWO_ROWS = "fmnist_mlp_bptt,mnist_mlp_ottt"


def tiny(data_root: Path, *more: str) -> list[str]:
    """Options after ``--``: a 32-unit MLP, 4 training batches, one evaluation batch of 250 images."""
    return [f"--data.root={data_root}", "--data.num_workers=0", "--data.eval_batch_size=250",
            "--model.network_args={'hidden': [32]}", "--trainer.limit_train_batches=4",
            "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1", "--trainer.accelerator=cpu",
            "--trainer.enable_model_summary=false", *more]


def env() -> dict[str, str]:
    e = child_env()
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), e["PYTHONPATH"]])  # failing_callback
    return e


def suite_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "lightning_snn.suite", *args]


def run_suite(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(suite_cmd(*args), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def expected_value(run_dir: Path) -> float:
    """The final test accuracy (percent) as the run's own CSV logger wrote it."""
    m = read_metrics(run_dir)
    return float(m["test/acc"].dropna().iloc[-1]) * 100


def write_suite(path: Path, rows: list[dict], seeds: list[int] | None = (0, 1)) -> Path:
    import yaml

    data = {"description": "test suite", "rows": rows}
    if seeds is not None:
        data["seeds"] = list(seeds)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def row(name: str, config: str = "fmnist_mlp_bptt.yaml", overrides: list[str] = (), value: float | None = 80.0,
        **ref: object) -> dict:
    return {"name": name, "config": str(ROOT / "configs" / config), "overrides": list(overrides),
            "reference": {"metric": "test/acc", "value": value, "protocol": "final", "source": "test", **ref}}


# ------------------------------------------------------------------ suite files
@pytest.mark.parametrize("mutate, message", [
    (lambda r: r[0].update(config="nope.yaml"), "config 'nope.yaml' does not exist"),
    (lambda r: r[0].update(colour="red"), "unknown key 'colour'"),
    (lambda r: r.append(dict(r[0])), "duplicate row 'a'"),
    (lambda r: r[0]["reference"].update(protocol="best"), "protocol 'best' (valid: final, best_epoch, measured)"),
    (lambda r: r[0]["reference"].update(grade="S1"),
     "reference.grade 'S1' (valid: primary, secondary, single-source, conflict)"),
    (lambda r: r[0]["reference"].update(grade="primary", value=None), "grade 'primary' without a value"),
])
def test_bad_suite_files_are_one_line_errors_before_anything_starts(tmp_path, capsys, mutate, message):
    rows = [row("a")]
    mutate(rows)
    path = write_suite(tmp_path / "bad.yaml", rows)
    code = suite_main(["run", str(path), "--root", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


def test_a_suite_without_seeds_and_an_unknown_suite_name_are_errors(tmp_path, capsys):
    path = write_suite(tmp_path / "noseeds.yaml", [row("a")], seeds=None)
    assert suite_main(["status", str(path)]) == 2
    assert "no seeds" in capsys.readouterr().err
    assert suite_main(["status", "no_such_suite"]) == 2
    err = capsys.readouterr().err
    assert "unknown suite 'no_such_suite'" in err and "smoke" in err


def test_a_negative_seed_and_a_bad_row_override_fail_before_anything_trains(tmp_path, capsys, data_root):
    """``--seeds -1`` and a second row's ``--model.T=0`` are one line, exit 2, before any run starts
    (no run folder written): every row's model is built in the up-front check."""
    path = write_suite(tmp_path / "two.yaml", [row("a"), row("b", overrides=["--model.T=0"])], seeds=[0])
    root = tmp_path / "runs"
    assert suite_main(["run", str(path), "--root", str(root), "--seeds", "-1", "--rows", "a"]) == 2
    err = capsys.readouterr().err
    assert "--seeds -1: a seed must be in [0, 2^32)" in err and len(err.strip().splitlines()) == 1, err
    assert suite_main(["run", str(path), "--root", str(root), "--", *tiny(data_root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "row 'b'" in err[-1] and "T must be a positive integer, got 0" in err[-1], err
    assert not root.exists()

@pytest.mark.parametrize("command", [["run"], ["report"], ["execute", "--row", "a", "--seed", "0"]])
def test_an_unwritable_root_is_one_line_naming_it(tmp_path, capsys, unwritable_dir, command):
    """``--root`` on a read-only file system or under a file: one line naming the option and the
    folder, exit 2 (not a chain of tracebacks); ``status`` only reads, and still answers."""
    path = write_suite(tmp_path / "s.yaml", [row("a")], seeds=[0])
    assert suite_main([command[0], str(path), "--root", str(unwritable_dir), *command[1:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --root {unwritable_dir}: "), err
    assert "is not writable" in err[0] or "is a file, not a folder" in err[0], err
    assert not unwritable_dir.exists()
    assert suite_main(["status", str(path), "--root", str(unwritable_dir)]) == 0
    assert "a/seed0" in capsys.readouterr().out


def test_a_key_given_twice_in_a_suite_file_names_file_line_and_key(tmp_path, capsys):
    path = write_suite(tmp_path / "twice.yaml", [row("a")])
    path.write_text(path.read_text().replace("  protocol: final", "  protocol: final\n    protocol: best_epoch"))
    assert suite_main(["status", str(path)]) == 2
    err = capsys.readouterr().err
    assert "twice.yaml line" in err and "protocol' given twice" in err, err


def test_a_row_whose_command_line_is_rejected_names_the_row(tmp_path, capsys):
    path = write_suite(tmp_path / "s.yaml", [row("a", overrides=["--model.T=abc"])])
    assert suite_main(["run", str(path), "--root", str(tmp_path / "runs"), "--dry-run", "--no-measure"]) == 2
    err = capsys.readouterr().err
    assert "row 'a'" in err and "model.T" in err
    assert not (tmp_path / "runs").exists()


def test_shipped_suites_load_and_every_row_has_a_reference():
    for path in sorted((ROOT / "configs" / "suites").glob("*.yaml")):
        suite = load_suite(path)
        assert suite.rows, path
        for r in suite.rows:
            assert r.config.is_file() and r.seeds and r.reference.source, (path, r.name)
            # a paper's value always says how far it can be trusted
            assert (r.reference.value is None) == (r.reference.grade is None), (path, r.name)


def test_every_paper_suite_says_where_its_best_epoch_protocol_comes_from():
    for path in sorted((ROOT / "configs" / "suites").glob("*.yaml")):
        if path.stem == "memory":
            continue
        text = " ".join(line.lstrip("# ") for line in path.read_text().splitlines() if line.startswith("#"))
        assert "read from the official code" in text or "read from the code" in text, path
        assert "not stated in the paper" in text or "does not state it" in text, path


# ------------------------------------------------------------------ verdicts and the report
@pytest.mark.parametrize("mean, std, n, ref, shortened, expected", [
    (90.0, 0.5, 3, Reference(value=90.8), False, "reproduced"),  # paper within mean ± 2 std
    (90.0, 0.1, 3, Reference(value=90.8), False, "below"),
    (91.0, 0.1, 3, Reference(value=90.8), False, "above"),
    (90.0, 0.0, 1, Reference(value=90.2, std=0.3), False, "reproduced"),  # ours within the paper's ±
    (90.0, 0.0, 1, Reference(value=90.4, std=0.3), False, "below"),
    (None, None, 0, Reference(value=90.0), False, "not run"),
    (90.0, 0.1, 2, Reference(value=90.0), True, "shortened"),
    (90.0, 0.1, 2, Reference(value=None), False, "unknown"),
    (0.5, 0.01, 3, Reference(metric="test/loss", value=0.6), False, "above"),  # lower loss is better
    # exact boundaries (every number a binary fraction): |paper - mean| == 2 std, |mean - paper| == paper std
    (90.0, 0.5, 3, Reference(value=91.0), False, "reproduced"),
    (90.0, 0.5, 3, Reference(value=89.0), False, "reproduced"),
    (90.0, 0.0, 1, Reference(value=90.5, std=0.5), False, "reproduced"),
    (90.0, 0.0, 1, Reference(value=90.5, std=0.25), False, "below"),
])
def test_verdicts(mean, std, n, ref, shortened, expected):
    assert verdict(mean, std, n, ref, shortened) == expected


def test_report_on_hand_made_result_files(tmp_path):
    path = write_suite(tmp_path / "hand.yaml", [row("good", value=90.0, std=0.2), row("low", value=95.0),
                                                row("short", value=80.0), row("absent", value=70.0)])
    suite = load_suite(path)
    root = tmp_path / "runs"
    made = {("good", 0): 89.9, ("good", 1): 90.3, ("low", 0): 91.0, ("low", 1): 91.2, ("short", 0): 80.0}
    for (name, seed), value in made.items():
        d = root / "hand" / name / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({
            "suite": "hand", "row": name, "seed": seed, "metric": "test/acc", "protocol": "final",
            "value": value, "final": value, "best": value, "epochs": 3, "shortened": name == "short",
            "wall_s": 3600.0, "device": "cpu", "devices": 2, "device_hours": 2.0}))
    rows, runs = write_report(suite, Options(root=root))
    got = rows.set_index("row")
    assert got["verdict"].to_dict() == {"good": "reproduced", "low": "below", "short": "shortened",
                                        "absent": "not run"}
    assert got.loc["good", "mean"] == pytest.approx(90.1) and got.loc["good", "std"] == pytest.approx(0.2828427, rel=1e-6)
    assert got.loc["low", "diff"] == pytest.approx(91.1 - 95.0)
    assert got.loc["good", "n"] == 2 and got.loc["absent", "n"] == 0 and got.loc["good", "device_hours"] == 4.0
    csv = pd.read_csv(root / "hand" / "results.csv")
    assert len(csv) == 5 and sorted(csv["value"]) == sorted(made.values())
    md = (root / "hand" / "results.md").read_text()
    assert "| good " in md and "90.10 ± 0.28" in md and "not run" in md and "unknown" not in md
    assert (root / "hand" / "results.png").stat().st_size > 1000


def _hand_results(root: Path, made: dict) -> None:
    for (name, seed), value in made.items():
        d = root / "hand" / name / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({
            "suite": "hand", "row": name, "seed": seed, "metric": "test/acc", "protocol": "final",
            "value": value, "final": value, "best": value, "epochs": 3, "shortened": False,
            "wall_s": 3600.0, "device": "cpu", "devices": 1, "device_hours": 1.0}))


@pytest.mark.parametrize("edit, message", [
    (lambda f, r: f.write_text(json.dumps({**r, "row": "good"})), "its row field 'good' contradicts its folder"),
    (lambda f, r: f.write_text(json.dumps({**r, "seed": 1})), "its seed field 1 contradicts its folder"),
    (lambda f, r: f.write_text(json.dumps(r)[:40]), "not a readable result file"),
    (lambda f, r: f.write_text("[1, 2]"), "not a result (a JSON list"),
    (lambda f, r: f.write_text(json.dumps({**r, "value": "fast"})), "value 'fast' is not a number"),
])
def test_a_result_file_that_contradicts_its_folder_or_is_broken_is_named(tmp_path, capsys, edit, message):
    """The folder a result sits in is its identity: a result copied / edited into another row's or
    seed's folder, truncated or hand-edited, is one line naming the file in ``report`` (exit 2,
    nothing written) and that run's state in ``status`` (the other runs still listed)."""
    path = write_suite(tmp_path / "hand.yaml", [row("good", value=90.0), row("low", value=95.0)])
    root = tmp_path / "runs"
    _hand_results(root, {("good", 0): 89.0, ("good", 1): 91.0, ("low", 0): 91.0, ("low", 1): 92.0})
    bad = root / "hand" / "low" / "seed0" / "result.json"
    edit(bad, json.loads(bad.read_text()))
    assert suite_main(["report", str(path), "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(bad) in err and len(err.strip().splitlines()) == 1, err
    assert not (root / "hand" / "results.csv").exists()
    assert suite_main(["status", str(path), "--root", str(root)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "low/seed0" in x)
    assert "invalid" in line and message in line, out
    assert sum("| done" in x for x in out.splitlines()) == 3, out


def test_report_reads_identity_from_the_folder_and_never_counts_a_run_twice(tmp_path):
    """``row`` / ``seed`` of the table come from the run's folder, so every (row, seed) is one run."""
    path = write_suite(tmp_path / "hand.yaml", [row("good", value=90.0), row("low", value=95.0)])
    root = tmp_path / "runs"
    _hand_results(root, {("good", 0): 89.0, ("good", 1): 91.0, ("low", 1): 92.0})
    f = root / "hand" / "low" / "seed1" / "result.json"
    r = json.loads(f.read_text())
    del r["row"], r["seed"]  # a result that does not say: its folder does
    f.write_text(json.dumps(r))
    rows, runs = write_report(load_suite(path), Options(root=root))
    assert sorted(zip(runs["row"], runs["seed"])) == [("good", 0), ("good", 1), ("low", 1)]
    assert rows.set_index("row").loc["low", "n"] == 1 and rows.set_index("row").loc["good", "n"] == 2


def test_report_on_a_suite_never_run_says_where_it_looked_and_creates_nothing(tmp_path, capsys):
    path = write_suite(tmp_path / "hand.yaml", [row("good", value=90.0)])
    root = tmp_path / "runs"
    assert suite_main(["report", str(path), "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"no finished run under {root / 'hand'}" in err and "--root" in err and len(err.strip().splitlines()) == 1
    assert not root.exists()

@pytest.mark.parametrize("val_size, protocol, value, best_is_test", [
    (0, "best_epoch", 70.0, True),      # the validation curve is the test split: its best epoch counts
    (0, "final", 65.0, True),
    (5000, "best_epoch", None, False),  # a held-out validation split is no test accuracy
])
def test_collect_result_on_a_hand_made_metrics_csv(tmp_path, val_size, protocol, value, best_is_test):
    """val/acc 0.5, 0.7, 0.6 over epochs 0-2 -> best 70 at epoch 1; test/acc 0.65 at the end -> final 65."""
    import pytorch_lightning as pl
    from types import SimpleNamespace

    from lightning_snn.cli_check import check_args
    from lightning_snn.suite.execute import collect_result, fit_args

    path = write_suite(tmp_path / "hand.yaml", [row("r", overrides=[f"--data.val_size={val_size}"], protocol=protocol)],
                       seeds=[0])
    run = load_suite(path).select(["r"], [0])[0]
    root = tmp_path / "runs"
    d = run.directory(root)
    (d / "logs" / "attempt0").mkdir(parents=True)
    pd.DataFrame({"epoch": [0, 1, 2, 2], "step": [10, 20, 30, 30], "val/acc": [0.5, 0.7, 0.6, None],
                  "test/acc": [None, None, None, 0.65]}).to_csv(d / "logs" / "attempt0" / "metrics.csv", index=False)
    cli = SimpleNamespace(trainer=pl.Trainer(logger=False, accelerator="cpu", enable_checkpointing=False),
                          config={"fit": check_args(fit_args(run, Options(root=root), 0))["fit"]})
    res = collect_result(run, cli, 36.0, d)
    assert res["best"] == pytest.approx(70.0) and res["best_epoch"] == 1 and res["final"] == pytest.approx(65.0)
    assert res["best_is_test_split"] is best_is_test
    assert res["value"] == (pytest.approx(value) if value is not None else None)
    assert res["row"] == "r" and res["seed"] == 0 and res["device_hours"] == pytest.approx(0.01)


def test_execute_leaves_a_finished_run_alone(tmp_path):
    """SLURM array tasks and requeues call ``execute`` directly: a run with its result exits 0
    without training, and its folder is unchanged."""
    path = write_suite(tmp_path / "hand.yaml", [row("good", value=90.0)], seeds=[0])
    root = tmp_path / "runs"
    _hand_results(root, {("good", 0): 89.0})
    d = root / "hand" / "good" / "seed0"
    before = {p: p.read_bytes() for p in d.rglob("*")}
    assert suite_main(["execute", str(path), "--root", str(root), "--row", "good", "--seed", "0"]) == 0
    assert {p: p.read_bytes() for p in d.rglob("*")} == before


def test_report_shows_grades_and_marks_verdicts_against_weak_values_provisional(tmp_path):
    path = write_suite(tmp_path / "graded.yaml", [
        row("prim", value=90.0, std=0.2, grade="primary"), row("one", value=90.0, grade="single-source"),
        row("torn", value=95.0, grade="conflict"), row("twice", value=95.0, grade="secondary"),
        row("none", value=None)])
    suite = load_suite(path)
    assert [r.reference.provisional for r in suite.rows] == [False, True, True, False, False]
    root = tmp_path / "runs"
    for name in ("prim", "one", "torn", "twice", "none"):
        for seed, value in ((0, 89.9), (1, 90.3)):
            d = root / "graded" / name / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "result.json").write_text(json.dumps({
                "suite": "graded", "row": name, "seed": seed, "metric": "test/acc", "protocol": "final",
                "value": value, "final": value, "best": value, "epochs": 3, "shortened": False,
                "wall_s": 60.0, "device": "cpu", "devices": 1, "device_hours": 1 / 60}))
    rows, _ = write_report(suite, Options(root=root))
    got = rows.set_index("row")
    assert got["verdict"].to_dict() == {"prim": "reproduced", "one": "reproduced (provisional)",
                                        "torn": "below (provisional)", "twice": "below", "none": "unknown"}
    md = (root / "graded" / "results.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| row"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells.index("grade") == cells.index("paper") + 1
    line = next(line for line in md.splitlines() if line.startswith("| one "))
    assert "single-source" in line and "reproduced (provisional)" in line
    assert "| conflict " in md and "| primary " in md and "| secondary " in md


# ------------------------------------------------------------------ the local launcher, end to end
@pytest.fixture(scope="module")
def two_launches(tmp_path_factory, data_root) -> tuple[Path, list[tuple[int, str]]]:
    """The smoke suite's two rows (2 seeds each, tiny settings) launched twice at once on one fresh
    root, each launch with ``--parallel 2``: the root, and each launch's (exit status, output)."""
    root = tmp_path_factory.mktemp("two_launches") / "runs"
    args = ("run", "smoke", "--rows", TWO_ROWS, "--root", str(root), "--parallel", "2", "--", *tiny(data_root))
    procs = [subprocess.Popen(suite_cmd(*args), cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    return root, [(p.returncode, out) for p, out in zip(procs, outs)]


@pytest.mark.slow
def test_smoke_suite_end_to_end_with_results_recomputed_from_the_runs(two_launches, suite_here):
    root, launches = two_launches
    for code, out in launches:  # exit 1 only where a run was left to the other launch
        assert code == 0 or (code == 1 and "not started here" in out and "failed" not in out), out
    code, out, err = suite_here("report", "smoke", "--rows", TWO_ROWS, "--root", root)
    assert code == 0, err
    csv = pd.read_csv(root / "smoke" / "results.csv")
    assert sorted(zip(csv["row"], csv["seed"])) == [("fmnist_mlp_bptt", 0), ("fmnist_mlp_bptt", 1),
                                                    ("mnist_mlp_ottt", 0), ("mnist_mlp_ottt", 1)]
    for r in csv.itertuples():
        d = root / "smoke" / r.row / f"seed{r.seed}"
        assert r.value == pytest.approx(expected_value(d), abs=1e-9)
        assert r.shortened and r.epochs == 1 and r.devices == 1 and r.device_hours > 0
        assert r.images_per_s > 0 and r.sops_per_sample > 0 and r.energy_uj_per_sample > 0
    # different seeds train different networks
    per_row = csv.groupby("row")["value"]
    assert (per_row.nunique() == 2).all() or (per_row.std() >= 0).all()
    md = (root / "smoke" / "results.md").read_text()
    mean = csv[csv.row == "fmnist_mlp_bptt"]["value"].mean()
    assert f"{mean:.2f} ± " in md and "shortened" in md
    assert "fmnist_mlp_bptt" in out and "verdict" in out
    # a third launch trains nothing: every run is done
    code, again, _ = suite_here("run", "smoke", "--rows", TWO_ROWS, "--root", root)
    assert code == 0 and "started" not in again
    assert again.count(": done") == 4


@pytest.mark.slow
def test_a_killed_run_resumes_alone_and_ends_as_an_uninterrupted_one(tmp_path, data_root, suite_here):
    extra = tiny(data_root, "--trainer.max_epochs=2", "--trainer.limit_train_batches=10",
                 "--checkpoint.every_n_train_steps=2")
    done_root, killed_root = tmp_path / "straight", tmp_path / "killed"
    code, out, err = suite_here("run", "smoke", "--rows", "fmnist_mlp_bptt", "--seeds", "0", "--root", done_root,
                                "--", *extra)
    assert code == 0, out + err
    # seed 1 finishes first; seed 0 is killed mid-training (kill -9 of its launch: no handler runs)
    assert suite_here("run", "smoke", "--rows", "fmnist_mlp_bptt", "--seeds", "1", "--root", killed_root,
                      "--", *extra)[0] == 0
    other = killed_root / "smoke" / "fmnist_mlp_bptt" / "seed1" / "result.json"
    other_mtime = other.stat().st_mtime
    d = killed_root / "smoke" / "fmnist_mlp_bptt" / "seed0"
    proc = subprocess.Popen(suite_cmd("run", "smoke", "--rows", "fmnist_mlp_bptt", "--seeds", "0", "--root",
                                      str(killed_root), "--", *extra), cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (d / "checkpoints" / "last.ckpt").is_file():
        assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint before the run ended"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    while True:  # the launch's training child too is gone (until then its lock reads "running")
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "the killed launch's processes did not end"
        time.sleep(0.05)
    assert not (d / "result.json").exists()
    status = suite_here("status", "smoke", "--rows", "fmnist_mlp_bptt", "--root", killed_root)[1]
    assert "seed0 | interrupted" in status and "seed1 | done" in status, status
    code, out, err = suite_here("run", "smoke", "--rows", "fmnist_mlp_bptt", "--root", killed_root, "--", *extra)
    assert code == 0, out + err
    assert "fmnist_mlp_bptt/seed0: started" in out and "seed1: started" not in out
    assert other.stat().st_mtime == other_mtime
    attempts = [json.loads(x) for x in (d / "attempts.jsonl").read_text().splitlines()]
    assert attempts[-2]["resumed_from"].endswith("last.ckpt")
    straight = json.loads((done_root / "smoke" / "fmnist_mlp_bptt" / "seed0" / "result.json").read_text())
    resumed = json.loads((d / "result.json").read_text())
    for key in ("final", "best", "value", "epochs", "sops_per_sample"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-6), key
    # a result names what made it: the checkout's commit, the CPU and its threads
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert resumed["commit"] in (head, head + "+dirty") and resumed["cpu"] and resumed["cpu_threads"] >= 1
    # the commit is the one each attempt started from (read before training), not the checkout's at the end
    started = [json.loads(x).get("commit") for x in (d / "attempts.jsonl").read_text().splitlines()]
    assert resumed["commit"] == ", ".join(dict.fromkeys(c for c in started if c))


@pytest.mark.slow
def test_a_failing_row_is_reported_and_the_others_finish(tmp_path, data_root, suite_here):
    root_of = {"ok": data_root, "breaks": data_root, "nodata": tmp_path / "empty"}
    path = write_suite(tmp_path / "mixed.yaml", [
        row("ok", overrides=[f"--data.root={data_root}"]),
        row("breaks", overrides=[f"--data.root={data_root}", "--trainer.callbacks+=failing_callback.FailAtStep"]),
        row("nodata", overrides=[f"--data.root={root_of['nodata']}"]),
    ], seeds=[0])
    (tmp_path / "empty").mkdir()
    extra = [a for a in tiny(data_root) if not a.startswith("--data.root")]
    code, out, err = suite_here("run", path, "--root", tmp_path / "runs", "--", *extra)
    assert code == 1, out + err
    assert "ok/seed0: done" in out
    assert "breaks/seed0: failed: RuntimeError: deliberate failure at step 2" in out, out
    assert "nodata/seed0: not run: no data" in out
    failed = json.loads((tmp_path / "runs" / "mixed" / "breaks" / "seed0" / "failed.json").read_text())
    assert failed["error"].endswith("deliberate failure at step 2")
    # not retried without --retry-failed
    out = suite_here("run", path, "--root", tmp_path / "runs", "--", *extra)[1]
    assert "breaks/seed0: failed" in out and "started" not in out
    rows, _ = write_report(load_suite(path), Options(root=tmp_path / "runs"))
    assert rows.set_index("row")["verdict"].to_dict() == {"ok": "shortened", "breaks": "not run", "nodata": "not run"}


@pytest.mark.slow
def test_two_concurrent_launches_never_train_a_run_twice(two_launches):
    root, launches = two_launches
    outs = [out for _, out in launches]
    for r in TWO_ROWS.split(","):
        for seed in (0, 1):
            d = root / "smoke" / r / f"seed{seed}"
            starts = [a for a in map(json.loads, (d / "attempts.jsonl").read_text().splitlines()) if "start" in a]
            assert len(starts) == 1, outs
            assert (d / "result.json").is_file()
            assert len(list((d / "logs").glob("attempt*"))) == 1
    assert sum(o.count(": started") for o in outs) >= 4


# ------------------------------------------------------------------ SLURM and Ray launchers
@pytest.mark.slow
def test_slurm_launcher_runs_one_array_task_per_run(slurm_cluster, submit_env, tmp_path, data_root, suite_here):
    from test_slurm import wait_gone

    root = tmp_path / "runs"
    code, out, err = suite_here("run", "smoke", "--rows", TWO_ROWS, "--root", root, "--launcher", "slurm",
                                "--partition", slurm_cluster, "--time", "10", "--accelerator", "cpu",
                                "--max-concurrent", "2", "--", *tiny(data_root))
    assert code == 0, out + err
    job = out.split("submitted job array ")[1].split(":")[0]
    script = next((root / "smoke" / "slurm").glob("*.sbatch")).read_text()
    assert "#SBATCH --array=0-3%2" in script and "#SBATCH --requeue" in script
    wait_gone(job, 600)
    out = suite_here("report", "smoke", "--rows", TWO_ROWS, "--root", root)[1]
    csv = pd.read_csv(root / "smoke" / "results.csv")
    assert len(csv) == 4, out + "".join(p.read_text() for p in (root / "smoke" / "slurm").glob("*.out"))
    for r in csv.itertuples():
        assert r.value == pytest.approx(expected_value(root / "smoke" / r.row / f"seed{r.seed}"), abs=1e-9)


def test_slurm_dry_run_prints_the_array_script_without_a_cluster(tmp_path, data_root, capsys):
    code = suite_main(["run", "smoke", "--root", str(tmp_path / "runs"), "--launcher", "slurm", "--partition", "debug",
                       "--time", "1-00:00:00", "--gpus-per-run", "2", "--dry-run", "--no-measure", "--",
                       f"--data.root={data_root}"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "#SBATCH --array=0-5" in out.out and "#SBATCH --gpus-per-node=2" in out.out
    assert "--trainer.devices=2" in out.out and "--trainer.strategy=ddp" in out.out
    assert "6 runs, 6 to train" in out.out and not (tmp_path / "runs").exists()


@pytest.mark.skipif(gpu_here(), reason="the refusal is for a machine without a GPU")
def test_slurm_dry_run_without_a_gpu_says_how_to_get_the_plan(tmp_path, capsys, data_root):
    """The estimate would time GPU steps: one line naming --no-measure / --accelerator cpu (not an
    option the user never typed), exit 2, nothing written; --accelerator cpu then gives the plan."""
    path = write_suite(tmp_path / "s.yaml", [row("a")], seeds=[0])
    root = tmp_path / "runs"
    opts = ["run", str(path), "--root", str(root), "--launcher", "slurm", "--partition", "debug",
            "--time", "00:10:00", "--dry-run"]
    extra = [a for a in tiny(data_root) if not a.startswith("--trainer.accelerator")]
    assert suite_main([*opts, "--", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "step-time estimate" in err[-1] and "this machine has none" in err[-1], err
    assert "--no-measure" in err[-1] and "--accelerator cpu" in err[-1] and "trainer.accelerator" not in err[-1]
    assert not root.exists()
    assert suite_main([*opts, "--accelerator", "cpu", "--", *extra]) == 0
    out = capsys.readouterr().out
    assert "| cpu:1" in out and "measured on cpu" in out, out
    assert not root.exists()


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # one local Ray at a time (2 CPUs each)
def test_ray_launcher_runs_each_run_as_a_task_on_a_local_ray(tmp_path, data_root):
    root = tmp_path / "runs"
    res = run_suite("run", "smoke", "--rows", "mnist_mlp_ottt", "--root", str(root), "--launcher", "ray",
                    "--num-cpus", "2", "--", *tiny(data_root))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for seed in (0, 1):
        d = root / "smoke" / "mnist_mlp_ottt" / f"seed{seed}"
        result = json.loads((d / "result.json").read_text())
        assert result["value"] == pytest.approx(expected_value(d), abs=1e-9)
        # in the trial's process too, "1" is one batch (an int), not every batch (1.0)
        assert all(type(result["trainer"][f"limit_{s}_batches"]) is int for s in ("val", "test")), result["trainer"]
    assert "mnist_mlp_ottt/seed0: done" in res.stdout and "mnist_mlp_ottt/seed1: done" in res.stdout


@pytest.mark.slow
def test_wandb_runs_are_grouped_by_suite_and_row_and_the_report_is_a_table(tmp_path, data_root, suite_here):
    from wandb_offline import history, run_info

    root = tmp_path / "runs"
    code, out, err = suite_here("run", "smoke", "--rows", "fmnist_mlp_bptt", "--seeds", "0", "--root", root,
                                "--wandb-project", "suites", "--", *tiny(data_root))
    assert code == 0, out + err
    files = list((root / "smoke" / "fmnist_mlp_bptt" / "seed0").rglob("run-*.wandb"))
    assert len(files) == 1
    info = run_info(files[0])
    assert info["group"] == "smoke/fmnist_mlp_bptt" and info["project"] == "suites"
    assert "smoke" in info["tags"] and any("test/acc" in h for h in history(files[0]))
    res = run_suite("report", "smoke", "--rows", "fmnist_mlp_bptt", "--root", str(root), "--wandb-project", "suites")
    assert res.returncode == 0, res.stderr
    summary = list((root / "smoke").glob("wandb/offline-run-*/run-*.wandb"))
    assert len(summary) == 1
    info = run_info(summary[0])
    assert info["job_type"] == "suite-report" and info["group"] == "smoke"
    logged = {k: v for h in history(summary[0]) for k, v in h.items()}
    assert {"suite/rows", "suite/runs", "suite/plot"} <= {"/".join(k.split("/")[:2]) for k in logged}, logged
    assert logged["suite/rows/_type"] == "table-file" and logged["suite/rows/nrows"] == 1
    assert logged["suite/runs/nrows"] == 1 and logged["suite/plot/_type"] == "image-file"
