"""The installed package, not the checkout: ``pip install .`` into a fresh virtual environment and run
the commands from a directory outside the checkout (templates and spaces are package data)."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _checkout_modules() -> list[str]:
    """Every module of the checkout under the name it is installed as."""
    out = []
    for top, name in (("lightning_snn", "lightning_snn"), ("tune", "lightning_snn_tune")):
        for f in sorted((ROOT / top).rglob("*.py")):
            parts = f.relative_to(ROOT / top).with_suffix("").parts
            if parts[-1] == "__main__":
                continue
            out.append(".".join((name, *parts[:-1])) if parts[-1] == "__init__" else ".".join((name, *parts)))
    return out


def _run(cmd: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_installed_wheel_renders_jobs_outside_the_checkout(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout (its tracked files are what is installed)")
    src = tmp_path / "src"  # a copy of the checkout's files: building writes no egg-info into it
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for rel in files:
        if (ROOT / rel).is_file() and not rel.startswith("data/"):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LIGHTNING_SNN_DEBUG")}
    new_site = Path(_run([py, "-c", "import site; print(site.getsitepackages()[0])"], tmp_path, env).stdout.strip())
    # the dependencies (torch, Lightning, Ray; setuptools to build) from this environment's
    # site-packages, as a plain path: its .pth files (an editable install of a checkout) are not run
    (new_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # this environment's pip installs into the new one: no dependencies, no build isolation (offline)
    r = _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-build-isolation",
              "--no-index", src], tmp_path, env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    r = _run([py, "-c", "import importlib, sys, lightning_snn\n"
              "assert lightning_snn.__file__.startswith(sys.prefix), lightning_snn.__file__\n"
              f"for m in {_checkout_modules()!r}: importlib.import_module(m)\n"
              "import importlib.util; print('tune:', importlib.util.find_spec('tune'))"], outside, env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tune: None" in r.stdout  # no generic top-level `tune` installed

    config = ROOT / "configs" / "fmnist_mlp_bptt.yaml"
    r = _run([py, "-m", "lightning_snn.slurm", "submit", "--config", config, "--time", "10", "--partition",
              "debug", "--dry-run", "--", "--trainer.max_epochs=1"], outside, env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "#SBATCH --partition=debug" in r.stdout and "--trainer.max_epochs=1" in r.stdout
    assert "-m lightning_snn fit" in r.stdout and not any(outside.iterdir())
    r = _run([py, "-m", "lightning_snn.slurm", "submit", "--config", config, "--time", "10", "--partition",
              "debug", "--dry-run", "--", "--model.T", "abc"], outside, env)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: the training command line")

    spaces = new_site / "lightning_snn_tune" / "spaces"
    r = _run([py, "-m", "lightning_snn_tune.slurm_submit", "--nodes", "2", "--dry-run", "--", "--config", config,
              "--space", spaces / "threshold_T.yaml", "--num-samples", "2"], outside, env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "#SBATCH --nodes=2" in r.stdout and "-m lightning_snn_tune.sweep --address auto --config" in r.stdout


def test_a_missing_test_dependency_fails_in_ci_and_skips_elsewhere(monkeypatch):
    """``procs.require`` (the ffcv, deepspeed, SpikingJelly and bench tests): under LIGHTNING_SNN_CI a
    missing package fails naming it; elsewhere it skips."""
    from procs import require

    monkeypatch.setenv("LIGHTNING_SNN_CI", "1")
    with pytest.raises(pytest.fail.Exception, match="no_such_package_x cannot be imported .*CI requires it"):
        require("no_such_package_x")
    monkeypatch.delenv("LIGHTNING_SNN_CI")
    with pytest.raises(pytest.skip.Exception):
        require("no_such_package_x")
    assert require("json").dumps([1]) == "[1]"
