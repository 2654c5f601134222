"""Tests of asc_deploy.audio: formats, resampling, channel mixing, windowing, streaming, errors."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from asc_deploy.audio import MIN_SAMPLES, iter_windows, load_audio, validate_waveform
from asc_deploy.errors import AscError
from asc_deploy.labels import CLIP_SAMPLES, SAMPLE_RATE

RNG_SEED = 20240607
FIXTURE_REUSED = HealthCheck.function_scoped_fixture  # tmp_path: each example overwrites its file


def _sine(freq: float, seconds: float, rate: int, amp: float) -> np.ndarray:
    """``amp * sin(2 pi freq t)`` sampled at ``rate`` Hz for ``seconds``, float64."""
    return amp * np.sin(2 * np.pi * freq * np.arange(round(seconds * rate)) / rate)


def _noise(seconds: float, rate: int = SAMPLE_RATE, channels: int = 1) -> np.ndarray:
    """Deterministic white noise of amplitude ~0.1, float32 ``(frames, channels)``."""
    rng = np.random.default_rng(RNG_SEED)
    return (0.1 * rng.standard_normal((round(seconds * rate), channels))).astype(np.float32)


def _peak_hz(wave: np.ndarray) -> tuple[float, float]:
    """Frequency (Hz, at 44.1 kHz) and amplitude of the strongest FFT bin of ``wave``."""
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave)))) / (np.hanning(len(wave)).sum() / 2)
    k = int(np.argmax(spec))
    return k * SAMPLE_RATE / len(wave), float(spec[k])


def _truncate(path: Path, keep: float) -> Path:
    """Cut ``path`` to the first ``keep`` fraction of its bytes, in place."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# ---------------------------------------------------------------- bad inputs, table-driven
# Each case builds its input under tmp_path and returns (call that must raise, name, keyword).
BadCase = Callable[[Path], tuple[Callable[[], object], str, str]]


def _file_case(
    make: Callable[[Path], object], keyword: str, name: str = "clip.wav", *, windows: bool = False
) -> BadCase:
    """A file made by ``make`` under tmp_path, read by load_audio (or iter_windows)."""
    def case(tmp: Path) -> tuple[Callable[[], object], str, str]:
        path = tmp / name
        make(path)
        call = (lambda: list(iter_windows(path))) if windows else (lambda: load_audio(path))
        return call, name, keyword

    return case


def _array_case(wave: object, keyword: str) -> BadCase:
    """An in-memory waveform passed to validate_waveform as "my_clip"."""

    def case(tmp: Path) -> tuple[Callable[[], object], str, str]:
        return (lambda: validate_waveform(wave, name="my_clip")), "my_clip", keyword

    return case


def _writes(data: np.ndarray, rate: int = SAMPLE_RATE, **kwargs: str) -> Callable[[Path], None]:
    """A maker writing ``data`` with soundfile.write."""
    return lambda path: sf.write(path, data, rate, **kwargs)


def _float_wav_with(value: float) -> Callable[[Path], None]:
    """A maker of a 2 s float WAV with one sample set to ``value``."""
    data = _noise(2.0)
    data[30_000] = value
    return _writes(data, subtype="FLOAT")


def _truncated(fmt: str, subtype: str, keep: float) -> Callable[[Path], None]:
    """A maker of a 3 s stereo file cut to the first ``keep`` fraction of its bytes."""

    def make(path: Path) -> None:
        sf.write(path, _noise(3.0, channels=2), SAMPLE_RATE, format=fmt, subtype=subtype)
        _truncate(path, keep)

    return make


def _flac_without_length(path: Path) -> None:
    """A FLAC whose STREAMINFO total-samples field is 0, as streaming encoders write it."""
    sf.write(path, _noise(2.0), SAMPLE_RATE, format="FLAC")
    data = bytearray(path.read_bytes())
    data[21] &= 0xF0  # 36-bit total: low nibble of byte 21 and bytes 22-25 ("fLaC" + 4 + 13)
    data[22:26] = bytes(4)
    path.write_bytes(bytes(data))


