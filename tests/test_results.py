"""The published results (``results/``): every table there is rebuilt from its result files by the
report's own code and must equal the committed one (no hand edits), the README's "Reproduced so far"
block equals the summary, and ``suite publish`` never replaces a published result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_snn.suite import publish
from lightning_snn.suite.__main__ import main as suite_main
from lightning_snn.suite.report import write_report
from lightning_snn.suite.spec import Options
from procs import ROOT

RESULTS = ROOT / "results"
PUBLISHED = [s.name for s in publish.published_suites(RESULTS)] if RESULTS.is_dir() else []


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_tables_are_rebuilt_identically_from_their_result_files(name, tmp_path):
    suite = next(s for s in publish.published_suites(RESULTS) if s.name == name)
    folder = RESULTS / name
    files = sorted(folder.glob("*/seed*/result.json"))
    assert files, f"{folder} has tables but no result files"
    for f in files:  # the folder a result sits in is its identity
        result = json.loads(f.read_text())
        assert (result["row"], f"seed{result['seed']}") == (f.parent.parent.name, f.parent.name), f
        assert result.get("commit") and result.get("device") and result.get("wall_s"), f
        assert not any(str(a).startswith("/") for a in result.get("args", [])), f"{f} names a machine's folder"
    write_report(suite, Options(root=RESULTS), out=tmp_path)
    for table in ("results.md", "results.csv"):
        assert (tmp_path / table).read_text() == (folder / table).read_text(), f"{folder / table} differs from a rebuild"
    assert (folder / "results.png").is_file()


def test_summary_and_readme_block_match_the_published_results():
    if not PUBLISHED:
        pytest.fail("results/ holds no published suite")
    assert (RESULTS / publish.SUMMARY).read_text() == publish.summary(RESULTS)
    readme = (ROOT / "README.md").read_text()
    assert publish.readme_block(RESULTS) in readme, "README's reproduced block is stale: run `suite publish`"


def _result(row: str, seed: int, value: float) -> dict:
    return {"suite": "smoke", "row": row, "seed": seed, "metric": "test/acc", "protocol": "final", "value": value,
            "final": value, "best": None, "best_epoch": None, "epochs": 1, "shortened": False, "wall_s": 60.0,
            "device": "cpu (x86_64)", "devices": 1, "device_hours": 60.0 / 3600, "commit": "abc"}


def test_published_command_lines_name_no_machine_folder(tmp_path):
    inside, outside = str(publish.CHECKOUT / "configs" / "suites" / "ide.yaml"), "/somewhere/else/runs"
    got = publish.portable({"args": ["execute", inside, "--root", outside, "--row", "r"]})
    assert got["args"] == ["execute", "configs/suites/ide.yaml", "--root", "runs", "--row", "r"]


def test_publish_copies_results_rebuilds_tables_and_never_replaces_one(tmp_path, monkeypatch):
    runs, to = tmp_path / "runs", tmp_path / "results"
    for seed, value in ((0, 80.0), (1, 82.0)):
        d = runs / "smoke" / "fmnist_mlp_bptt" / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(_result("fmnist_mlp_bptt", seed, value)))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{publish.BEGIN}\nold\n{publish.END}\n\nafter\n")
    argv = ["publish", "smoke", "--root", str(runs), "--to", str(to), "--readme", str(readme)]
    assert suite_main(argv) == 0
    md = (to / "smoke" / "results.md").read_text()
    assert "| fmnist_mlp_bptt " in md and "81.00 ± 1.41" in md  # mean and sample std of 80, 82
    summary = (to / publish.SUMMARY).read_text()
    assert "81.00 ± 1.41" in summary and "fmnist_f400_ide_t5" not in summary  # rows without runs left out
    assert readme.read_text() == f"# x\n\n{publish.readme_block(to)}\n\nafter\n"
    assert suite_main(argv) == 0  # identical files: nothing to do, nothing changed
    # a different result for a published (row, seed) is refused and the published one kept
    (runs / "smoke" / "fmnist_mlp_bptt" / "seed0" / "result.json").write_text(
        json.dumps(_result("fmnist_mlp_bptt", 0, 99.0)))
    before = (to / "smoke" / "fmnist_mlp_bptt" / "seed0" / "result.json").read_text()
    assert suite_main(argv) == 2
    assert (to / "smoke" / "fmnist_mlp_bptt" / "seed0" / "result.json").read_text() == before
