"""DVS128 Gesture: the release's AEDAT 3.1 recordings, one sample per labelled gesture, the official
train / test trials, frames by event count.

The recordings are SYNTHETIC, written in the release's file format (``conftest.write_synthetic_
dvs_gesture``: AEDAT 3.1 packets, a special-event packet, labels CSV files, split files): the
release cannot be downloaded here."""

import shutil
import struct

import numpy as np
import pytest
import torch

from lightning_snn.data import VisionDataModule
from lightning_snn.data.events import EVENTS, EventFileError
from lightning_snn.data.gesture import DVS128Gesture, read_aedat3


def hand_made_aedat3(path, overflow=1):
    """Bytes written field by field as the AEDAT 3.1 specification (and SpikingJelly's
    load_aedat_v3) lays them out: a special-event packet, then one polarity packet."""
    head = b"#!AER-DAT3.1\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n"
    special = struct.pack("<HHIIIIII", 0, 1, 8, 4, 0, 1, 1, 1) + struct.pack("<II", 5, 7)
    events = [(3, 100, 1, 10), (127, 0, 0, 20), (64, 64, 1, 30)]  # x, y, p, ts
    words = b"".join(struct.pack("<II", x << 17 | y << 2 | p << 1 | 1, ts) for x, y, p, ts in events)
    polarity = struct.pack("<HHIIIIII", 1, 1, 8, 4, overflow, 3, 3, 3) + words
    path.write_bytes(head + special + polarity)
    return events


def test_aedat3_polarity_packets_decoded_and_special_packets_skipped(tmp_path):
    events = hand_made_aedat3(tmp_path / "a.aedat")
    got = read_aedat3(tmp_path / "a.aedat")
    assert got.dtype == EVENTS and len(got) == 3
    assert got["x"].tolist() == [e[0] for e in events] and got["y"].tolist() == [e[1] for e in events]
    assert got["p"].tolist() == [e[2] for e in events]
    assert got["t"].tolist() == [e[3] + (1 << 31) for e in events]  # ts | tsOverflow << 31


@pytest.mark.parametrize("cut", [3, 30])
def test_truncated_recording_is_a_clear_error_before_training(event_data_root, tmp_path, cut):
    root = tmp_path / "data"
    shutil.copytree(event_data_root / "DvsGesture", root / "DvsGesture")
    victim = root / "DvsGesture" / "user02_led.aedat"
    victim.write_bytes(victim.read_bytes()[:-cut])
    with pytest.raises(EventFileError, match=r"user02_led.aedat: truncated packet"):
        DVS128Gesture(str(root), train=True)
    DVS128Gesture(str(root), train=False)  # the other split's files are whole


def test_samples_are_the_labelled_gestures_of_the_official_split(event_data_root):
    train, test = DVS128Gesture(str(event_data_root), True), DVS128Gesture(str(event_data_root), False)
    assert len(train) == len(test) == 8  # 2 trials x 4 gestures each
    assert {p.split("/")[-1] for p, _, _ in train.samples} == {"user01_led.aedat", "user02_led.aedat"}
    assert {p.split("/")[-1] for p, _, _ in test.samples} == {"user24_led.aedat", "user25_led.aedat"}
    assert train.targets == [0, 1, 2, 3] * 2  # classes 1..4 of the CSV files, minus one
    all_events = read_aedat3(event_data_root / "DvsGesture" / "user01_led.aedat")
    for i in range(4):
        path, start, end = train.samples[i]
        ev = train.events(i)
        inside = all_events[(all_events["t"] >= start) & (all_events["t"] < end)]
        assert len(ev) == len(inside) > 100 and np.array_equal(np.sort(ev["t"]), np.sort(inside["t"]))


def test_frames_hold_every_event_of_a_gesture_in_equal_count_bins(event_data_root):
    T = 5
    dm = VisionDataModule("dvs128_gesture", root=str(event_data_root), batch_size=2, num_workers=0,
                          frames=T)
    assert dm.num_classes == 11 and dm.input_shape == (2, 128, 128)
    dm.setup("fit")
    x, y = dm.data_test[3]
    ev = DVS128Gesture(str(event_data_root), False).events(3)
    assert x.shape == (T, 2, 128, 128) and y == 3
    assert float(x.sum()) == len(ev)  # every event counted once
    per = x.sum((1, 2, 3))
    n = len(ev)
    assert per[:-1].tolist() == [n // T] * (T - 1) and float(per[-1]) == n - (T - 1) * (n // T)
    # frame t holds events N//T * t ... of the time-ordered gesture (split_by='number')
    first = ev[: n // T]
    counts = np.zeros((2, 128, 128))
    np.add.at(counts, (first["p"], first["y"], first["x"]), 1)
    assert torch.equal(x[0], torch.from_numpy(counts).float())


def test_missing_files_are_clear_errors(event_data_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'dvs128_gesture' not found: .*DvsGesture does not exist"):
        VisionDataModule("dvs128_gesture", root=str(tmp_path), frames=4)
    root = tmp_path / "data"
    shutil.copytree(event_data_root / "DvsGesture", root / "DvsGesture")
    (root / "DvsGesture" / "user25_led_labels.csv").unlink()
    with pytest.raises(RuntimeError, match=r"user25_led_labels.csv are missing"):
        DVS128Gesture(str(root), train=False)
    (root / "DvsGesture" / "user01_led.aedat").unlink()
    with pytest.raises(RuntimeError, match=r"user01_led.aedat \(listed in trials_to_train.txt\) is missing"):
        DVS128Gesture(str(root), train=True)
    (root / "DvsGesture" / "trials_to_test.txt").unlink()
    with pytest.raises(RuntimeError, match=r"trials_to_test.txt is missing"):
        DVS128Gesture(str(root), train=False)
    with pytest.raises(ValueError, match="cannot be downloaded automatically"):
        VisionDataModule("dvs128_gesture", root=str(root), frames=4, download=True).prepare_data()
