"""Event data: file formats against hand-built bytes and tonic's reader, binning against a hand
computation, the data module's frames, splits and errors (on synthetic recordings, see conftest)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from tonic.io import read_mnist_file

from lightning_snn.data import VisionDataModule
from lightning_snn.data.events import (
    EVENTS, EventFileError, bin_events, read_aedat2, read_cifar10_dvs, read_nmnist, write_aedat2,
    write_nmnist,
)


def events(**cols) -> np.ndarray:
    out = np.zeros(len(cols["t"]), dtype=EVENTS)
    for k, v in cols.items():
        out[k] = v
    return out


def test_nmnist_bytes_and_tonic_reader(tmp_path):
    ev = events(x=[5, 33, 0], y=[2, 0, 33], t=[100, 70_000, (1 << 23) - 1], p=[1, 0, 1])
    write_nmnist(tmp_path / "a.bin", ev)
    raw = (tmp_path / "a.bin").read_bytes()
    # x, y, polarity bit 7 | t[22:16], t[15:8], t[7:0]
    assert raw[:5] == bytes([5, 2, 0x80, 0, 100])
    assert raw[5:10] == bytes([33, 0, 70_000 >> 16, (70_000 >> 8) & 255, 70_000 & 255])
    theirs = read_mnist_file(str(tmp_path / "a.bin"), dtype=EVENTS)
    assert (theirs == ev).all() and (read_nmnist(tmp_path / "a.bin") == ev).all()


def test_aedat2_address_layout(tmp_path):
    # DVS128 address: y_raw bits 8-14, x_raw bits 1-7, polarity bit 0; bit 31 = not a DVS event
    words = np.array([[(4 << 8) | (3 << 1) | 0, 77], [(1 << 31) | 5, 80], [(127 << 8) | 1, 90]], ">u4")
    path = tmp_path / "r.aedat"
    path.write_bytes(b"#!AER-DAT2.0\r\n# comment\r\n" + words.tobytes())
    ev = read_aedat2(path)
    assert ev.tolist() == [(127 - 4, 127 - 3, 77, 1), (0, 127, 90, 0)]  # (x, y, t, p)
    write_aedat2(tmp_path / "w.aedat", ev)
    assert (read_cifar10_dvs(tmp_path / "w.aedat") == ev).all()


@pytest.mark.parametrize("truncate", ["nmnist", "aedat"])
def test_truncated_file_names_it(tmp_path, truncate):
    ev = events(x=[1, 2], y=[3, 4], t=[10, 20], p=[0, 1])
    path = tmp_path / ("a.bin" if truncate == "nmnist" else "a.aedat")
    (write_nmnist if truncate == "nmnist" else write_aedat2)(path, ev)
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(EventFileError, match=str(path)):
        (read_nmnist if truncate == "nmnist" else read_aedat2)(path)


def test_binning_by_time_and_number():
    ev = events(x=[0, 1, 2, 3, 0, 1, 2], y=[0] * 7, t=[10, 12, 15, 20, 21, 29, 30], p=[0, 1, 0, 1, 0, 1, 1])
    # time: width (30 - 10) // 3 = 6 -> offsets 0 2 5 | 10 11 | 19 20 (last bin takes t >= 12)
    by_time = bin_events(ev, (4, 1, 2), 3, "time")[:, :, 0, :]
    want = np.zeros((3, 2, 4), int)
    for b, e in zip([0, 0, 0, 1, 1, 2, 2], ev):
        want[b, e["p"], e["x"]] += 1
    assert (by_time == want).all()
    # number: 7 // 3 = 2 events per bin, the last bin keeps the remainder (3 events)
    by_number = bin_events(ev, (4, 1, 2), 3, "number")
    assert by_number.sum(axis=(1, 2, 3)).tolist() == [2, 2, 3]
    assert by_time.sum() == by_number.sum() == len(ev)


def dm(root, dataset, **kw):
    kw = {"batch_size": 4, "num_workers": 0, "frames": 5, **kw}
    return VisionDataModule(dataset=dataset, root=str(root), **kw)


def test_nmnist_frames_and_labels(event_data_root):
    data = dm(event_data_root, "nmnist", augment=False)
    data.setup("fit")
    x, y = next(iter(data.val_dataloader()))
    assert x.shape == (4, 5, 2, 34, 34) and data.input_shape == (2, 34, 34)
    files = sorted((event_data_root / "NMNIST" / "Test").glob("*/*.bin"))[:4]
    assert y.tolist() == [int(f.parent.name) for f in files]
    counts = [len(read_nmnist(f)) for f in files]
    assert x.sum(dim=(1, 2, 3, 4)).tolist() == counts  # every event lands in exactly one frame
    spikes = dm(event_data_root, "nmnist_spikes")
    spikes.setup("fit")
    xs, _ = next(iter(spikes.val_dataloader()))
    assert set(xs.unique().tolist()) == {0.0, 1.0} and torch.equal(xs, x.clamp(max=1))


def test_cifar10_dvs_split_and_frames(event_data_root):
    train = dm(event_data_root, "cifar10_dvs")
    train.setup(None)
    per_class = {}
    for f in (event_data_root / "CIFAR10DVS").rglob("*.aedat"):
        per_class[f.parent.name] = per_class.get(f.parent.name, 0) + 1
    assert len(train.data_train) == sum(int(n * 0.9) for n in per_class.values())
    assert len(train.data_train) + len(train.data_test) == 20
    x, y = next(iter(train.train_dataloader()))
    assert x.shape == (4, 5, 2, 48, 48) and x.min() >= 0 and x.sum() > 0


def test_event_data_errors(event_data_root, tmp_path):
    with pytest.raises(ValueError, match="frames must be the number of time steps"):
        dm(event_data_root, "nmnist", frames=None)
    with pytest.raises(ValueError, match="ffcv backend does not read"):
        dm(event_data_root, "cifar10_dvs", backend="ffcv")
    with pytest.raises(FileNotFoundError, match="NMNIST"):
        dm(tmp_path, "nmnist")
    (tmp_path / "NMNIST" / "Test").mkdir(parents=True)
    empty = dm(tmp_path, "nmnist")
    with pytest.raises(RuntimeError, match="no event recordings"):
        empty.setup("test")
