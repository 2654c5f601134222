"""asc-synth: TAU 2020 Mobile layout, split design, determinism, refusals, and a separability check."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from asc_deploy.errors import AscError
from asc_deploy.labels import CLASS_LABELS, SAMPLE_RATE
from asc_deploy.train.dataset import load_clip, read_split
from asc_deploy.train.synth import CITIES, DEVICES, TRAIN_DEVICES, main, make_dataset, plan, record, render_scene, split_sizes

ARGS = {"clips_per_class_device": 1, "seconds": 1.0, "seed": 0}  # 150 train + 90 evaluate clips of 1 s
CLI_ARGS = ["--clips-per-class-device", "1", "--seconds", "1"]
NAME = re.compile(r"audio/(?P<scene>[a-z_]+)-(?P<city>[a-z]+)-(?P<location>\d+)-(?P<segment>\d+)-(?P<device>[a-z0-9]+)\.wav")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("synth") / "data", **ARGS)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


def test_layout_and_headers(data: Path) -> None:
    meta = _rows(data / "meta.csv")
    train, evaluate, test = (_rows(data / "evaluation_setup" / f"fold1_{s}.csv") for s in ("train", "evaluate", "test"))
    assert meta[0] == ["filename", "scene_label", "identifier", "source_label"]
    assert train[0] == evaluate[0] == ["filename", "scene_label"] and test[0] == ["filename"]
    assert (len(train) - 1, len(evaluate) - 1) == split_sizes(1) == (150, 90)
    assert sorted(train[1:] + evaluate[1:]) == [row[:2] for row in meta[1:]] == sorted(row[:2] for row in meta[1:])
    assert test[1:] == [row[:1] for row in evaluate[1:]]
    audio = {f"audio/{p.name}" for p in (data / "audio").iterdir()}
    assert audio == {row[0] for row in meta[1:]}
    assert {str(p.relative_to(data)) for p in data.rglob("*") if p.is_file() and p.parent.name != "audio"} == {
        "synth.json", "meta.csv", "evaluation_setup/fold1_train.csv", "evaluation_setup/fold1_evaluate.csv", "evaluation_setup/fold1_test.csv",
    }
    for name, scene, identifier, device in meta[1:]:
        match = NAME.fullmatch(name)
        assert match and match["scene"] == scene and match["device"] == device and match["city"] in CITIES
        assert identifier == f"{match['city']}-{match['location']}"
    info = sf.info(data / meta[1][0])
    assert (info.samplerate, info.channels, info.frames, info.format, info.subtype) == (SAMPLE_RATE, 1, SAMPLE_RATE, "WAV", "PCM_16")


def test_split_design(data: Path) -> None:
    train, evaluate = read_split(data, "train"), read_split(data, "evaluate")
    assert Counter(c.device for c in train) == {"a": 100, "b": 10, "c": 10, "s1": 10, "s2": 10, "s3": 10}
    assert Counter(c.label for c in train) == {k: 15 for k in range(10)}
    assert Counter((c.label, c.device) for c in evaluate) == {(k, d): 1 for k in range(10) for d in DEVICES}
    assert set(DEVICES) - set(TRAIN_DEVICES) == {"s4", "s5", "s6"}
    assert all(c.device not in ("s4", "s5", "s6") for c in train)

    def locations(clips: list) -> set[str]:
        return {c.filename.rsplit("-", 2)[0] for c in clips}  # audio/<scene>-<city>-<location>

    assert not locations(train) & locations(evaluate)  # the split is by location, as in TAU
    stems = {c.filename.rsplit("-", 1)[0] for c in train if c.device == "a"}
    assert all(c.filename.rsplit("-", 1)[0] in stems for c in train if c.device != "a")  # parallel recordings


def test_parallel_recordings_share_the_scene(data: Path) -> None:
    clips = {c.filename: c for c in read_split(data, "evaluate")}
    pairs = [(clip, clips[name.replace("-a.wav", "-s1.wav")]) for name, clip in clips.items() if clip.device == "a"]
    correlations = [np.corrcoef(load_clip(a), load_clip(s1))[0, 1] for a, s1 in pairs]
    assert len(pairs) == 10 and min(correlations) > 0.6  # zero-phase device filters keep the waveforms aligned


def test_devices_are_distinct_recording_chains() -> None:
    rng = np.random.default_rng(0)
    white = np.fft.rfft(0.05 * rng.standard_normal(SAMPLE_RATE))  # -26 dBFS, 1 s
    freqs = np.fft.rfftfreq(SAMPLE_RATE, 1 / SAMPLE_RATE)
    bands = [(80, 120), (900, 1100), (3500, 4500), (9000, 11000)]  # Hz

    def levels_db(device: str) -> np.ndarray:
        power = np.abs(np.fft.rfft(record(white, SAMPLE_RATE, device, rng) / 32768)) ** 2 / np.abs(white) ** 2
        return np.array([10 * np.log10(power[(freqs >= lo) & (freqs < hi)].mean()) for lo, hi in bands])

    response = {device: levels_db(device) for device in DEVICES}
    assert np.ptp(response["a"]) < 1.0  # the reference device is flat
    assert min(np.abs(response[x] - response[y]).max() for i, x in enumerate(DEVICES) for y in DEVICES[i + 1 :]) > 2.5
    assert response["s4"][3] < response["s4"][1] - 20  # s4 is band-limited (4.8 kHz)
    assert response["s2"][0] < response["s2"][1] - 15  # s2 has little bass (280 Hz high-pass)


def _log_spectrum(wave: np.ndarray) -> np.ndarray:
    """Mean log power of 2048-sample frames in about 30 log-spaced bands from 86 Hz to 20 kHz."""
    frames = np.lib.stride_tricks.sliding_window_view(wave, 2048)[::1024] * np.hanning(2048)
    power = (np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(axis=0)
    edges = np.unique(np.geomspace(4, 929, 33).astype(int))  # rfft bins of 21.5 Hz
    return np.log10(np.add.reduceat(power, edges)[:-1] / np.diff(edges) + 1e-12)


def test_classes_are_separable_but_not_trivially(data: Path) -> None:
    def features(split: str) -> tuple[np.ndarray, np.ndarray]:
        clips = read_split(data, split)
        return np.stack([_log_spectrum(load_clip(c)) for c in clips]), np.array([c.label for c in clips])

    x_train, y_train = features("train")
    x_eval, y_eval = features("evaluate")
    centroids = np.stack([x_train[y_train == k].mean(axis=0) for k in range(len(CLASS_LABELS))])
    correct = np.argmin(((x_eval[:, None, :] - centroids[None]) ** 2).sum(axis=2), axis=1) == y_eval
    assert 0.3 < correct.mean() < 0.7, correct.mean()  # chance is 0.1; 0.41 for this seed
    unseen = np.isin([c.device for c in read_split(data, "evaluate")], ["s4", "s5", "s6"])
    assert correct[unseen].mean() < correct[~unseen].mean()  # devices never seen in training do worse


def test_cli_overwrites_and_same_arguments_give_the_same_bytes(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    (out / "audio").mkdir(parents=True)
    (out / "audio" / "stale.wav").write_bytes(b"old")
    (out / "synth.json").write_text('{"generator": "asc-synth", "seed": 1}')
    runner = CliRunner()
    refused = runner.invoke(main, [str(out), *CLI_ARGS])
    assert refused.exit_code == 1
    assert refused.output == (
        f"Error: {out}: already contains a different synthetic data set "
        '({"generator": "asc-synth", "seed": 1}); pass --overwrite to replace it\n'
    )
    result = runner.invoke(main, [str(out), *CLI_ARGS, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert result.output.endswith(f"wrote 150 train and 90 evaluate clips of 1 s to {out}\n")
    assert _files(out) == _files(data)  # the stale file is gone, every other file has the same bytes


def test_other_seed_other_data() -> None:
    assert [s.city for s in plan(1, 0)] != [s.city for s in plan(1, 1)]
    for scene in range(len(CLASS_LABELS)):
        same = render_scene(scene, 7, 1, SAMPLE_RATE, seed=0)
        np.testing.assert_array_equal(same, render_scene(scene, 7, 1, SAMPLE_RATE, seed=0))
        other = render_scene(scene, 7, 1, SAMPLE_RATE, seed=1)
        assert np.corrcoef(np.fft.irfft(same), np.fft.irfft(other))[0, 1] < 0.5
    recordings = [record(same, SAMPLE_RATE, "b", np.random.default_rng(k)) for k in (0, 0, 1)]
    assert np.array_equal(recordings[0], recordings[1]) and not np.array_equal(recordings[0], recordings[2])


def test_resume_rewrites_only_what_is_missing(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    shutil.copytree(data, out)
    missing = sorted((out / "audio").iterdir())[5:8]
    for path in missing:
        path.unlink()
    (out / "meta.csv").unlink()
    kept = out / "audio" / sorted((out / "audio").iterdir())[0].name
    stamp = kept.stat().st_mtime_ns
    make_dataset(out, **ARGS)
    assert _files(out) == _files(data) and kept.stat().st_mtime_ns == stamp


def test_refusals(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(AscError, match="already contains other files; pass --overwrite") as info:
        make_dataset(tmp_path, **ARGS)
    assert info.value.path == str(tmp_path)
    with pytest.raises(AscError, match="exists and is not a folder"):
        make_dataset(tmp_path / "notes.txt", **ARGS)
    with pytest.raises(AscError, match="at least 1, got 0"):
        make_dataset(tmp_path / "x", 0, 1.0, 0)
    with pytest.raises(AscError, match=r"clip length must be 1.0-60.0 s, got 0.5"):
        make_dataset(tmp_path / "x", 1, 0.5, 0)
    assert (tmp_path / "notes.txt").read_text() == "mine" and not (tmp_path / "x").exists()


def test_recording_is_the_scenes_in_turn(tmp_path: Path) -> None:
    from asc_deploy.train.synth import make_recording

    runner = CliRunner()
    first = runner.invoke(main, [str(tmp_path / "a.wav"), "--recording", "park,metro", "--seconds", "1.5", "--device", "s4"])
    assert first.exit_code == 0, first.output
    assert first.output == f"wrote 3 s (1.5 s park, 1.5 s metro, device s4) to {tmp_path / 'a.wav'}\n"
    audio, rate = sf.read(tmp_path / "a.wav", dtype="int16")
    assert rate == SAMPLE_RATE and audio.shape == (2 * round(1.5 * SAMPLE_RATE),)
    other = sf.read(make_recording(tmp_path / "b.wav", ["park", "bus"], 1.5, "s4"), dtype="int16")[0]
    half = len(audio) // 2
    np.testing.assert_array_equal(audio[:half], other[:half])  # each scene is rendered on its own
    assert np.abs(audio[half:].astype(float) - other[half:]).mean() > 100  # metro is not bus
    levels_db = [20 * np.log10(np.sqrt(np.mean((part / 32768.0) ** 2))) for part in (audio[:half], audio[half:])]
    assert all(-60 < level < -3 for level in levels_db), levels_db
    assert sf.read(make_recording(tmp_path / "c.wav", ["park", "metro"], 1.5, "s4"), dtype="int16")[0].tobytes() == audio.tobytes()


def test_recording_refuses_an_unknown_scene(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [str(tmp_path / "r.wav"), "--recording", "park,beach"])
    assert result.exit_code == 1 and not (tmp_path / "r.wav").exists()
    assert result.output.startswith("Error: unknown scene(s) ['beach']: choose from airport, bus,") and result.output.count("\n") == 1
