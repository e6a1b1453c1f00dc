import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LIGHTNING_SNN_DATA", ROOT / "data"))

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Without a GPU the Triton neuron kernels run on CPU under Triton's interpreter; it must be chosen
# before triton is first imported (lightning_snn.kernels imports it).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# ------------------------------------------------------------------ parallel test runs (pytest-xdist)
MAX_WORKERS = 8  # each worker imports torch, Lightning and Ray (~1.5 GB)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (pyproject's addopts): two workers per CPU this process may use (its affinity
    mask, not the host's core count), at most ``MAX_WORKERS``; with one CPU the tests run in this
    process (0). Two, because the end-to-end tests spend about half their time waiting on the
    processes they start (SLURM jobs, Ray, DDP ranks coming up): one worker per CPU kept the CPUs
    busy 55% of the run. ``PYTEST_XDIST_AUTO_NUM_WORKERS`` overrides."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "").isdigit():
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    cpus = len(os.sched_getaffinity(0))
    return min(2 * cpus, MAX_WORKERS) if cpus > 1 else 0


def _worker_threads() -> None:
    """In a worker: torch threads (and those of the processes a test starts: DDP ranks, jobs, trials)
    = the CPUs shared by the workers, so that N workers do not run N x CPUs busy threads. An
    ``OMP_NUM_THREADS`` set by the caller is kept."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


_worker_threads()


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


def saccade_events(image: np.ndarray, rng: np.random.Generator, size: int, steps: int = 12,
                   period_us: int = 100_000) -> np.ndarray:
    """Events of ``image`` (H x W, 0..255) moved by three saccades over a ``size`` x ``size`` sensor:
    an ON (OFF) event where brightness rose (fell) by > 20% between sub-steps of a saccade, the way
    an event camera sees a still image on a moving stage. SYNTHETIC: no package ships N-MNIST or
    CIFAR10-DVS, so the readers, binning and training path are tested on these."""
    from lightning_snn.data.events import EVENTS

    h, w = image.shape
    top, left = (size - h) // 2, (size - w) // 2
    path = [(0, 0), (1, 2), (2, 0), (0, 0)]  # corners of N-MNIST's triangular saccade
    frames = []
    for s in range(3):
        (y0, x0), (y1, x1) = path[s], path[s + 1]
        for k in range(steps + 1):
            dy, dx = round(y0 + (y1 - y0) * k / steps), round(x0 + (x1 - x0) * k / steps)
            f = np.zeros((size, size))
            f[top + dy: top + dy + h, left + dx: left + dx + w] = image / 255.0
            frames.append((s * period_us + k * period_us // steps, f))
    out = []
    for (_, prev), (t, cur) in zip(frames, frames[1:]):
        diff = cur - prev
        for p, mask in ((1, diff > 0.2), (0, diff < -0.2)):
            y, x = np.nonzero(mask)
            ev = np.zeros(len(x), dtype=EVENTS)
            ev["x"], ev["y"], ev["p"] = x, y, p
            ev["t"] = t + rng.integers(0, period_us // steps, len(x))
            out.append(ev)
    ev = np.concatenate(out)
    return ev[np.argsort(ev["t"], kind="stable")]


def write_synthetic_nmnist(mnist_raw: Path, root: Path, n_train: int = 40, n_test: int = 20) -> None:
    """``<root>/NMNIST/{Train,Test}/<digit>/<i>.bin`` from real MNIST digits (see
    ``saccade_events``)."""
    from lightning_snn.data.events import write_nmnist

    rng = np.random.default_rng(0)
    for split, prefix, n in (("Train", "train", n_train), ("Test", "t10k", n_test)):
        images = np.fromfile(mnist_raw / f"{prefix}-images-idx3-ubyte", np.uint8, n * 784, offset=16)
        labels = np.fromfile(mnist_raw / f"{prefix}-labels-idx1-ubyte", np.uint8, n, offset=8)
        for i, (img, label) in enumerate(zip(images.reshape(n, 28, 28), labels)):
            folder = root / "NMNIST" / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            write_nmnist(folder / f"{i:05d}.bin", saccade_events(img, rng, 34))


def write_synthetic_cifar10_dvs(cifar_root: Path, root: Path) -> None:
    """``<root>/CIFAR10DVS/<class>/<i>.aedat`` (AER-DAT 2) from the 20 real CIFAR-10 images,
    upscaled to 96 px grey on the 128 x 128 sensor (see ``saccade_events``)."""
    from PIL import Image

    from lightning_snn.data.events import CIFAR10_CLASSES, write_aedat2

    batch = pickle.load(open(cifar_root / "cifar-10-batches-py" / "test_batch", "rb"), encoding="latin1")
    rng = np.random.default_rng(0)
    images = batch["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    for i, (img, label) in enumerate(zip(images, batch["labels"])):
        grey = np.asarray(Image.fromarray(img).convert("L").resize((96, 96)), dtype=np.float64)
        folder = root / "CIFAR10DVS" / CIFAR10_CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        write_aedat2(folder / f"{i:04d}.aedat", saccade_events(grey, rng, 128))


def write_synthetic_dvs_gesture(mnist_raw: Path, root: Path, users: tuple[int, ...] = (1, 2, 24, 25),
                                gestures: int = 4) -> None:
    """``<root>/DvsGesture`` in the release's layout: per trial ``userNN_led.aedat`` (AEDAT 3.1,
    ``lightning_snn.data.gesture.write_aedat3``) and ``userNN_led_labels.csv``, and the split files
    (users < 24 train). Each trial holds ``gestures`` labelled segments (classes 1, 2, ...; each
    the saccade events of a real MNIST digit, see ``saccade_events``) with unlabelled events between
    them. SYNTHETIC: the release cannot be downloaded here, so the reader, the per-gesture
    samples, the split and the training path are tested on these."""
    from lightning_snn.data.gesture import write_aedat3

    rng = np.random.default_rng(1)
    folder = root / "DvsGesture"
    folder.mkdir(parents=True)
    images = np.fromfile(mnist_raw / "t10k-images-idx3-ubyte", np.uint8, 16 * 784, offset=16).reshape(16, 28, 28)
    for u in users:
        name = f"user{u:02d}_led"
        parts, rows, t0 = [], ["class,startTime_usec,endTime_usec"], 1_000
        for g in range(gestures):
            noise = saccade_events(images[(u + g + 7) % 16], rng, 128, steps=4)[:50]
            noise["t"] = t0 + (noise["t"] % 50_000)
            ev = saccade_events(images[(u + g) % 16], rng, 128)
            ev["t"] += t0 + 100_000
            parts += [noise[np.argsort(noise["t"])], ev]
            rows.append(f"{g % 11 + 1},{t0 + 100_000},{int(ev['t'].max()) + 1}")
            t0 = int(ev["t"].max()) + 10_000
        write_aedat3(folder / f"{name}.aedat", np.concatenate(parts), packet_size=1000)
        (folder / f"{name}_labels.csv").write_text("\n".join(rows) + "\n")
    train = [f"user{u:02d}_led.aedat" for u in users if u < 24]
    test = [f"user{u:02d}_led.aedat" for u in users if u >= 24]
    (folder / "trials_to_train.txt").write_text("\n".join(train) + "\n")
    (folder / "trials_to_test.txt").write_text("\n".join(test) + "\n")


@pytest.fixture(scope="session")
def event_data_root(data_root: Path, tmp_path_factory) -> Path:
    """Synthetic N-MNIST, CIFAR10-DVS and DVS128 Gesture recordings (see ``saccade_events``)."""
    root = tmp_path_factory.mktemp("events")
    write_synthetic_nmnist(data_root / "MNIST" / "raw", root)
    write_synthetic_cifar10_dvs(data_root, root)
    write_synthetic_dvs_gesture(data_root / "MNIST" / "raw", root)
    return root


@pytest.fixture(scope="session")
def all_data_root(data_root: Path, event_data_root: Path, tmp_path_factory) -> Path:
    """The offline data sets plus a CIFAR-100 layout (see ``write_cifar100_layout``) and the
    synthetic event data sets."""
    root = tmp_path_factory.mktemp("data")
    for name in ("MNIST", "FashionMNIST", "cifar-10-batches-py"):
        (root / name).symlink_to(data_root / name)
    for name in ("NMNIST", "CIFAR10DVS", "DvsGesture"):
        (root / name).symlink_to(event_data_root / name)
    write_cifar100_layout(data_root, root)
    return root


@pytest.fixture(scope="session")
def shared_mlp_checkpoint(tmp_path_factory):
    """``hidden -> path`` of ``procs.mlp_checkpoint(path, hidden)``, made once per test run and shared
    by all xdist workers (a file lock around the first writer): tests read it, never change it."""
    from filelock import FileLock

    from procs import mlp_checkpoint

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared_checkpoints"
    root.mkdir(exist_ok=True)

    def get(hidden: int) -> Path:
        path = root / f"mlp{hidden}.ckpt"
        with FileLock(str(path) + ".lock"):
            if not path.exists():
                tmp = mlp_checkpoint(root / f".mlp{hidden}.{os.getpid()}.ckpt", hidden)
                os.replace(tmp, path)
        return path

    return get


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    """The CLI is called with explicit args in tests; keep pytest's own argv out of its view."""
    monkeypatch.setattr("sys.argv", ["lightning-snn"])


