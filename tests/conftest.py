import os
import pickle
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


def write_cifar100_layout(src: Path, root: Path) -> None:
    """CIFAR-100's file layout filled with the 20 real CIFAR-10 images of ``src`` (labels l*10+3):
    no package ships CIFAR-100, so its reader is tested on these."""
    batch = pickle.load(open(src / "cifar-10-batches-py" / "test_batch", "rb"), encoding="latin1")
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name in ("train", "test"):
        labels = [label * 10 + 3 for label in batch["labels"]]
        pickle.dump({"data": batch["data"], "fine_labels": labels}, open(folder / name, "wb"))
    pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, open(folder / "meta", "wb"))


@pytest.fixture(scope="session")
def all_data_root(data_root: Path, tmp_path_factory) -> Path:
    """The offline data sets plus a CIFAR-100 layout (see ``write_cifar100_layout``)."""
    root = tmp_path_factory.mktemp("data")
    for name in ("MNIST", "FashionMNIST", "cifar-10-batches-py"):
        (root / name).symlink_to(data_root / name)
    write_cifar100_layout(data_root, root)
    return root


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    """The CLI is called with explicit args in tests; keep pytest's own argv out of its view."""
    monkeypatch.setattr("sys.argv", ["lightning-snn"])
