"""FFCV: real .beton files written from real data, read back with FFCV's Loader."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torchvision import datasets

from lightning_snn.cli import main
from lightning_snn.data import VisionDataModule
from lightning_snn.data.ffcv import BetonError, check_beton, ffcv_loader, write_beton
from lightning_snn.data.vision import CIFAR10Unverified
from procs import require

require("ffcv", reason="ffcv is not installed (scripts/setup.sh installs it)")

IDENTITY = dict(mean=(0.0,), std=(1 / 255,))  # NormalizeBatch then returns raw pixel values


def read_all(loader):
    xs, ys = zip(*[(x, y) for x, y in loader])
    return torch.cat(xs), torch.cat(ys)


def test_fashion_mnist_roundtrip_is_exact(tmp_path, data_root):
    ds = datasets.FashionMNIST(str(data_root), train=False)
    path = write_beton(ds, tmp_path / "fm.beton", gray=True)
    assert check_beton(path) == 10_000
    x, y = read_all(ffcv_loader(path, pipeline="gray", train=False, batch_size=1000, num_workers=2, **IDENTITY))
    assert x.shape == (10_000, 1, 28, 28) and y.dtype == torch.int64
    assert torch.equal(x, ds.data.unsqueeze(1).float()) and torch.equal(y, ds.targets)


@pytest.mark.parametrize("mode", ["raw", "jpg"])
def test_cifar10_images_roundtrip(mode, tmp_path, data_root):
    ds = CIFAR10Unverified(str(data_root), train=False)
    path = write_beton(ds, tmp_path / f"c_{mode}.beton", write_mode=mode, jpeg_quality=90)
    x, y = read_all(ffcv_loader(path, pipeline="cifar", train=False, batch_size=8, num_workers=1,
                                mean=(0.0,) * 3, std=(1 / 255,) * 3))
    ref = torch.tensor(ds.data).permute(0, 3, 1, 2).float()
    assert y.tolist() == ds.targets
    if mode == "raw":
        assert torch.equal(x, ref)
    else:  # JPEG at quality 90 on 32x32 images
        err = (x - ref).abs()
        assert 0 < err.mean() < 8 and err.max() < 100


def test_damaged_files_are_named_in_the_error(tmp_path, data_root):
    good = write_beton(CIFAR10Unverified(str(data_root), train=False), tmp_path / "c.beton")
    truncated = tmp_path / "truncated.beton"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.beton"
    garbage.write_bytes(os.urandom(4096))
    for bad in (truncated, garbage):
        with pytest.raises(BetonError, match=str(bad)):
            check_beton(bad)
        with pytest.raises(BetonError, match=str(bad)):
            ffcv_loader(bad, pipeline="cifar", train=True, batch_size=4, mean=(0,) * 3, std=(1,) * 3)
    with pytest.raises(FileNotFoundError, match="missing.beton does not exist"):
        check_beton(tmp_path / "missing.beton")


@pytest.fixture(scope="module")
def fmnist_beton(tmp_path_factory, data_root):
    """The real Fashion-MNIST test split (10,000 images) as a ``.beton``, and its data set."""
    ds = datasets.FashionMNIST(str(data_root), train=False)
    return write_beton(ds, tmp_path_factory.mktemp("beton") / "fm.beton", gray=True), ds


def _layout(path):
    """(allocation table offset, entry size, end of metadata) read from the file's own header."""
    from ffcv.reader import Reader
    from ffcv.types import ALLOC_TABLE_TYPE, FieldDescType, HeaderType

    r = Reader(str(path))
    meta_end = HeaderType.itemsize + r.num_fields * FieldDescType.itemsize + r.num_samples * r.metadata_type.itemsize
    return int(r.header["alloc_table_ptr"]), ALLOC_TABLE_TYPE.itemsize, meta_end


@pytest.mark.parametrize("cut", ["one_entry", "1000_entries", "mid_entry", "table_start", "data", "metadata",
                                 "header"])
def test_every_truncation_is_detected(cut, fmnist_beton, tmp_path):
    good, _ = fmnist_beton
    data = good.read_bytes()
    table, entry, meta_end = _layout(good)
    keep = {"one_entry": len(data) - entry, "1000_entries": len(data) - 1000 * entry,
            "mid_entry": len(data) - 5, "table_start": table, "data": (meta_end + table) // 2,
            "metadata": meta_end - 100, "header": 10}[cut]
    bad = tmp_path / f"cut_{cut}.beton"
    bad.write_bytes(data[:keep])
    with pytest.raises(BetonError, match=f"{bad} is damaged: .*write it again"):
        check_beton(bad)


