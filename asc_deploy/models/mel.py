"""Slaney mel scale and filterbank in numpy float64, as librosa defines them (htk=False,
norm="slaney"). Computed here so that the runtime and the exporter need no librosa."""

from __future__ import annotations

import numpy as np

_F_SP = 200.0 / 3  # Hz per mel in the linear part
_MIN_LOG_HZ = 1000.0  # Hz where the log part starts
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # 15 mels
_LOGSTEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel of frequencies in Hz."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _F_SP
    log_part = hz >= _MIN_LOG_HZ
    mel[log_part] = _MIN_LOG_MEL + np.log(hz[log_part] / _MIN_LOG_HZ) / _LOGSTEP
    return mel


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Frequencies in Hz of Slaney mels."""
    mel = np.asarray(mel, dtype=np.float64)
    hz = _F_SP * mel
    log_part = mel >= _MIN_LOG_MEL
    hz[log_part] = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel[log_part] - _MIN_LOG_MEL))
    return hz


def mel_points_hz(mel_bins: int, fmin: float, fmax: float) -> np.ndarray:
    """The ``mel_bins + 2`` band edges in Hz, equally spaced in Slaney mel."""
    return mel_to_hz(np.linspace(hz_to_mel(np.array([fmin]))[0], hz_to_mel(np.array([fmax]))[0], mel_bins + 2))


def mel_filterbank(sample_rate: int, n_fft: int, mel_bins: int, fmin: float, fmax: float) -> np.ndarray:
    """Dense Slaney filterbank, float64, shape (n_fft // 2 + 1 FFT bins, mel_bins)."""
    fft_hz = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_points_hz(mel_bins, fmin, fmax)
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.T


def filterbank_segments(sample_rate: int, n_fft: int, mel_bins: int, fmin: float, fmax: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The filterbank in compact form: every FFT bin lies in one segment between two band edges.

    Returns ``segment`` (int64, per FFT bin: index j with edge[j] <= f < edge[j+1], or -1 outside
    all edges), ``rise`` (float64 per FFT bin: (f - edge[j]) / (edge[j+1] - edge[j])) and
    ``norm`` (float64 per band: Slaney's 2 / bandwidth in Hz). Band m's weight of a bin in
    segment m is ``rise * norm[m]``; of a bin in segment m + 1 it is ``(1 - rise) * norm[m]``.
    """
    fft_hz = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_points_hz(mel_bins, fmin, fmax)
    segment = np.searchsorted(edges, fft_hz, side="right") - 1
    outside = (segment < 0) | (segment >= len(edges) - 1)
    seg_clipped = np.clip(segment, 0, len(edges) - 2)
    rise = (fft_hz - edges[seg_clipped]) / np.diff(edges)[seg_clipped]
    segment[outside] = -1
    rise[outside] = 0.0
    norm = 2.0 / (edges[2:] - edges[:-2])
    return segment, rise, norm