NOT_AUDIO = "not a readable audio"
BAD_CASES: dict[str, BadCase] = {
    "missing": _file_case(lambda p: None, "no such file"),
    "path-through-a-file": _file_case(
        lambda p: p.parent.write_bytes(b"RIFF"), "cannot access", "clip.wav/inner.wav"
    ),
    "directory": _file_case(lambda p: p.mkdir(), "directory", name="folder.wav"),
    "empty-file": _file_case(lambda p: p.write_bytes(b""), "empty"),
    "named-pipe": _file_case(os.mkfifo, "not a regular file (a named pipe)", "live.wav"),
    "device-file": _file_case(lambda p: p.symlink_to("/dev/null"), "not a regular file (a character device)", "null.wav"),
    "text-file": _file_case(lambda p: p.write_text("hello, not audio\n" * 50), NOT_AUDIO),
    "byte-ramp": _file_case(lambda p: p.write_bytes(bytes(range(256)) * 40), NOT_AUDIO, "x.flac"),
    "truncated-wav16": _file_case(_truncated("WAV", "PCM_16", 0.6), "truncated"),
    "truncated-wav-float": _file_case(_truncated("WAV", "FLOAT", 0.9), "truncated", windows=True),
    "truncated-flac": _file_case(_truncated("FLAC", "PCM_16", 0.7), "truncated", "clip.flac"),
    "truncated-aiff": _file_case(_truncated("AIFF", "PCM_24", 0.5), "truncated", "clip.aiff"),
    "flac-unknown-length": _file_case(_flac_without_length, "no length", "clip.flac"),
    "header-only-wav": _file_case(_writes(np.zeros((0, 1), np.int16)), "0 samples"),
    "nan-float-wav": _file_case(_float_wav_with(np.nan), "NaN"),
    "inf-float-wav": _file_case(_float_wav_with(-np.inf), "infinite", windows=True),
    "half-second": _file_case(_writes(_noise(0.5)), "too short"),
    "half-second-8k": _file_case(_writes(_noise(0.5, 8000), 8000), "too short", windows=True),
    "array-object": _array_case(np.array([object()] * MIN_SAMPLES), "dtype"),
    "array-complex": _array_case(np.ones(MIN_SAMPLES, np.complex64), "dtype"),
    "array-strings": _array_case(np.array(["a"] * MIN_SAMPLES), "dtype"),
    "array-bool": _array_case(np.ones(MIN_SAMPLES, bool), "dtype"),
    "array-datetime": _array_case(np.zeros(MIN_SAMPLES, "datetime64[s]"), "dtype"),
    "array-empty": _array_case(np.zeros(0, np.float32), "empty"),
    "array-zero-channels": _array_case(np.zeros((MIN_SAMPLES, 0), np.float32), "empty"),
    "array-channels-first": _array_case(np.zeros((2, 2 * MIN_SAMPLES)), "channels-first"),
    "array-3d": _array_case(np.zeros((MIN_SAMPLES, 2, 2), np.float32), "shape"),
    "array-scalar": _array_case(np.float32(0.5), "shape"),
    "array-ragged-list": _array_case([[0.0, 1.0], [0.0]], "not a numeric array"),
    "array-nan": _array_case(np.where(np.arange(MIN_SAMPLES) == 7, np.nan, 0.0), "NaN"),
    "array-inf": _array_case(np.full(MIN_SAMPLES, np.inf, np.float32), "infinite"),
    "array-float64-overflow": _array_case(np.full(MIN_SAMPLES, 1e300), "beyond float32"),
    "array-short": _array_case(np.zeros(MIN_SAMPLES - 1, np.int16), "too short"),
}


@pytest.mark.parametrize("case", BAD_CASES.values(), ids=BAD_CASES.keys())
def test_bad_input_raises_asc_error_naming_file_and_problem(tmp_path: Path, case: BadCase) -> None:
    call, name, keyword = case(tmp_path)
    with pytest.raises(AscError) as info:
        call()
    message = str(info.value)
    assert name in message and keyword in message, message
    assert "\n" not in message


@pytest.mark.parametrize(("window", "hop"), [(0.5, 0.5), (10.0, 0.0), (10.0, -1.0), (5.0, 6.0)])
def test_invalid_windowing_is_refused(tmp_path: Path, window: float, hop: float) -> None:
    path = tmp_path / "ok.wav"
    sf.write(path, _noise(12.0), SAMPLE_RATE)
    with pytest.raises(AscError, match="invalid windowing"):
        next(iter_windows(path, window, hop))


# ---------------------------------------------------------------- good inputs
def test_8khz_stereo_int16_is_resampled_and_mixed_to_mono(tmp_path: Path) -> None:
    rate, seconds = 8000, 3.0
    left, right = _sine(440.0, seconds, rate, 0.4), _sine(1000.0, seconds, rate, 0.2)
    pcm = np.round(np.stack([left, right], axis=1) * 32767).astype(np.int16)
    path = tmp_path / "stereo8k.wav"
    sf.write(path, pcm, rate, subtype="PCM_16")

    wave = load_audio(path)

    assert wave.dtype == np.float32 and wave.ndim == 1 and wave.flags.c_contiguous
    assert abs(len(wave) - round(len(pcm) * SAMPLE_RATE / rate)) <= 1
    # The mix is the channel mean: 440 Hz at 0.2 and 1000 Hz at 0.1 survive resampling.
    spec = np.abs(np.fft.rfft(wave[: 2 * SAMPLE_RATE])) / SAMPLE_RATE  # 0.5 Hz bins, amplitude
    assert spec[880] == pytest.approx(0.2, abs=0.005)
    assert spec[2000] == pytest.approx(0.1, abs=0.005)
    assert _peak_hz(wave)[0] == pytest.approx(440.0, abs=1.0)
    assert np.abs(wave).max() < 0.31  # 0.2 + 0.1, plus a little resampling ripple