# ------------------------------------------------------------------ the local SLURM cluster
from procs import DIST_VARS  # noqa: E402

SLURM_CLUSTER = ROOT / "slurm" / "local_cluster"
SLURM_PARTITION = "debug"


def _controller_up() -> bool:
    if shutil.which("scontrol") is None:
        return False
    return subprocess.run(["scontrol", "ping"], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running local cluster with partition ``debug``; stopped after the test run if started here."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("the local SLURM cluster needs root and apt-get (Debian): slurm/local_cluster/start.sh")
    was_up = _controller_up()
    subprocess.run(["bash", str(SLURM_CLUSTER / "start.sh")], check=True, timeout=900)
    yield SLURM_PARTITION
    if not was_up:
        subprocess.run(["bash", str(SLURM_CLUSTER / "stop.sh")], timeout=300)


# fixture -> xdist group of the tests that use it: a module-scoped fixture that trains or writes
# files is built once per worker that runs one of its tests, so its tests share one worker
SHARED_FIXTURE_GROUPS = {
    "slurm_cluster": "slurm",  # one controller per machine, started and stopped by that worker's
    # session fixture; jobs of two tests at once would queue behind each other on its one node
    "trained": "trained",  # test_failures: one tiny fit whose checkpoints a dozen tests read
    "fmnist_beton": "fmnist_beton",  # test_ffcv: the F-MNIST test split as a .beton
    "betons": "betons",  # test_ffcv: F-MNIST train / test, MNIST and CIFAR-10 .beton files
    "two_launches": "two_launches",  # test_suite: two concurrent launches of the smoke suite's rows
}


# Where the workers tell the controller each test's group. xdist's own loadgroup renames the test
# ("id@group"), which pytest >= 9.2 ignores (a node's id is no longer a settable attribute): the
# groups are sent beside the tests instead and FixtureGroupScheduling reads them.
GROUPS_DIR = "LIGHTNING_SNN_XDIST_GROUPS"


def pytest_configure(config) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # the controller, before it starts the workers
        import tempfile

        os.environ[GROUPS_DIR] = tempfile.mkdtemp(prefix="lightning-snn-xdist-groups-")


def _group_of(item) -> str | None:
    """The ``xdist_group`` mark's name, else the group of a fixture of ``SHARED_FIXTURE_GROUPS``."""
    names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                    for m in item.iter_markers("xdist_group")})
    if names:
        return "_".join(names)
    return next((SHARED_FIXTURE_GROUPS[f] for f in getattr(item, "fixturenames", ())
                 if f in SHARED_FIXTURE_GROUPS), None)


