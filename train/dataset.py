"""Reader for the TAU Urban Acoustic Scenes 2020 Mobile development set layout.

The layout (also written by :mod:`asc_deploy.train.synth`)::

    root/meta.csv                          filename  scene_label  identifier  source_label
    root/evaluation_setup/fold1_train.csv     filename  scene_label
    root/evaluation_setup/fold1_evaluate.csv  filename  scene_label
    root/evaluation_setup/fold1_test.csv      filename
    root/audio/<scene>-<city>-<location>-<segment>-<device>.wav   mono, 44.1 kHz

All CSV files are tab-separated with a header row. ``filename`` is relative to ``root``
(``audio/...``); the device of a clip is the ``source_label`` of ``meta.csv``, its recording
location the ``identifier``.
:func:`read_split` and :func:`load_clip` are pure numpy; :class:`SceneDataset` wraps them for
torch training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset

from asc_deploy.errors import AscError
from asc_deploy.labels import CLASS_LABELS, SAMPLE_RATE

SPLIT_FILES: dict[str, str] = {
    "train": "fold1_train.csv",
    "evaluate": "fold1_evaluate.csv",
    "test": "fold1_test.csv",
}
UNLABELLED = -1  # label that SceneDataset returns for clips without one (test split)


@dataclass(frozen=True)
class Clip:
    """One audio clip of a split: its ``path`` (the data set root joined with ``filename``),
    the ``filename`` as the CSV lists it, the class index into CLASS_LABELS (None in the test
    split), the recording device (``source_label`` of meta.csv; None where meta.csv does not
    list the file) and the recording location (``identifier`` of meta.csv; None where absent)."""

    path: Path
    filename: str
    label: int | None
    device: str | None
    location: str | None = None


def _read_table(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a tab-separated file with a header holding at least ``columns``.

    Returns (line number, {column: value}) per non-empty row. Raises AscError naming ``path``
    for a missing file, a header without ``columns`` or a row with the wrong number of fields.
    """
    if not path.is_file():
        raise AscError("file not found (expected the TAU Urban Acoustic Scenes layout)", path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a BOM is not part of the header
    except (OSError, UnicodeDecodeError) as exc:
        raise AscError(f"cannot read: {exc}", path) from exc
    header = [name.strip() for name in lines[0].split("\t")] if lines else []
    missing = [name for name in columns if name not in header]
    if missing:
        raise AscError(f"header {header} lacks column(s) {missing} (tab-separated)", path)
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split("\t")]
        if len(fields) != len(header):
            raise AscError(f"line {number}: malformed row, {len(fields)} fields instead of {len(header)}", path)
        rows.append((number, dict(zip(header, fields))))
    return rows


def _audio_path(root: Path, filename: str, csv_path: Path, number: int) -> Path:
    """``root / filename`` for a relative filename that stays inside ``root``; AscError otherwise."""
    parts = PurePosixPath(filename).parts
    if not filename or "\\" in filename or PureWindowsPath(filename).drive or filename.startswith("/") or ".." in parts:
        raise AscError(f"line {number}: filename {filename!r} points outside the data set folder", csv_path)
    path = root.joinpath(*parts)
    if not path.is_file():
        raise AscError(f"audio file listed on line {number} of {csv_path} is missing", path)
    return path


def _meta(root: Path, required: bool) -> dict[str, dict[str, str]]:
    """filename -> its meta.csv row (``source_label``: device, ``identifier``: location). Unless
    ``required``, a missing meta.csv or one without a source_label column (evaluation sets) gives
    {}."""
    meta = root / "meta.csv"
    if not required and not meta.exists():
        return {}
    rows = _read_table(meta, ("filename", "source_label") if required else ("filename",))
    return {row["filename"]: row for _, row in rows if "source_label" in row}


def read_split(root: str | Path, split: str) -> list[Clip]:
    """The clips of ``split`` ("train", "evaluate" or "test") of the data set under ``root``.

    Labels come from evaluation_setup/fold1_<split>.csv (None for "test"), devices from
    meta.csv (locations from its ``identifier`` column where present), which may be absent or
    lack source_label for "test" only (then every device is None). Raises AscError
    naming the file for: a missing CSV or audio file, an unknown scene label, a malformed row,
    a duplicate entry, a filename that is absolute or has ``..`` components, an empty split.
    """
    if split not in SPLIT_FILES:
        raise AscError(f"unknown split {split!r}, expected one of {sorted(SPLIT_FILES)}")
    root = Path(root)
    labelled = split != "test"
    csv_path = root / "evaluation_setup" / SPLIT_FILES[split]
    rows = _read_table(csv_path, ("filename", "scene_label") if labelled else ("filename",))
    meta = _meta(root, required=labelled)
    clips: list[Clip] = []
    seen: set[str] = set()
    for number, row in rows:
        filename = row["filename"]
        if filename in seen:
            raise AscError(f"line {number}: {filename!r} is listed twice", csv_path)
        seen.add(filename)
        label = None
        if labelled:
            if row["scene_label"] not in CLASS_LABELS:
                raise AscError(f"line {number}: unknown scene label {row['scene_label']!r}, expected one of {list(CLASS_LABELS)}", csv_path)
            label = CLASS_LABELS.index(row["scene_label"])
        path = _audio_path(root, filename, csv_path, number)
        row = meta.get(filename, {})
        clips.append(Clip(path=path, filename=filename, label=label, device=row.get("source_label"), location=row.get("identifier")))
    if not clips:
        raise AscError("lists no clips", csv_path)
    return clips


def load_clip(clip: Clip, expected_samples: int | None = None) -> np.ndarray:
    """The clip's waveform as float32 mono samples at 44.1 kHz, shape (samples,).

    Training data is never resampled or down-mixed: a sample rate other than SAMPLE_RATE, more
    than one channel, an unreadable file or (if ``expected_samples`` is given) another length
    in samples raises AscError naming the file.
    """
    try:
        with sf.SoundFile(clip.path) as audio:
            if audio.samplerate != SAMPLE_RATE:
                raise AscError(f"sample rate is {audio.samplerate} Hz, training needs {SAMPLE_RATE} Hz", clip.path)
            if audio.channels != 1:
                raise AscError(f"has {audio.channels} channels, training needs mono", clip.path)
            if expected_samples is not None and audio.frames != expected_samples:
                raise AscError(f"has {audio.frames} samples, expected {expected_samples}", clip.path)
            return audio.read(dtype="float32")
    except sf.SoundFileError as exc:
        raise AscError(f"cannot read audio: {exc}", clip.path) from exc


class SceneDataset(Dataset):
    """Torch dataset over clips: item i is (waveform float32 tensor [samples], label, i).

    The label is the class index, or UNLABELLED (-1) for clips without one. Audio is read
    on access with :func:`load_clip`; ``expected_samples`` (samples at 44.1 kHz) makes clips
    of another length an AscError, so that batches stack.
    """

    def __init__(self, clips: Sequence[Clip], expected_samples: int | None = None) -> None:
        self.clips = list(clips)
        self.expected_samples = expected_samples

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        clip = self.clips[index]
        waveform = torch.from_numpy(load_clip(clip, self.expected_samples))
        return waveform, UNLABELLED if clip.label is None else clip.label, index