def test_96khz_24bit_wav(tmp_path: Path) -> None:
    path = tmp_path / "hi.wav"
    sf.write(path, _sine(1000.0, 2.0, 96_000, 0.5), 96_000, subtype="PCM_24")
    wave = load_audio(path)
    assert abs(len(wave) - 2 * SAMPLE_RATE) <= 1
    freq, amp = _peak_hz(wave)
    assert freq == pytest.approx(1000.0, abs=1.0) and amp == pytest.approx(0.5, abs=0.01)


def test_flac_at_44k1_is_bit_exact(tmp_path: Path) -> None:
    pcm = (_noise(1.5, channels=1)[:, 0] * 32767).astype(np.int16)
    path = tmp_path / "clip.flac"
    sf.write(path, pcm, SAMPLE_RATE)
    np.testing.assert_array_equal(load_audio(path), pcm.astype(np.float32) / 32768)


def test_ogg_vorbis(tmp_path: Path) -> None:
    path = tmp_path / "clip.ogg"
    sf.write(path, _sine(2000.0, 2.0, 48_000, 0.3), 48_000, format="OGG", subtype="VORBIS")
    wave = load_audio(path)
    assert abs(len(wave) - 2 * SAMPLE_RATE) <= 1
    freq, amp = _peak_hz(wave)
    assert freq == pytest.approx(2000.0, abs=1.0) and amp == pytest.approx(0.3, abs=0.02)


def test_float32_wav_values_are_kept(tmp_path: Path) -> None:
    data = _noise(1.2, channels=3)
    data[100] = [1.5, -2.0, 0.5]  # float PCM beyond [-1, 1] is not clipped
    path = tmp_path / "float.wav"
    sf.write(path, data, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), data.mean(axis=1), rtol=0, atol=1e-7)


@pytest.mark.parametrize("rate", [SAMPLE_RATE, 8000, 48_000])
def test_exactly_one_second_is_accepted(tmp_path: Path, rate: int) -> None:
    path = tmp_path / "one.wav"
    sf.write(path, _noise(1.0, rate), rate)
    assert len(load_audio(path)) == SAMPLE_RATE
    assert [len(w) for w in iter_windows(path)] == [SAMPLE_RATE]


@pytest.mark.parametrize(
    ("seconds", "hop", "starts"),
    [
        (5.0, 10.0, [0.0]),  # shorter than a window: the whole clip, unpadded
        (10.0, 10.0, [0.0]),
        (12.0, 10.0, [0.0, 2.0]),  # last window = final 10 s
        (30.0, 10.0, [0.0, 10.0, 20.0]),
        (23.0, 5.0, [0.0, 5.0, 10.0, 13.0]),
        (25.0, 5.0, [0.0, 5.0, 10.0, 15.0]),
    ],
)
def test_windows(tmp_path: Path, seconds: float, hop: float, starts: list[float]) -> None:
    path = tmp_path / "long.flac"
    sf.write(path, _noise(seconds), SAMPLE_RATE, subtype="PCM_16")
    whole = load_audio(path)
    windows = list(iter_windows(path, hop_seconds=hop))
    assert len(windows) == len(starts)
    for window, start in zip(windows, starts):
        begin = round(start * SAMPLE_RATE)
        assert window.dtype == np.float32
        np.testing.assert_array_equal(window, whole[begin : begin + CLIP_SAMPLES])


def test_validate_waveform_conversions() -> None:
    ints = np.array([-32768, 0, 16384] * MIN_SAMPLES, np.int16)
    np.testing.assert_array_equal(validate_waveform(ints)[:3], [-1.0, 0.0, 0.5])
    unsigned = np.array([0, 128, 192] * MIN_SAMPLES, np.uint8)
    np.testing.assert_array_equal(validate_waveform(unsigned)[:3], [-1.0, 0.0, 0.5])
    stereo = np.stack([np.full(MIN_SAMPLES, 0.5), np.full(MIN_SAMPLES, -0.25)], axis=1)
    np.testing.assert_array_equal(validate_waveform(stereo), np.full(MIN_SAMPLES, 0.125))
    strided = np.linspace(-1, 1, 2 * MIN_SAMPLES)[::2]
    out = validate_waveform(strided)
    assert out.dtype == np.float32 and out.flags.c_contiguous and len(out) == MIN_SAMPLES