@pytest.mark.parametrize("zeroed", ["header", "table", "one_entry", "metadata_pointer"])
def test_zeroed_header_or_allocation_table_is_detected(zeroed, fmnist_beton, tmp_path):
    good, _ = fmnist_beton
    data = bytearray(good.read_bytes())
    table, entry, meta_end = _layout(good)
    span = {"header": (0, 24), "table": (table, len(data)), "one_entry": (table + 500 * entry, table + 501 * entry),
            "metadata_pointer": (meta_end - 16, meta_end - 8)}[zeroed]  # last sample: (image ptr, label)
    data[span[0]:span[1]] = bytes(span[1] - span[0])
    bad = tmp_path / f"zeroed_{zeroed}.beton"
    bad.write_bytes(bytes(data))
    with pytest.raises(BetonError, match=f"{bad} is damaged"):
        check_beton(bad)


def test_appended_bytes_are_detected(fmnist_beton, tmp_path):
    good, _ = fmnist_beton
    bad = tmp_path / "longer.beton"
    bad.write_bytes(good.read_bytes() + bytes(24))
    with pytest.raises(BetonError, match="extra bytes at the end"):
        check_beton(bad)
    assert check_beton(good) == 10_000


def test_write_never_overwrites_or_leaves_partial_files(tmp_path, data_root):
    ds = CIFAR10Unverified(str(data_root), train=False)
    path = write_beton(ds, tmp_path / "c.beton")
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="c.beton exists"):
        write_beton(ds, path)
    assert path.read_bytes() == before

    class Broken:
        def __len__(self):
            return 20

        def __getitem__(self, i):
            if i == 13:
                raise OSError("unreadable image 13")
            return ds[i]

    with pytest.raises(RuntimeError, match="1 sample.* could not be read, .*broken.beton not written: "
                                           "sample 13: OSError: unreadable image 13"):
        write_beton(Broken(), tmp_path / "broken.beton", num_workers=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.beton", "c.beton.json"]


FULL_DISK_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from lightning_snn.data.ffcv import write_beton

    class Big:  # 48 samples of 1 MiB: 6 of FFCV's 8 MiB pages, more than the file system holds
        def __len__(self):
            return 48

        def __getitem__(self, i):
            return np.full((1024, 1024), i, dtype=np.uint8), i

    folder = sys.argv[1]
    start = time.monotonic()
    try:
        write_beton(Big(), os.path.join(folder, "big.beton"), gray=True, num_workers=2)
        print("written")
    except OSError as e:
        print(f"OSError after {time.monotonic() - start:.1f} s: {e}")
    print("left:", sorted(os.listdir(folder)))
""")


def _run_full_disk(tmp_path, folder, prefix=(), **kw):
    """The script's output; the writer processes print nothing (no traceback above the error)."""
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    r = subprocess.run([*prefix, sys.executable, str(script), str(folder)], capture_output=True, text=True,
                       timeout=120, env=env, **kw)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return r.stdout


@pytest.mark.slow
def test_write_onto_a_full_disk_fails_promptly_and_leaves_nothing(tmp_path):
    """A real 12 MiB tmpfs (in a private mount namespace): a writer process hits ENOSPC."""
    import shutil

    folder = tmp_path / "small_fs"
    folder.mkdir()
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            f"mount -t tmpfs -o size=12m tmpfs {folder}"], capture_output=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip(f"cannot mount a private tmpfs here: {probe.stderr.decode().strip()}")
    out = _run_full_disk(tmp_path, folder, prefix=(
        "unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
        f'mount -t tmpfs -o size=12m tmpfs {folder} && exec "$0" "$@"'))
    assert f"no space left on {folder} while writing big.beton; nothing was written" in out, out
    assert "left: []" in out, out


