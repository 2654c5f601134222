"""Runtime audio loading: any file libsndfile reads -> float32 mono at 44.1 kHz, in 10 s windows.

Input
    WAV, FLAC and Ogg/Vorbis (and the other formats libsndfile reads) through ``soundfile``;
    integer or float PCM, any channel count (averaged to mono), any sample rate (resampled to
    :data:`~asc_deploy.labels.SAMPLE_RATE` = 44,100 Hz with soxr, quality "HQ"). Integer PCM
    is scaled by libsndfile to [-1, 1); float PCM is kept as it is.

Length policy (all lengths in samples at 44.1 kHz, after resampling)
    * under :data:`~asc_deploy.labels.MIN_SECONDS` (1 s, 44,100 samples): refused with
      :class:`~asc_deploy.errors.AscError`;
    * 1 s up to one window (10 s, 441,000 samples): the whole clip is one window, unpadded;
    * longer: windows of exactly 10 s starting every ``hop_seconds`` (default 10 s, so
      non-overlapping); when the file does not end on a window boundary a last window is
      taken from the final 10 s of the file, so nothing is lost and every window is 10 s. The
      caller averages the windows' class probabilities.

Memory
    :func:`iter_windows` streams: it reads and resamples blocks of at most about 1 Mi values
    (4 MiB) and keeps at most about two windows, so memory does not grow with the file's
    length (a one-hour file peaks at about 17 MiB of numpy arrays).
    :func:`load_audio` returns the whole file as one array (about 635 MB of float32 for one
    hour): use it for clips, and :func:`iter_windows` for anything long.

Errors
    Every input problem raises :class:`~asc_deploy.errors.AscError` naming the file: missing
    path, directory, empty file, not audio, truncated file (a header declaring more data than
    the file holds, or a decoder failing part way), zero channels or frames, NaN or infinite
    samples, a clip under 1 s. Problems found while decoding surface from the iterator, possibly
    after some windows of a long file were already yielded.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from asc_deploy.errors import AscError
from asc_deploy.labels import CLIP_SECONDS, MIN_SECONDS, SAMPLE_RATE

MIN_SAMPLES = int(SAMPLE_RATE * MIN_SECONDS)  # 44,100: shortest clip accepted
RESAMPLE_QUALITY = "HQ"  # soxr quality for every rate conversion
_BLOCK_VALUES = 1 << 20  # most values (frames x channels, in or out of soxr) per read block
# libsndfile logs a chunk whose size disagrees with the file as "data : A (should be B)".
_SIZE_MISMATCH = re.compile(r"^\s*([\w ]+?)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # placeholders written by streaming encoders: not truncation
_UNKNOWN_FRAMES = 2**63 - 1  # SF_COUNT_MAX: libsndfile's frame count for a FLAC of unknown length
# Errors soundfile and soxr raise for unreadable input (LibsndfileError is a RuntimeError).
_DECODE_ERRORS = (sf.SoundFileError, RuntimeError, ValueError, OSError, OverflowError)


def load_audio(source: str | Path) -> np.ndarray:
    """Read a whole audio file as float32 mono at 44.1 kHz, shape ``(samples,)``.

    Refuses clips under 1 s. Reads the whole file into memory (4 bytes per output sample, about
    635 MB for one hour); use :func:`iter_windows` for long files.
    """
    chunks = list(_stream(source))
    wave = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    _check_length(len(wave), source)
    return wave


def iter_windows(
    source: str | Path, window_seconds: float = CLIP_SECONDS, hop_seconds: float = CLIP_SECONDS
) -> Iterator[np.ndarray]:
    """Yield float32 mono 44.1 kHz windows of exactly ``window_seconds``, streaming from disk.

    Windows start every ``hop_seconds``; a file ending off a window boundary gets a last window
    covering its final ``window_seconds``. A clip shorter than one window (but at least 1 s) is
    yielded whole. ``window_seconds`` must be at least 1 s and ``hop_seconds`` in
    (0, ``window_seconds``] so that no part of the file is skipped.
    """
    return windows_of(_stream(source), source, window_seconds, hop_seconds)


def split_windows(
    wave: np.ndarray, name: str = "<array>", window_seconds: float = CLIP_SECONDS, hop_seconds: float = CLIP_SECONDS
) -> Iterator[np.ndarray]:
    """The windows of :func:`iter_windows` for a waveform already in memory (float32 mono, 44.1 kHz)."""
    return windows_of(iter([wave]), name, window_seconds, hop_seconds)


def windows_of(
    chunks: Iterator[np.ndarray], name: str | Path, window_seconds: float, hop_seconds: float
) -> Iterator[np.ndarray]:
    """Cut consecutive float32 chunks of one signal into the windows of :func:`iter_windows`."""
    window = round(window_seconds * SAMPLE_RATE)
    hop = round(hop_seconds * SAMPLE_RATE)
    if window < MIN_SAMPLES or not 0 < hop <= window:
        raise AscError(
            f"invalid windowing: window {window_seconds} s must be >= {MIN_SECONDS} s and hop "
            f"{hop_seconds} s in (0, window]"
        )
    buf = np.zeros(0, np.float32)  # samples from absolute index `offset` onwards
    offset = 0  # absolute index of buf[0]
    next_start = 0  # absolute index where the next regular window starts
    covered = 0  # absolute index where the last yielded window ends
    parts: list[np.ndarray] = []
    pending = 0  # samples in `parts`, not yet joined to `buf`
    for chunk in chunks:
        parts.append(chunk)
        pending += len(chunk)
        if offset + len(buf) + pending < next_start + window:
            continue
        buf = np.concatenate([buf, *parts])
        parts, pending = [], 0
        while next_start + window <= offset + len(buf):
            yield buf[next_start - offset : next_start - offset + window].copy()
            covered = next_start + window
            next_start += hop
        # Keep what future windows need, and the last `window` samples for a final window.
        keep_from = min(next_start, offset + len(buf) - window)
        buf = buf[keep_from - offset :]
        offset = keep_from
    buf = np.concatenate([buf, *parts])
    total = offset + len(buf)
    _check_length(total, name)
    if total < window:
        yield buf
    elif covered < total:
        yield buf[len(buf) - window :].copy()


def validate_waveform(wave: npt.ArrayLike, name: str = "<array>") -> np.ndarray:
    """Check an in-memory waveform at 44.1 kHz and return it as contiguous float32 mono.

    Accepts a 1-D array ``(samples,)`` or, like soundfile, a 2-D array ``(samples, channels)``
    whose channels are averaged; a 2-D array with more channels than samples is refused as
    channels-first. Float arrays keep their values; signed integer PCM is scaled by
    ``2**(bits-1)`` to [-1, 1), unsigned integer PCM is offset binary (WAV 8-bit style). Bool,
    complex, object, string and datetime arrays, empty arrays, NaN or infinite samples and
    clips under 1 s (44,100 samples) raise :class:`AscError` naming ``name``.
    """
    try:
        arr = np.asarray(wave)
    except (ValueError, TypeError) as err:
        raise AscError(f"not a numeric array: {err}", name) from err
    kind = arr.dtype.kind
    if kind not in "fiu":
        raise AscError(f"unsupported dtype {arr.dtype} (need float or integer PCM)", name)
    if arr.ndim not in (1, 2):
        raise AscError(f"need a 1-D or (samples, channels) array, got shape {arr.shape}", name)
    if arr.size == 0:
        raise AscError(f"empty waveform, shape {arr.shape}", name)
    if arr.ndim == 2 and arr.shape[1] > arr.shape[0]:
        raise AscError(f"shape {arr.shape} looks channels-first; pass (samples, channels)", name)
    # Overflow (values beyond float32, or a channel sum beyond float64) gives inf: refused below.
    with np.errstate(over="ignore", invalid="ignore"):
        if kind == "f":
            samples = arr.astype(np.float64)
        else:
            scale = float(2 ** (8 * arr.dtype.itemsize - 1))
            samples = arr.astype(np.float64) / scale - (1.0 if kind == "u" else 0.0)
        if samples.ndim == 2:
            samples = samples.mean(axis=1)
        mono = np.ascontiguousarray(samples, dtype=np.float32)
    if not np.isfinite(mono).all():
        raise AscError("contains NaN or infinite samples (or values beyond float32)", name)
    _check_length(len(mono), name)
    return mono


def _check_length(samples: int, name: str | Path) -> None:
    """Refuse clips under 1 s; ``samples`` counts samples at 44.1 kHz."""
    if samples < MIN_SAMPLES:
        raise AscError(
            f"too short: {samples / SAMPLE_RATE:.3f} s, need at least {MIN_SECONDS} s", name
        )


def _file_kind(mode: int) -> str:
    """What a non-regular, non-directory file is, in words."""
    for test, kind in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "a special file"


def open_audio(path: Path) -> sf.SoundFile:
    """Open ``path`` for reading after the checks that need no decoding."""
    try:
        info = path.stat()
    except FileNotFoundError as err:
        raise AscError("no such file", path) from err
    except OSError as err:
        raise AscError(f"cannot access the file ({err.strerror})", path) from err
    if stat.S_ISDIR(info.st_mode):
        raise AscError("is a directory, not an audio file", path)
    if not stat.S_ISREG(info.st_mode):
        raise AscError(f"not a regular file ({_file_kind(info.st_mode)}); audio files are read whole and seeked", path)
    if info.st_size == 0:
        raise AscError("empty file (0 bytes)", path)
    try:
        f = sf.SoundFile(path)
    except _DECODE_ERRORS as err:
        raise AscError(f"not a readable audio file ({_reason(err)})", path) from err
    try:
        if f.channels < 1 or f.samplerate < 1:
            raise AscError(f"{f.channels} channels at {f.samplerate} Hz: no audio", path)
        if f.frames == 0:
            raise AscError("no audio frames (0 samples)", path)
        if f.frames == _UNKNOWN_FRAMES:  # soundfile fails to read these: say why
            raise AscError("header gives no length (streamed FLAC?); re-encode it to a file", path)
        for chunk, declared, actual in _SIZE_MISMATCH.findall(f.extra_info):
            # A shortfall of 1 byte is a missing RIFF pad byte, which loses no audio.
            if int(declared) > int(actual) + 1 and int(declared) not in _UNKNOWN_SIZES:
                raise AscError(
                    f"truncated: '{chunk}' chunk declares {declared} bytes, file holds {actual}",
                    path,
                )
    except BaseException:
        f.close()
        raise
    return f


def file_blocks(f: sf.SoundFile, path: Path, block: int) -> Iterator[np.ndarray]:
    """Consecutive (frames, channels) float32 blocks of at most ``block`` frames of an opened
    file at its own rate; :class:`AscError` naming ``path`` for NaN, infinite or truncated data."""
    done = 0  # frames decoded so far, at the file's rate
    while done < f.frames:
        try:
            # read() (unlike blocks()) returns only the frames actually decoded.
            data = f.read(block, dtype="float32", always_2d=True)
        except _DECODE_ERRORS as err:
            raise AscError(
                f"truncated or corrupt: decoding failed after {done / f.samplerate:.2f} s "
                f"({_reason(err)})",
                path,
            ) from err
        if len(data) == 0:
            break
        if not np.isfinite(data).all():
            bad = done + int(np.argmax(~np.isfinite(data).all(axis=1)))
            raise AscError(
                f"contains NaN or infinite samples (first at {bad / f.samplerate:.3f} s)", path
            )
        done += len(data)
        yield data
    if done < f.frames:
        raise AscError(
            f"truncated: header declares {f.frames} frames, only {done} could be read", path
        )


def _stream(source: str | Path) -> Iterator[np.ndarray]:
    """Yield consecutive float32 mono 44.1 kHz chunks of ``source``, decoded block by block."""
    path = Path(source)
    with open_audio(path) as f:
        # Bound both the decoded block and soxr's output for it to about _BLOCK_VALUES values.
        most_in = min(_BLOCK_VALUES // f.channels, _BLOCK_VALUES * f.samplerate // SAMPLE_RATE)
        block = max(1, most_in)
        resampler = None
        if f.samplerate != SAMPLE_RATE:
            try:
                resampler = soxr.ResampleStream(
                    f.samplerate, SAMPLE_RATE, 1, dtype="float32", quality=RESAMPLE_QUALITY
                )
            except _DECODE_ERRORS as err:
                raise AscError(f"cannot resample from {f.samplerate} Hz ({err})", path) from err
        for data in file_blocks(f, path, block):
            mono = data.mean(axis=1) if f.channels > 1 else data[:, 0]
            yield mono if resampler is None else resampler.resample_chunk(mono)
        if resampler is not None:
            yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)


def _reason(err: BaseException) -> str:
    """The short text of a soundfile error (libsndfile's own message when there is one)."""
    return str(getattr(err, "error_string", None) or err).strip()