# ---------------------------------------------------------------- one hour, streamed
@pytest.mark.slow
@pytest.mark.parametrize("rate", [SAMPLE_RATE, 8000])  # 8 kHz also streams through soxr
def test_one_hour_flac_streams_in_bounded_memory(tmp_path: Path, rate: int) -> None:
    path = tmp_path / "hour.flac"
    rng = np.random.default_rng(RNG_SEED)
    with sf.SoundFile(path, "w", rate, 1, "PCM_16", format="FLAC") as f:
        for _ in range(60):  # one minute at a time: sparse +-1 LSB clicks in silence
            minute = np.zeros(60 * rate, np.int16)
            minute[rng.random(60 * rate) < 1e-4] = 1
            f.write(minute)

    tracemalloc.start()
    try:
        count = 0
        for window in iter_windows(path):
            assert window.shape == (CLIP_SAMPLES,) and window.dtype == np.float32
            assert np.abs(window).max() < 1e-3
            count += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 360
    assert peak < 50e6, f"peak traced memory {peak / 1e6:.1f} MB"


# ---------------------------------------------------------------- properties
def _valid_file_bytes(fmt: str) -> bytes:
    """A 1.2 s mono PCM_16 file of the given format, as bytes."""
    import io

    buf = io.BytesIO()
    sf.write(buf, _noise(1.2), SAMPLE_RATE, format=fmt, subtype="PCM_16")
    return buf.getvalue()


_VALID = {fmt: _valid_file_bytes(fmt) for fmt in ("WAV", "FLAC")}


@st.composite
def _file_bytes(draw: st.DrawFn) -> bytes:
    """Random bytes, or a valid WAV/FLAC with random bytes overwritten and/or cut short."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=4096))
    data = bytearray(_VALID[draw(st.sampled_from(sorted(_VALID)))])
    for _ in range(draw(st.integers(0, 4))):  # headers are in the first 64 bytes
        data[draw(st.integers(0, 63) | st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.just(len(data)) | st.integers(0, len(data)))])


@settings(max_examples=50, deadline=None, suppress_health_check=[FIXTURE_REUSED])
@given(data=_file_bytes())
def test_any_bytes_load_or_raise_asc_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.wav"
    path.write_bytes(data)
    try:
        wave = load_audio(path)
    except AscError as err:
        assert "fuzz.wav" in str(err)
        return
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert len(wave) >= MIN_SAMPLES and np.isfinite(wave).all()


_DTYPES = st.one_of(
    hnp.floating_dtypes(),
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.boolean_dtypes(),
    hnp.complex_number_dtypes(),
    hnp.unicode_string_dtypes(max_len=2),
)
_LENGTHS = st.sampled_from([0, 1, MIN_SAMPLES - 1, MIN_SAMPLES, MIN_SAMPLES + 3])
_SHAPES = st.one_of(
    st.tuples(_LENGTHS),
    st.tuples(_LENGTHS, st.integers(0, 3)),
    st.tuples(st.integers(0, 3), _LENGTHS),
    hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
)


@settings(max_examples=50, deadline=None)
@given(wave=hnp.arrays(_DTYPES, _SHAPES))
def test_any_array_validates_or_raises_asc_error(wave: np.ndarray) -> None:
    try:
        out = validate_waveform(wave, name="prop")
    except AscError as err:
        assert "prop" in str(err)
        return
    assert out.dtype == np.float32 and out.ndim == 1 and out.flags.c_contiguous
    assert len(out) == wave.shape[0] >= MIN_SAMPLES and np.isfinite(out).all()
    if wave.dtype.kind in "iu":
        assert np.abs(out).max() <= 1.0


@settings(max_examples=25, deadline=None, suppress_health_check=[FIXTURE_REUSED])
@given(
    seconds=st.floats(1.0, 26.0),
    window_s=st.sampled_from([1.0, 2.5, 10.0]),
    hop_frac=st.floats(0.05, 1.0),
)
def test_windows_cover_the_file(
    tmp_path: Path, seconds: float, window_s: float, hop_frac: float
) -> None:
    """Windows start every hop, the last ends at the file's end, and all match load_audio."""
    path = tmp_path / "ramp.wav"
    total = round(seconds * SAMPLE_RATE)
    sf.write(path, np.arange(total, dtype=np.float32), SAMPLE_RATE, subtype="FLOAT")
    window, hop = round(window_s * SAMPLE_RATE), max(1, round(window_s * hop_frac * SAMPLE_RATE))
    starts = []
    for w in iter_windows(path, window_s, hop / SAMPLE_RATE):
        assert len(w) == min(window, total) and w[-1] - w[0] == len(w) - 1
        starts.append(int(w[0]))
    if total <= window:
        assert starts == [0]
        return
    regular = list(range(0, total - window + 1, hop))
    assert starts == regular + ([total - window] if regular[-1] + window < total else [])
