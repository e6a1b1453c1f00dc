import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LIGHTNING_SNN_DATA", ROOT / "data"))

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA / "FashionMNIST" / "raw").is_dir():
        pytest.fail(f"offline data missing under {DATA}: run `bash scripts/fetch_data.sh {DATA}`")
    return DATA


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    """The CLI is called with explicit args in tests; keep pytest's own argv out of its view."""
    monkeypatch.setattr("sys.argv", ["lightning-snn"])