def pytest_collection_modifyitems(config, items) -> None:
    """In a worker: write ``{test id: group}`` for the controller's scheduler."""
    worker, folder = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get(GROUPS_DIR)
    if not worker or not folder or not os.path.isdir(folder):
        return
    import json

    groups = {item.nodeid: g for item in items if (g := _group_of(item))}
    tmp = os.path.join(folder, f".{worker}.json")
    with open(tmp, "w") as f:
        json.dump(groups, f)
    os.replace(tmp, os.path.join(folder, f"{worker}.json"))  # whole, before collection ends


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup``: tests of one group (``xdist_group`` mark or ``SHARED_FIXTURE_GROUPS``)
    go to one worker, one after another; the others are spread as they finish, biggest groups first."""
    if config.getvalue("dist") != "loadgroup":
        return None
    import json

    from xdist.scheduler import LoadScopeScheduling

    folder = os.environ[GROUPS_DIR]

    class FixtureGroupScheduling(LoadScopeScheduling):
        _groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self._groups is None:  # every worker has collected (and written its file) by now
                files = sorted(f for f in os.listdir(folder) if f.endswith(".json") and not f.startswith("."))
                self._groups = json.loads(open(os.path.join(folder, files[0])).read()) if files else {}
            return "group:" + self._groups[nodeid] if nodeid in self._groups else nodeid

    return FixtureGroupScheduling(config, log)


def pytest_unconfigure(config) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get(GROUPS_DIR):
        shutil.rmtree(os.environ.pop(GROUPS_DIR), ignore_errors=True)


@pytest.fixture
def submit_env(monkeypatch):
    """sbatch exports the submitting environment: keep distributed variables of this process out of it."""
    for var in DIST_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))




@pytest.fixture
def suite_here(submit_env, monkeypatch, capsys):
    """``python -m lightning_snn.suite ARGS`` run in this process as a shell in the checkout would
    (``submit_env``'s environment without SLURM variables, tests/ importable too): returns (exit
    status, stdout, stderr). The runs it launches are child processes as ever; what is saved is a
    second process importing Lightning only to launch them."""
    from lightning_snn.suite.__main__ import main

    for var in [v for v in os.environ if v.startswith("SLURM_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "tests"), os.environ["PYTHONPATH"]]))
    monkeypatch.chdir(ROOT)

    def run(*args) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(params=["under a file", "read-only mount"])
def unwritable_dir(request, tmp_path) -> Path:
    """A folder path this process cannot create files in, even as root (where mode bits such as
    ``chmod 0500`` do not stop writes): a path under a regular file, or a read-only tmpfs mount
    (skipped where mounting is not permitted)."""
    if request.param == "under a file":
        (tmp_path / "a-file").write_text("not a folder\n")
        yield tmp_path / "a-file" / "runs"
        return
    mount = tmp_path / "read-only"
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mount)],
                         capture_output=True, text=True)
    if res.returncode:
        pytest.skip(f"a read-only tmpfs cannot be mounted here: {res.stderr.strip() or res.returncode}")
    try:
        yield mount / "runs"
    finally:
        subprocess.run(["umount", str(mount)], check=True)
