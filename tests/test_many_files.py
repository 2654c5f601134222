"""``asc-predict`` over 1,000 files, 3 of them corrupt: 997 results, 3 error rows, exit 1, and
memory that does not grow with the number of files (peak RSS printed)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from asc_deploy.labels import CLASS_LABELS, SAMPLE_RATE
from tests.test_predict_cli import PREDICT, parse_csv, run_measured

N_FILES = 1000
CORRUPT = {  # index -> (what is wrong, the word its error row must contain)
    17: ("truncated", "truncated"),
    500: ("text", "not a readable audio"),
    998: ("empty", "empty"),
}


def _write_clips(folder, count: int) -> list[str]:
    """``count`` distinct 1 s mono 16-bit WAVs (noise of a random level), corrupting CORRUPT."""
    rng = np.random.default_rng(7)
    names = []
    for i in range(count):
        name = f"clip{i:04d}.wav"
        pcm = (rng.standard_normal(SAMPLE_RATE) * rng.uniform(100, 8000)).clip(-32768, 32767).astype(np.int16)
        sf.write(folder / name, pcm, SAMPLE_RATE, subtype="PCM_16")
        kind = CORRUPT.get(i, ("", ""))[0] if count == N_FILES else ""
        if kind == "truncated":
            data = (folder / name).read_bytes()
            (folder / name).write_bytes(data[: len(data) // 2])
        elif kind == "text":
            (folder / name).write_text("this is not a wav file\n" * 20)
        elif kind == "empty":
            (folder / name).write_bytes(b"")
        names.append(name)
    return names


@pytest.mark.slow
def test_thousand_files_with_three_corrupt(tmp_path, random_model) -> None:
    small_dir, big_dir = tmp_path / "ten", tmp_path / "thousand"
    small_dir.mkdir()
    big_dir.mkdir()
    small, names = _write_clips(small_dir, 10), _write_clips(big_dir, N_FILES)

    code, _, err, small_peak = run_measured([*PREDICT, "--model", str(random_model), *small, "-o", "out.csv"],
                                            small_dir)
    assert code == 0, err
    code, stdout, err, peak = run_measured([*PREDICT, "--model", str(random_model), *names, "-o", "out.csv"],
                                           big_dir, timeout=300)

    assert code == 1 and stdout == "" and "Traceback" not in err
    header, rows = parse_csv((big_dir / "out.csv").read_text())
    assert list(rows) == names  # one row per file, in order
    failed = {name: row[-1] for name, row in rows.items() if row[-1]}
    assert sorted(failed) == sorted(names[i] for i in CORRUPT)
    for i, (_, keyword) in CORRUPT.items():
        assert failed[names[i]].startswith(f"{names[i]}: ") and keyword in failed[names[i]]
    good = [row for name, row in rows.items() if name not in failed]
    assert len(good) == N_FILES - len(CORRUPT) == 997
    probs = np.array([[float(p) for p in row[2:-1]] for row in good])
    assert all(row[1] in CLASS_LABELS for row in good)
    assert np.isfinite(probs).all() and np.abs(probs.sum(axis=1) - 1).max() < 1e-5
    assert err.splitlines()[0] == f"asc-predict: 3 of {N_FILES} files failed:"
    assert len(err.splitlines()) == 4

    print(f"\nasc-predict peak RSS: {N_FILES} files {peak / 2**20:.0f} MiB, 10 files {small_peak / 2**20:.0f} MiB")
    assert peak - small_peak < 50e6, (peak, small_peak)  # nothing per file is kept