@pytest.mark.slow
def test_write_past_the_file_size_limit_fails_and_leaves_nothing(tmp_path):
    """RLIMIT_FSIZE (with SIGXFSZ ignored, writes past it fail with EFBIG) in the writer's processes."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (12 << 20, 12 << 20))

    folder = tmp_path / "out"
    folder.mkdir()
    out = _run_full_disk(tmp_path, folder, preexec_fn=limit)
    assert "OSError after" in out and "big.beton" in out and "File too large" in out, out
    assert "left: []" in out, out
    assert sorted(p.name for p in folder.iterdir()) == []


DDP_SCRIPT = textwrap.dedent("""
    import sys, torch, torch.distributed as dist, torch.multiprocessing as mp
    from lightning_snn.data.ffcv import ffcv_loader

    def run(rank, path, port, out):
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
        loader = ffcv_loader(path, pipeline="gray", train=True, batch_size=3, num_workers=1,
                             distributed=True, seed=5, drop_last=False, mean=(0.0,), std=(1.0,))
        seen = [int(v) for _, y in loader for v in y]
        torch.save(seen, f"{out}.{rank}")
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.spawn(run, args=tuple(sys.argv[1:]), nprocs=2)
""")


def test_two_process_ddp_reads_disjoint_shards_that_cover_the_set(tmp_path):
    class Indexed:  # the label of sample i is i, so each rank reports which samples it read
        def __len__(self):
            return 40

        def __getitem__(self, i):
            return torch.full((1, 4, 4), i, dtype=torch.uint8), i

    path = write_beton(Indexed(), tmp_path / "idx.beton", gray=True, num_workers=1)
    script = tmp_path / "ddp_ffcv.py"
    script.write_text(DDP_SCRIPT)
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "WORLD_SIZE", "RANK", "NODE_RANK")}
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([sys.executable, str(script), str(path), str(port), str(tmp_path / "seen")],
                   check=True, timeout=300, env=env)
    a, b = (torch.load(tmp_path / f"seen.{r}") for r in (0, 1))
    assert len(a) == len(b) == 20
    assert not set(a) & set(b) and sorted(a + b) == list(range(40))


def test_data_module_ffcv_backend_trains(tmp_path, data_root):
    args = ["fit", "--config", "configs/fmnist_mlp_bptt.yaml", f"--data.root={data_root}",
            "--data.dataset=cifar10", "--data.verify_md5=false", "--data.backend=ffcv",
            f"--data.beton_dir={tmp_path / 'betons'}", "--data.batch_size=4", "--data.num_workers=1",
            "--data.val_size=4", "--trainer.fast_dev_run=2", f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu"]
    cli = main(args)
    assert sorted(p.name for p in (tmp_path / "betons").iterdir()) == [
        "cifar10_test_raw.beton", "cifar10_test_raw.beton.json", "cifar10_train_raw.beton",
        "cifar10_train_raw.beton.json"]
    assert cli.trainer.global_step == 2
    assert torch.isfinite(cli.trainer.callback_metrics["test/loss"])
    dm = VisionDataModule("cifar10", root=str(data_root), verify_md5=False, backend="ffcv",
                          beton_dir=str(tmp_path / "betons"), batch_size=4, val_size=4)
    assert dm.backend == "ffcv"
    dm.setup("fit")
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_write_beton_command(tmp_path, data_root):
    out = tmp_path / "c.beton"
    cmd = [sys.executable, "-m", "lightning_snn.data.write_beton", "--dataset=cifar10", f"--root={data_root}",
           "--split=test", f"--out={out}", "--verify_md5=false", "--num_workers=1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wrote 20 samples" in r.stdout and check_beton(out) == 20
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "exists" in r.stderr


def test_imagenet_style_folder_to_jpeg_beton(tmp_path, data_root):
    from test_data import write_image_folder

    write_image_folder(data_root, tmp_path, size=96)
    dm = VisionDataModule("imagenet", root=str(tmp_path), backend="ffcv", ffcv_write_mode="jpg",
                          ffcv_max_resolution=64, batch_size=4, num_workers=1)
    dm.prepare_data()
    assert check_beton(dm.beton_path(True)) == 20
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))  # random-resized crop to 224
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32
    xv, _ = next(iter(dm.val_dataloader()))  # centre crop
    assert xv.shape == (4, 3, 224, 224)


@pytest.mark.parametrize("args, expected", [
    (["--root=data"], "give exactly one of --dataset or --image_folder (valid data sets: cifar10, cifar100, "),
    (["--dataset=nmnist"], "--dataset 'nmnist' cannot be written to a .beton (valid: cifar10, "),
    (["--dataset=cifar10", "--num_workers=0"], "--num_workers 0 (valid: an integer >= 1)"),
    (["--dataset=cifar10", "--jpeg_quality=101"], "--jpeg_quality 101 (valid: 1 to 100)"),
    (["--image_folder=nowhere"], "--image_folder nowhere does not exist"),
])
def test_write_beton_bad_input_is_one_line(args, expected, tmp_path, capsys):
    from lightning_snn.data.write_beton import cli

    assert cli([f"--out={tmp_path / 'x.beton'}", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_write_beton_existing_file_is_one_line_and_debug_shows_the_traceback(tmp_path, data_root):
    out = tmp_path / "c.beton"
    out.write_bytes(b"earlier")
    cmd = [sys.executable, "-m", "lightning_snn.data.write_beton", "--dataset=cifar10", f"--root={data_root}",
           f"--out={out}", "--verify_md5=false"]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        f"error: {out} exists; pass overwrite=True (--overwrite) to replace it"), r.stderr
    assert "Traceback" not in r.stderr and out.read_bytes() == b"earlier"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**env, "LIGHTNING_SNN_DEBUG": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr and "FileExistsError" in r.stderr


def test_a_zeroed_test_split_beton_stops_fit_before_anything_is_written(tmp_path, data_root):
    betons = tmp_path / "betons"
    for train in (True, False):
        write_beton(CIFAR10Unverified(str(data_root), train=train), betons / f"cifar10_{'train' if train else 'test'}_raw.beton")
    bad = betons / "cifar10_test_raw.beton"
    data = bytearray(bad.read_bytes())
    data[:24] = bytes(24)
    bad.write_bytes(bytes(data))
    ckpt, logs = tmp_path / "ckpt", tmp_path / "logs"
    args = ["fit", "--config", "configs/fmnist_mlp_bptt.yaml", f"--data.root={data_root}", "--data.dataset=cifar10",
            "--data.verify_md5=false", "--data.backend=ffcv", f"--data.beton_dir={betons}", "--data.batch_size=4",
            "--data.num_workers=1", "--data.val_size=4", "--trainer.max_epochs=1", "--trainer.accelerator=cpu",
            f"--trainer.logger.save_dir={logs}", f"--checkpoint.dirpath={ckpt}", "--trainer.enable_progress_bar=false"]
    with pytest.raises(BetonError, match=f"{bad} is damaged: header says format version 0"):
        main(args)
    assert not ckpt.exists() and not logs.exists()


# ----------------------------------------------------------------------------- what a file holds
@pytest.fixture(scope="module")
def betons(tmp_path_factory, data_root):
    """The Fashion-MNIST train and test files as the data module writes them on first use, and
    MNIST's and CIFAR-10's test files (with their identity files) to put in their place."""
    folder = tmp_path_factory.mktemp("fm_betons")
    dm = VisionDataModule("fashion_mnist", root=str(data_root), backend="ffcv", beton_dir=str(folder / "fm"),
                          num_workers=1)
    dm.prepare_data()
    mnist = write_beton(datasets.MNIST(str(data_root), train=False), folder / "mnist_test.beton", gray=True,
                        name="mnist", split="test")
    cifar = write_beton(CIFAR10Unverified(str(data_root), train=False), folder / "cifar10_test_raw.beton",
                        name="cifar10", split="test")
    return folder / "fm", mnist, cifar


def test_identity_file_records_what_the_file_holds(betons, data_root):
    """Data set, split, layout, write mode, and a fingerprint equal to a hand computation from the
    source data set: SHA-256 of every label (int64) and the pixels of 16 evenly spaced images."""
    import hashlib
    import json

    fm, _, _ = betons
    ident = json.loads((fm / "fashion_mnist_test.beton.json").read_text())
    assert {k: ident[k] for k in ("dataset", "split", "samples", "fields", "image_shape", "image_dtype",
                                  "write_mode")} == {
        "dataset": "fashion_mnist", "split": "test", "samples": 10_000, "image_shape": [28, 28],
        "fields": {"image": "NDArrayField", "label": "IntField"}, "image_dtype": "uint8", "write_mode": "raw"}
    ds = datasets.FashionMNIST(str(data_root), train=False)
    picked = np.unique(np.linspace(0, 9999, 16).round().astype(int))
    h = hashlib.sha256(ds.targets.numpy().astype("<i8").tobytes())
    for i in picked:
        h.update(ds.data[i].numpy().tobytes())
    assert ident["fingerprint"]["sha256"] == h.hexdigest()
    assert ident["fingerprint"]["covers"] == ("field(s) label of all 10000 samples and the stored bytes of 16 "
                                              "evenly spaced samples (0, 667, 1333, ..., 9999)")


def _impostor_dir(tmp_path, betons, impostor, with_identity):
    """A beton folder with the real Fashion-MNIST train file and ``impostor`` as its test file."""
    from lightning_snn.data.beton_identity import identity_path

    fm, *_ = betons
    folder = tmp_path / "betons"
    folder.mkdir()
    for name in ("fashion_mnist_train.beton", "fashion_mnist_train.beton.json"):
        (folder / name).symlink_to(fm / name)
    test = folder / "fashion_mnist_test.beton"
    test.symlink_to(impostor)
    if with_identity:
        identity_path(test).symlink_to(identity_path(impostor))
    return folder, test


@pytest.mark.parametrize("which, with_identity, expected", [
    ("mnist", True, "holds data set 'mnist' (test split) (its identity file fashion_mnist_test.beton.json says "
                    "so), but data set 'fashion_mnist' (test split) is asked for"),
    ("mnist", False, "does not hold data set 'fashion_mnist' (test split): its labels differ (class 0: 980 "
                     "samples in the file, 1000 in the data set)"),
    ("cifar", True, "holds data set 'cifar10' (test split)"),
    ("cifar", False, "stores fields {image: RGBImageField, label: IntField}; images 32x32x3 uint8, but data set "
                     "'fashion_mnist' (test split) needs fields {image: NDArrayField, label: IntField}; images "
                     "28x28 uint8: it holds another data set"),
])
def test_a_file_of_other_data_stops_fit_before_training(which, with_identity, expected, betons, tmp_path,
                                                         data_root, capsys):
    """MNIST's (gray, same shape) or CIFAR-10's (RGB) test file as ``fashion_mnist_test.beton``: refused
    before anything is trained or written, not in the test after fit; without an identity file the
    check says it relies on fields, shapes and labels."""
    from lightning_snn.cli import command_line

    _, mnist, cifar = betons
    folder, test = _impostor_dir(tmp_path, betons, mnist if which == "mnist" else cifar, with_identity)
    ckpt, logs = tmp_path / "ckpt", tmp_path / "logs"
    args = ["fit", "--config", "configs/fmnist_mlp_bptt.yaml", f"--data.root={data_root}", "--data.backend=ffcv",
            f"--data.beton_dir={folder}", "--data.num_workers=1", "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2", "--trainer.accelerator=cpu", "--test_after_fit=last",
            f"--trainer.logger.init_args.save_dir={logs}", f"--checkpoint.dirpath={ckpt}",
            "--trainer.enable_progress_bar=false"]
    with pytest.raises(SystemExit) as exc:
        if with_identity:
            command_line(args)
        else:
            with pytest.warns(UserWarning, match=f"{test} has no identity file .*checked by its fields and shapes"):
                command_line(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith(f"error: {test} ") and expected in err[-1], err[-1]
    assert not ckpt.exists() and not logs.exists()


def test_an_identity_file_beside_another_file_is_caught(betons, tmp_path):
    from lightning_snn.data.beton_identity import BetonMismatchError, Expected, check_contents

    fm, mnist, _ = betons
    test = tmp_path / "fashion_mnist_test.beton"
    test.symlink_to(mnist)
    (tmp_path / "fashion_mnist_test.beton.json").symlink_to(fm / "fashion_mnist_test.beton.json")
    with pytest.raises(BetonMismatchError, match="is not the file its identity file fashion_mnist_test.beton.json "
                                                 "describes .*content fingerprint"):
        check_contents(test, Expected("fashion_mnist", "test", gray=True, image_shape=(28, 28)))
    note = check_contents(fm / "fashion_mnist_test.beton", Expected("fashion_mnist", "test", True, (28, 28)))
    assert "identity checked ('fashion_mnist' (test split)" in note


@pytest.mark.parametrize("out, expected", [
    ("folder", "is a folder (valid: the path of a .beton file to write)"),
    ("a_file/x.beton", "a_file is a file, not a folder (valid: a path under a folder)"),
])
def test_write_beton_checks_the_destination_before_reading_anything(out, expected, tmp_path, capsys):
    from lightning_snn.data.write_beton import cli

    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("a file")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    # --root does not exist: reading the data set first would fail with another message
    assert cli([f"--out={tmp_path / out}", "--overwrite=true", "--dataset=cifar10", f"--root={tmp_path / 'nowhere'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
