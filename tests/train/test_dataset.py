"""TAU 2020 Mobile reader: splits, labels, devices, and every refused input as an AscError naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asc_deploy.errors import AscError
from asc_deploy.labels import CLASS_LABELS, SAMPLE_RATE
from asc_deploy.train.dataset import UNLABELLED, Clip, SceneDataset, load_clip, read_split

SAMPLES = 4410  # 0.1 s at 44.1 kHz: the reader does not care about the length


def _wav(path: Path, value: int, rate: int = SAMPLE_RATE, channels: int = 1) -> None:
    """A constant 16-bit wav of SAMPLES frames: every sample is ``value``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.full((SAMPLES, channels), value, dtype=np.int16), rate, subtype="PCM_16")


def _table(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A 5-clip data set: 3 train (a, a, b), 2 evaluate (a, s4) that are also the test split."""
    clips = [
        ("audio/airport-lisbon-1-0-a.wav", "airport", "a"),
        ("audio/tram-vienna-2-0-a.wav", "tram", "a"),
        ("audio/tram-vienna-2-0-b.wav", "tram", "b"),
        ("audio/park-paris-3-0-a.wav", "park", "a"),
        ("audio/park-paris-3-0-s4.wav", "park", "s4"),
    ]
    for value, (name, _, _) in enumerate(clips, start=1):
        _wav(tmp_path / name, 1000 * value)
    _table(tmp_path / "meta.csv", ["filename\tscene_label\tidentifier\tsource_label"] + [f"{n}\t{s}\tx-1\t{d}" for n, s, d in clips])
    _table(tmp_path / "evaluation_setup/fold1_train.csv", ["filename\tscene_label"] + [f"{n}\t{s}" for n, s, _ in clips[:3]])
    _table(tmp_path / "evaluation_setup/fold1_evaluate.csv", ["filename\tscene_label"] + [f"{n}\t{s}" for n, s, _ in clips[3:]])
    _table(tmp_path / "evaluation_setup/fold1_test.csv", ["filename"] + [n for n, _, _ in clips[3:]])
    return tmp_path


def _error(root: Path, split: str) -> str:
    with pytest.raises(AscError) as info:
        read_split(root, split)
    return str(info.value)


def test_splits_labels_and_devices(root: Path) -> None:
    train = read_split(root, "train")
    assert [(c.filename, c.label, c.device) for c in train] == [
        ("audio/airport-lisbon-1-0-a.wav", 0, "a"),
        ("audio/tram-vienna-2-0-a.wav", 9, "a"),
        ("audio/tram-vienna-2-0-b.wav", 9, "b"),
    ]
    assert train[0].path == root / "audio" / "airport-lisbon-1-0-a.wav"
    evaluate = read_split(str(root), "evaluate")
    assert [(c.label, c.device) for c in evaluate] == [(CLASS_LABELS.index("park"), "a"), (4, "s4")]
    test = read_split(root, "test")
    assert [(c.filename, c.label, c.device) for c in test] == [(c.filename, None, c.device) for c in evaluate]


def test_test_split_without_meta_has_no_devices(root: Path) -> None:
    _table(root / "meta.csv", ["filename", "audio/park-paris-3-0-a.wav"])  # as in evaluation sets
    assert [(c.label, c.device) for c in read_split(root, "test")] == [(None, None), (None, None)]
    assert "meta.csv: header ['filename'] lacks column(s) ['source_label']" in _error(root, "evaluate")
    (root / "meta.csv").unlink()
    assert [(c.label, c.device) for c in read_split(root, "test")] == [(None, None), (None, None)]
    assert "meta.csv: file not found" in _error(root, "train")


def test_device_is_none_where_meta_lacks_the_file(root: Path) -> None:
    meta = root / "meta.csv"
    meta.write_text("\n".join(line for line in meta.read_text().splitlines() if "s4.wav" not in line) + "\n")
    assert [c.device for c in read_split(root, "evaluate")] == ["a", None]


def test_missing_csv(root: Path) -> None:
    (root / "evaluation_setup/fold1_evaluate.csv").unlink()
    assert f"{root / 'evaluation_setup/fold1_evaluate.csv'}: file not found" in _error(root, "evaluate")


def test_missing_audio_names_the_file(root: Path) -> None:
    (root / "audio/tram-vienna-2-0-b.wav").unlink()
    message = _error(root, "train")
    assert message.startswith(str(root / "audio/tram-vienna-2-0-b.wav"))
    assert "line 4 of" in message and "fold1_train.csv" in message and "missing" in message


def test_unknown_label(root: Path) -> None:
    _table(root / "evaluation_setup/fold1_train.csv", ["filename\tscene_label", "audio/airport-lisbon-1-0-a.wav\tbeach"])
    message = _error(root, "train")
    assert message.startswith(str(root / "evaluation_setup/fold1_train.csv"))
    assert "line 2: unknown scene label 'beach'" in message


@pytest.mark.parametrize(
    "line",
    ["audio/airport-lisbon-1-0-a.wav\tairport\textra", "audio/airport-lisbon-1-0-a.wav", "audio/airport-lisbon-1-0-a.wav,airport"],
)
def test_malformed_row(root: Path, line: str) -> None:
    _table(root / "evaluation_setup/fold1_train.csv", ["filename\tscene_label", "audio/tram-vienna-2-0-a.wav\ttram", line])
    message = _error(root, "train")
    assert message.startswith(str(root / "evaluation_setup/fold1_train.csv")) and "line 3: malformed row" in message


def test_header_without_the_needed_columns(root: Path) -> None:
    _table(root / "evaluation_setup/fold1_train.csv", ["file\tlabel", "audio/tram-vienna-2-0-a.wav\ttram"])
    assert "lacks column(s) ['filename', 'scene_label']" in _error(root, "train")


@pytest.mark.parametrize("filename", ["../x.wav", "audio/../../x.wav", "/etc/x.wav", "C:/x.wav", "audio\\..\\x.wav"])
def test_paths_outside_the_data_set_are_refused(root: Path, filename: str) -> None:
    (root.parent / "x.wav").write_bytes((root / "audio/airport-lisbon-1-0-a.wav").read_bytes())
    _table(root / "evaluation_setup/fold1_test.csv", ["filename", "audio/park-paris-3-0-a.wav", filename])
    message = _error(root, "test")
    assert message.startswith(str(root / "evaluation_setup/fold1_test.csv"))
    assert f"line 3: filename {filename!r} points outside the data set folder" in message


def test_duplicate_and_empty_split(root: Path) -> None:
    _table(root / "evaluation_setup/fold1_test.csv", ["filename", "audio/park-paris-3-0-a.wav", "audio/park-paris-3-0-a.wav"])
    assert "line 3: 'audio/park-paris-3-0-a.wav' is listed twice" in _error(root, "test")
    _table(root / "evaluation_setup/fold1_test.csv", ["filename"])
    assert "fold1_test.csv: lists no clips" in _error(root, "test")
    assert "unknown split 'dev'" in _error(root, "dev")


def test_load_clip(root: Path) -> None:
    clip = read_split(root, "train")[1]
    waveform = load_clip(clip, expected_samples=SAMPLES)
    assert waveform.dtype == np.float32 and waveform.shape == (SAMPLES,)
    np.testing.assert_array_equal(waveform, np.float32(2000 / 32768))
    with pytest.raises(AscError, match=r"has 4410 samples, expected 44100") as info:
        load_clip(clip, expected_samples=SAMPLE_RATE)
    assert info.value.path == str(clip.path)


@pytest.mark.parametrize(
    ("rate", "channels", "problem"),
    [(48_000, 1, "sample rate is 48000 Hz, training needs 44100 Hz"), (SAMPLE_RATE, 2, "has 2 channels, training needs mono")],
)
def test_load_clip_refuses_other_formats(tmp_path: Path, rate: int, channels: int, problem: str) -> None:
    path = tmp_path / "audio" / "x.wav"
    _wav(path, 100, rate, channels)
    with pytest.raises(AscError) as info:
        load_clip(Clip(path, "audio/x.wav", 0, "a"))
    assert str(info.value) == f"{path}: {problem}"


def test_load_clip_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "broken.wav"
    path.write_bytes(b"RIFF not really a wav")
    with pytest.raises(AscError, match="cannot read audio") as info:
        load_clip(Clip(path, "broken.wav", 0, "a"))
    assert info.value.path == str(path)


def test_scene_dataset(root: Path) -> None:
    dataset = SceneDataset(read_split(root, "train") + read_split(root, "test"), expected_samples=SAMPLES)
    assert len(dataset) == 5
    waveform, label, index = dataset[2]
    assert waveform.dtype == torch.float32 and waveform.shape == (SAMPLES,)
    assert float(waveform[0]) == pytest.approx(3000 / 32768) and (label, index) == (9, 2)
    assert dataset[4][1:] == (UNLABELLED, 4)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=5)))
    assert batch[0].shape == (5, SAMPLES) and batch[1].tolist() == [0, 9, 9, -1, -1] and batch[2].tolist() == [0, 1, 2, 3, 4]
