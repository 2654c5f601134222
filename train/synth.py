"""Synthetic acoustic scenes in the TAU Urban Acoustic Scenes 2020 Mobile development layout.

A stand-in for the real data set (which cannot be downloaded here) that exercises the same
code: ten scene classes, nine devices, a location-disjoint train/evaluate split, device a
dominating training and devices s4-s6 appearing only in the evaluate split.

How a clip is made:

- a **scene** is a mix of ingredients whose parameters are drawn per class from overlapping
  ranges (:data:`SCENES`): a stationary noise bed (spectral slope, low-pass corner), a tonal
  hum with harmonics and slow frequency modulation (engines, motors, ventilation), speech-like
  babble (voiced sources, formants, syllable and talk-spurt envelopes), impulsive events
  (footsteps, rail joints; from regular to random), tonal chirps (birds, brake squeal, chimes,
  horns), reverberation, an overall level and its slow variation. "Place" parameters (noise
  colour, hum frequency, reverberation, ...) are drawn once per location, the others per
  segment, so recordings from one location resemble each other;
- each segment is **recorded** by one or more devices (:data:`DEVICES`), as in TAU where a, b,
  c and the simulated s1-s6 recorded the same scene in parallel: a zero-phase frequency
  response (high-pass, low-pass, resonance, tilt), gain, a white noise floor and soft clipping,
  then 16-bit PCM.

Per class (n = ``clips_per_class_device``), training has ``TRAIN_A_FACTOR * n`` segments
recorded by device a, every ``TRAIN_A_FACTOR``-th of them also by b, c, s1, s2 and s3;
evaluation has ``3 n`` segments from other locations, each recorded by one of the device groups
(a, s1, s4), (b, s2, s5), (c, s3, s6): n clips per class and device. fold1_test.csv lists the
evaluate clips without labels, as in TAU 2020. Every random number comes from generators
seeded by (seed, location, segment, device): the same arguments give the same bytes.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import json
import os
import signal
import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import click
import numpy as np
import soundfile as sf

from asc_deploy.atomic import atomic_open, atomic_path
from asc_deploy.errors import AscError
from asc_deploy.labels import CLASS_LABELS, MIN_SECONDS, SAMPLE_RATE

Range = tuple[float, float]  # uniform distribution (low, high)

TRAIN_DEVICES: tuple[str, ...] = ("a", "b", "c", "s1", "s2", "s3")
DEVICES: tuple[str, ...] = TRAIN_DEVICES + ("s4", "s5", "s6")  # s4-s6: evaluate split only
TRAIN_A_FACTOR = 10  # training segments of device a per training segment of each other device
EVALUATE_GROUPS: tuple[tuple[str, ...], ...] = (("a", "s1", "s4"), ("b", "s2", "s5"), ("c", "s3", "s6"))
SEGMENTS_PER_LOCATION = 3
CITIES: tuple[str, ...] = (
    "amsterdam", "barcelona", "helsinki", "lisbon", "london", "lyon", "madrid", "milan", "paris", "prague", "stockholm", "vienna",
)
MANIFEST = "synth.json"  # parameters of a generated data set, to recognise it on a second run
GENERATOR_VERSION = 1  # bump when the output for the same arguments changes
SILENT_DB = -80.0  # ingredients at or below this level (dB re the noise bed) are left out
MAX_SECONDS = 60.0  # longest clip length offered, s
LOW_DECIMATION = 4  # hum and babble (below 5 kHz) are made at SAMPLE_RATE / 4


@dataclass(frozen=True)
class SceneSpec:
    """Parameter ranges of one scene class. Levels of ingredients are in dB relative to the
    noise bed; the defaults leave an ingredient out."""

    level_db: Range  # RMS level of the scene at device a, dBFS
    level_var_db: Range = (0.5, 2.0)  # standard deviation of the slow level variation, dB
    noise_slope: Range = (1.0, 1.5)  # noise bed power spectrum ~ f ** -slope
    noise_lowpass_hz: Range = (4000.0, 8000.0)
    hum_db: Range = (SILENT_DB, SILENT_DB)
    hum_hz: Range = (50.0, 100.0)  # fundamental frequency
    hum_fm: Range = (0.0, 0.02)  # standard deviation of the relative frequency modulation
    hum_fm_hz: Range = (0.1, 0.5)  # rate of the frequency modulation's random knots
    babble_db: Range = (SILENT_DB, SILENT_DB)
    talkers: Range = (1.0, 1.0)  # voices in the babble (rounded)
    events_db: Range = (SILENT_DB, SILENT_DB)  # impulsive events (footsteps, rail joints, ...)
    events_hz: Range = (1.0, 2.0)  # events per second
    events_jitter: Range = (0.5, 1.0)  # coefficient of variation of the intervals: 0 regular, 1 random
    events_lowpass_hz: Range = (1500.0, 4000.0)
    chirps_db: Range = (SILENT_DB, SILENT_DB)
    chirps_hz: Range = (0.5, 1.0)  # chirps per second
    chirp_start_hz: Range = (2000.0, 6000.0)
    chirp_seconds: Range = (0.05, 0.2)  # duration of one chirp
    chirp_octaves: Range = (0.0, 0.0)  # frequency sweep over one chirp
    reverb_rt60_s: Range = (0.0, 0.0)  # reverberation time (60 dB decay)
    reverb_wet: Range = (0.0, 0.0)  # share of reverberant sound


PLACE_FIELDS = frozenset(
    {"noise_slope", "noise_lowpass_hz", "hum_hz", "hum_db", "events_lowpass_hz", "chirp_start_hz", "reverb_rt60_s", "reverb_wet"}
)

BIRDS = {"chirp_start_hz": (2000.0, 7000.0), "chirp_seconds": (0.04, 0.2), "chirp_octaves": (-1.0, 1.0)}
SQUEAL = {"chirp_start_hz": (1500.0, 4000.0), "chirp_seconds": (0.3, 1.5), "chirp_octaves": (-0.2, 0.2)}
CHIME = {"chirp_start_hz": (450.0, 1200.0), "chirp_seconds": (0.2, 0.6), "chirp_octaves": (0.0, 0.0)}

# Ranges overlap on purpose where TAU's classes are confused too (airport / shopping_mall /
# metro_station, bus / tram / metro, park / public_square / street_pedestrian). On the demo set
# (3 s clips) a small CNN trained from scratch reaches about 85 % on the evaluate split, about
# 70 % on the unseen devices s4-s6.
SCENES: dict[str, SceneSpec] = {
    "airport": SceneSpec(
        level_db=(-32, -25), noise_slope=(0.9, 1.5), noise_lowpass_hz=(3500, 8000),
        hum_db=(-16, -8), hum_hz=(50, 120), babble_db=(-8, -2), talkers=(3, 8),
        events_db=(-12, -5), events_hz=(2, 5), events_jitter=(0.2, 0.5), events_lowpass_hz=(3000, 6000),
        chirps_db=(-6, 0), chirps_hz=(0.3, 0.8), **CHIME, reverb_rt60_s=(1.0, 2.0), reverb_wet=(0.3, 0.5),
    ),
    "bus": SceneSpec(
        level_db=(-30, -21), level_var_db=(1, 3), noise_slope=(1.8, 2.5), noise_lowpass_hz=(900, 2500),
        hum_db=(-4, 4), hum_hz=(25, 60), hum_fm=(0.02, 0.08), hum_fm_hz=(0.1, 0.4), babble_db=(-10, -2), talkers=(1, 5),
        events_db=(-18, -10), events_hz=(0, 1), events_lowpass_hz=(1000, 3000),
        chirps_db=(-14, -4), chirps_hz=(0, 0.1), **CHIME, reverb_rt60_s=(0.1, 0.3), reverb_wet=(0.15, 0.3),
    ),
    "metro": SceneSpec(
        level_db=(-27, -19), level_var_db=(1.5, 4), noise_slope=(2.1, 2.8), noise_lowpass_hz=(800, 2000),
        hum_db=(-6, 2), hum_hz=(250, 500), hum_fm=(0.05, 0.2), hum_fm_hz=(0.1, 0.4), babble_db=(-16, -6), talkers=(1, 4),
        events_db=(-10, -3), events_hz=(1.5, 4), events_jitter=(0.05, 0.2), events_lowpass_hz=(600, 1500),
        chirps_db=(-8, 0), chirps_hz=(0, 0.3), **SQUEAL, reverb_rt60_s=(0.15, 0.4), reverb_wet=(0.1, 0.25),
    ),
    "metro_station": SceneSpec(
        level_db=(-29, -20), level_var_db=(3, 7), noise_slope=(1.7, 2.4), noise_lowpass_hz=(1500, 3500),
        hum_db=(-10, 0), hum_hz=(100, 350), hum_fm=(0.15, 0.35), hum_fm_hz=(0.2, 0.6), babble_db=(-12, -4), talkers=(2, 6),
        events_db=(-16, -8), events_hz=(0.5, 2), events_lowpass_hz=(1500, 4000),
        chirps_db=(-6, 2), chirps_hz=(0.1, 0.5), **SQUEAL, reverb_rt60_s=(1.5, 2.5), reverb_wet=(0.5, 0.8),
    ),
    "park": SceneSpec(
        level_db=(-40, -31), level_var_db=(1, 3), noise_slope=(0.6, 1.2), noise_lowpass_hz=(6000, 12000),
        hum_db=(-30, -18), hum_hz=(30, 70), babble_db=(-18, -10), talkers=(1, 3),
        events_db=(-20, -12), events_hz=(0, 1), events_jitter=(0.3, 1), events_lowpass_hz=(1500, 4000),
        chirps_db=(-8, 2), chirps_hz=(0.8, 4), **BIRDS, reverb_rt60_s=(0.05, 0.2), reverb_wet=(0, 0.05),
    ),
    "public_square": SceneSpec(
        level_db=(-36, -28), level_var_db=(1.5, 3.5), noise_slope=(1.0, 1.6), noise_lowpass_hz=(3500, 8000),
        hum_db=(-18, -10), hum_hz=(30, 80), hum_fm=(0.03, 0.15), babble_db=(-8, -2), talkers=(2, 8),
        events_db=(-18, -8), events_hz=(0.3, 1.5), events_jitter=(0.5, 1), events_lowpass_hz=(1500, 4000),
        chirps_db=(-14, -6), chirps_hz=(0.3, 1.5), **BIRDS, reverb_rt60_s=(0.1, 0.5), reverb_wet=(0, 0.1),
    ),
    "shopping_mall": SceneSpec(
        level_db=(-30, -22), level_var_db=(0.5, 2), noise_slope=(0.6, 1.2), noise_lowpass_hz=(5000, 10000),
        hum_db=(-22, -12), hum_hz=(90, 250), babble_db=(2, 8), talkers=(6, 10),
        events_db=(-16, -8), events_hz=(1, 3), events_jitter=(0.6, 1), events_lowpass_hz=(2000, 5000),
        chirps_db=(-10, -2), chirps_hz=(1.5, 4), chirp_start_hz=(300, 1200), chirp_seconds=(0.15, 0.4),
        chirp_octaves=(-0.1, 0.1), reverb_rt60_s=(0.5, 1.2), reverb_wet=(0.2, 0.4),
    ),
    "street_pedestrian": SceneSpec(
        level_db=(-32, -24), level_var_db=(2, 4), noise_slope=(1.1, 1.8), noise_lowpass_hz=(3000, 6000),
        hum_db=(-14, -4), hum_hz=(30, 80), hum_fm=(0.05, 0.2), babble_db=(-4, 3), talkers=(3, 10),
        events_db=(-8, 0), events_hz=(2, 4), events_jitter=(0.2, 0.5), events_lowpass_hz=(1500, 4000),
        chirps_db=(-18, -8), chirps_hz=(0, 0.4), **BIRDS, reverb_rt60_s=(0.3, 0.8), reverb_wet=(0.15, 0.3),
    ),
    "street_traffic": SceneSpec(
        level_db=(-29, -20), level_var_db=(5, 10), noise_slope=(1.2, 1.9), noise_lowpass_hz=(3000, 7000),
        hum_db=(-14, -4), hum_hz=(25, 80), hum_fm=(0.15, 0.35), hum_fm_hz=(0.5, 1.5),
        events_db=(-18, -8), events_hz=(0, 0.8), events_lowpass_hz=(1000, 3000),
        chirps_db=(-8, 0), chirps_hz=(0, 0.4), chirp_start_hz=(350, 600), chirp_seconds=(0.2, 0.8),
        reverb_rt60_s=(0.05, 0.3), reverb_wet=(0, 0.1),
    ),
    "tram": SceneSpec(
        level_db=(-32, -24), level_var_db=(1.5, 4), noise_slope=(1.6, 2.2), noise_lowpass_hz=(1800, 4000),
        hum_db=(-6, 0), hum_hz=(60, 160), hum_fm=(0.1, 0.3), hum_fm_hz=(0.5, 1.5), babble_db=(-12, -2), talkers=(1, 5),
        events_db=(-12, -5), events_hz=(0.5, 2), events_jitter=(0.05, 0.2), events_lowpass_hz=(700, 2000),
        chirps_db=(-8, 0), chirps_hz=(0.2, 0.6), **CHIME, reverb_rt60_s=(0.15, 0.4), reverb_wet=(0.1, 0.25),
    ),
}


@dataclass(frozen=True)
class DeviceSpec:
    """A recording chain: zero-phase filters, gain, noise floor, soft clipping."""

    highpass_hz: float  # 2nd-order Butterworth magnitude
    lowpass_hz: float  # 4th-order Butterworth magnitude
    peak_hz: float  # centre of a resonance, Gaussian in log-frequency, half an octave wide
    peak_db: float
    tilt_db_per_octave: float  # around 1 kHz
    gain_db: float
    noise_floor_db: float  # RMS of the white self-noise, dBFS
    drive: float  # soft clipping tanh(drive * x) / drive; 0: none (hard limit at full scale only)


DEVICE_SPECS: dict[str, DeviceSpec] = {
    "a": DeviceSpec(15, 20000, 1000, 0, 0.0, 0, -85, 0),
    "b": DeviceSpec(180, 9500, 2500, 5, -1.0, -3, -68, 1.5),
    "c": DeviceSpec(110, 15000, 5500, 4, 0.5, 2, -72, 1),
    "s1": DeviceSpec(70, 12500, 1200, 5, 0.0, -2, -74, 0),
    "s2": DeviceSpec(280, 17000, 8000, -6, 1.5, 1, -70, 0),
    "s3": DeviceSpec(150, 7500, 3500, 8, 0.0, 0, -66, 2),
    "s4": DeviceSpec(400, 4800, 1800, 6, 0.0, 3, -62, 3),
    "s5": DeviceSpec(50, 11000, 700, 9, -2.0, -5, -70, 0),
    "s6": DeviceSpec(240, 12000, 6000, 10, 1.0, 5, -60, 5),
}
DEVICE_GAIN_JITTER_DB = 1.5  # per-clip gain variation (handling, distance), uniform +-


@dataclass(frozen=True)
class Segment:
    """One recorded scene segment and the devices that recorded it."""

    split: str  # "train" or "evaluate"
    scene: int  # index into CLASS_LABELS
    city: str
    location: int  # unique over the data set
    segment: int  # index within the location
    devices: tuple[str, ...]

    def filename(self, device: str) -> str:
        """The TAU-style file name, relative to the data set root."""
        return f"audio/{CLASS_LABELS[self.scene]}-{self.city}-{self.location}-{self.segment}-{device}.wav"


def split_sizes(clips_per_class_device: int) -> tuple[int, int]:
    """Clips in the train and the evaluate split (150 n and 90 n for n clips per class and device)."""
    per_class_train = (TRAIN_A_FACTOR + len(TRAIN_DEVICES) - 1) * clips_per_class_device
    return len(CLASS_LABELS) * per_class_train, len(CLASS_LABELS) * len(DEVICES) * clips_per_class_device


def plan(clips_per_class_device: int, seed: int) -> list[Segment]:
    """All segments of a data set, class by class, train before evaluate."""
    n = clips_per_class_device
    segments = []
    location = 0
    for scene in range(len(CLASS_LABELS)):
        for split, count in (("train", TRAIN_A_FACTOR * n), ("evaluate", len(EVALUATE_GROUPS) * n)):
            for j in range(count):
                number = location + j // SEGMENTS_PER_LOCATION
                city = CITIES[np.random.default_rng([seed, 0, number]).integers(len(CITIES))]
                if split == "train":
                    devices = TRAIN_DEVICES if j % TRAIN_A_FACTOR == 0 else ("a",)
                else:
                    devices = EVALUATE_GROUPS[j % len(EVALUATE_GROUPS)]
                segments.append(Segment(split, scene, city, number, j % SEGMENTS_PER_LOCATION, devices))
            location += math.ceil(count / SEGMENTS_PER_LOCATION)
    return segments


# --- signal ingredients: float64 arrays of n samples at SAMPLE_RATE ---------------------------

def _freqs(n: int, sample_rate: float = SAMPLE_RATE) -> np.ndarray:
    """Frequencies in Hz of the rfft bins of n samples."""
    return np.fft.rfftfreq(n, 1.0 / sample_rate)


def _lowpass(freqs: np.ndarray, corner_hz: float, order: int) -> np.ndarray:
    """Butterworth magnitude response."""
    return 1.0 / np.sqrt(1.0 + (freqs / corner_hz) ** (2 * order))


def _unit_rms(x: np.ndarray) -> np.ndarray:
    """``x`` scaled to an RMS of 1 (unchanged if silent)."""
    rms = float(np.sqrt(np.mean(x**2)))
    return x / rms if rms > 0 else x


def _control(rng: np.random.Generator, n: int, knots_hz: float, rows: int = 1, sample_rate: float = SAMPLE_RATE) -> np.ndarray:
    """Slow random control signals, shape (rows, n samples at ``sample_rate``): straight lines
    between standard normal knots spaced 1 / knots_hz seconds (all rows share the knot times)."""
    offset = rng.uniform(0.0, 1.0)
    count = int((n - 1) * knots_hz / sample_rate + offset) + 2
    knot_times = (np.arange(count) - offset) * (sample_rate / knots_hz)  # in samples
    knots = rng.standard_normal((rows, count))
    samples = np.arange(n, dtype=np.float64)
    return np.stack([np.interp(samples, knot_times, row) for row in knots])


def _event_onsets(rng: np.random.Generator, n: int, rate_hz: float, jitter: float) -> np.ndarray:
    """Sample indices of events at ``rate_hz`` per second whose intervals have coefficient of
    variation ``jitter`` (gamma-distributed; 1 is a Poisson process)."""
    if rate_hz <= 0:
        return np.zeros(0, dtype=np.int64)
    shape = 1.0 / max(jitter, 0.05) ** 2
    count = int(rate_hz * n / SAMPLE_RATE * 2) + 10
    times = np.cumsum(rng.gamma(shape, 1.0 / (shape * rate_hz), count)) - rng.uniform(0.0, 1.0 / rate_hz)
    onsets = (times * SAMPLE_RATE).astype(np.int64)
    return onsets[(onsets >= 0) & (onsets < n)]


def _noise_bed(rng: np.random.Generator, n: int, slope: float, lowpass_hz: float) -> np.ndarray:
    """Gaussian noise with power spectrum ~ f ** -slope (flat below 20 Hz), low-passed."""
    freqs = _freqs(n)
    spectrum = rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs))
    spectrum *= np.maximum(freqs, 20.0) ** (-slope / 2) * _lowpass(freqs, lowpass_hz, 2)
    return _unit_rms(np.fft.irfft(spectrum, n))


def _hum(rng: np.random.Generator, m: int, rate: float, f0_hz: float, fm: float, fm_hz: float) -> np.ndarray:
    """Six harmonics (m samples at ``rate``) of a fundamental that wanders by ``fm`` (relative
    standard deviation) through random knots, within 0.5-1.5 times ``f0_hz``."""
    f0 = f0_hz * np.clip(1.0 + fm * _control(rng, m, fm_hz, 1, rate)[0], 0.5, 1.5)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    harmonics = np.arange(1, 7)[:, None]
    amplitudes = rng.uniform(0.3, 1.0, (6, 1)) / harmonics
    return _unit_rms((amplitudes * np.sin(harmonics * phase + rng.uniform(0, 2 * np.pi, (6, 1)))).sum(axis=0))


def _babble(rng: np.random.Generator, m: int, rate: float, talkers: int) -> np.ndarray:
    """Speech-like babble (m samples at ``rate``): per talker a sawtooth voice (90-250 Hz,
    intonation) plus breath noise through three formants, shaped by syllables (~4 per second)
    and talk spurts."""
    f0 = rng.uniform(90.0, 250.0, (talkers, 1)) * (1.0 + 0.08 * _control(rng, m, 3.0, talkers, rate))
    cycles = np.cumsum(f0, axis=1) / rate
    source = 2.0 * (cycles % 1.0) - 1.0 + 0.3 * rng.standard_normal((talkers, m))
    freqs = _freqs(m, rate)
    formants = np.log2(rng.uniform([300.0, 900.0, 2300.0], [900.0, 2300.0, 3300.0], (talkers, 3)))
    shape = np.exp(-0.5 * ((np.log2(np.maximum(freqs, 20.0)) - formants[:, :, None]) / 0.25) ** 2).sum(axis=1) + 0.05
    voices = np.fft.irfft(np.fft.rfft(source, axis=1) * shape * _lowpass(freqs, 5000.0, 2), m, axis=1)
    syllables = np.maximum(_control(rng, m, 8.0, talkers, rate), 0.0) ** 1.5
    spurts = 1.0 / (1.0 + np.exp(-4.0 * _control(rng, m, 0.8, talkers, rate) - 2.0))
    return _unit_rms((voices * syllables * spurts).sum(axis=0))


def _upsample(low: np.ndarray, n: int) -> np.ndarray:
    """A signal made at SAMPLE_RATE / LOW_DECIMATION, at SAMPLE_RATE (first n samples), by
    zero-padding its spectrum."""
    spectrum = np.fft.rfft(low)
    full = np.zeros(LOW_DECIMATION * len(low) // 2 + 1, dtype=complex)
    full[: len(spectrum)] = spectrum
    return LOW_DECIMATION * np.fft.irfft(full, LOW_DECIMATION * len(low))[:n]


def _events(rng: np.random.Generator, n: int, rate_hz: float, jitter: float, lowpass_hz: float) -> np.ndarray:
    """Impulsive events: one low-passed, decaying noise burst (80 ms, time constant 5-20 ms)
    repeated with random amplitudes."""
    length = int(0.08 * SAMPLE_RATE)
    burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (rng.uniform(0.005, 0.02) * SAMPLE_RATE))
    burst = np.fft.irfft(np.fft.rfft(burst) * _lowpass(_freqs(length), lowpass_hz, 2), length)
    out = np.zeros(n + length)
    for onset in _event_onsets(rng, n, rate_hz, jitter):
        out[onset : onset + length] += rng.lognormal(0.0, 0.5) * burst
    return _unit_rms(out[:n])


def _chirps(rng: np.random.Generator, n: int, rate_hz: float, start_hz: float, seconds: float, octaves: float) -> np.ndarray:
    """Random (Poisson) tonal chirps with sin^2 envelopes and exponential sweeps; per chirp the
    start frequency, duration and sweep vary around the given values."""
    out = np.zeros(n)
    for onset in _event_onsets(rng, n, rate_hz, 1.0):
        duration = seconds * rng.uniform(0.7, 1.3)
        t = np.arange(min(int(duration * SAMPLE_RATE), n - onset)) / SAMPLE_RATE
        sweep = rng.normal(0.0, 0.15) + octaves * rng.uniform(0.5, 1.5) * t / duration  # octaves
        freq = np.minimum(start_hz * 2.0**sweep, 0.45 * SAMPLE_RATE)  # no aliasing
        phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
        out[onset : onset + len(t)] += rng.lognormal(0.0, 0.4) * np.sin(np.pi * t / duration) ** 2 * np.sin(phase)
    return _unit_rms(out)


def _reverb_response(rng: np.random.Generator, n: int, rt60_s: float, wet: float) -> np.ndarray:
    """rfft of a room response (direct path plus exponentially decaying noise, ``wet`` of the
    energy), for circular convolution with n samples."""
    length = max(1, min(n, int(rt60_s * SAMPLE_RATE)))
    tail = _unit_rms(rng.standard_normal(length) * np.exp(-6.91 * np.arange(length) / (rt60_s * SAMPLE_RATE)))
    response = np.zeros(n)
    response[:length] = np.sqrt(wet) * tail / np.sqrt(length)
    response[0] += np.sqrt(1.0 - wet)
    return np.fft.rfft(response)


def _draw(spec: SceneSpec, location_rng: np.random.Generator, segment_rng: np.random.Generator) -> dict[str, float]:
    """One value per parameter: place parameters from the location's generator, the others
    from the segment's (both generators advance identically, whatever the spec)."""
    values = {}
    for field in fields(spec):
        low, high = getattr(spec, field.name)
        place, segment = location_rng.uniform(low, high), segment_rng.uniform(low, high)
        values[field.name] = place if field.name in PLACE_FIELDS else segment
    return values


def render_scene(scene: int, location: int, segment: int, n: int, seed: int) -> np.ndarray:
    """The scene as it arrives at the microphones, as the rfft of n samples at 44.1 kHz with an
    RMS level of about ``level_db`` dBFS."""
    location_rng = np.random.default_rng([seed, 1, location])
    rng = np.random.default_rng([seed, 2, location, segment])
    p = _draw(SCENES[CLASS_LABELS[scene]], location_rng, rng)
    m, low_rate = -(-n // LOW_DECIMATION), SAMPLE_RATE / LOW_DECIMATION
    low = np.zeros(m)
    if p["hum_db"] > SILENT_DB:
        low += 10 ** (p["hum_db"] / 20) * _hum(rng, m, low_rate, p["hum_hz"], p["hum_fm"], p["hum_fm_hz"])
    if p["babble_db"] > SILENT_DB:
        low += 10 ** (p["babble_db"] / 20) * _babble(rng, m, low_rate, round(p["talkers"]))
    mix = _noise_bed(rng, n, p["noise_slope"], p["noise_lowpass_hz"]) + _upsample(low, n)
    if p["events_db"] > SILENT_DB:
        mix += 10 ** (p["events_db"] / 20) * _events(rng, n, p["events_hz"], p["events_jitter"], p["events_lowpass_hz"])
    if p["chirps_db"] > SILENT_DB:
        mix += 10 ** (p["chirps_db"] / 20) * _chirps(rng, n, p["chirps_hz"], p["chirp_start_hz"], p["chirp_seconds"], p["chirp_octaves"])
    mix *= 10 ** (p["level_var_db"] * _control(rng, n, 1.0)[0] / 20)
    spectrum = np.fft.rfft(10 ** (p["level_db"] / 20) * _unit_rms(mix))
    if p["reverb_wet"] > 0:  # the room response has unit energy: the level stays about the same
        spectrum *= _reverb_response(rng, n, p["reverb_rt60_s"], p["reverb_wet"])
    return spectrum


@functools.lru_cache(maxsize=2 * len(DEVICE_SPECS))
def device_response(device: str, n: int) -> np.ndarray:
    """Magnitude response of a device (without its gain) at the rfft bins of n samples; read-only."""
    spec = DEVICE_SPECS[device]
    freqs = _freqs(n)
    ratio = (np.maximum(freqs, 1.0) / spec.highpass_hz) ** 4
    octaves = np.log2(np.maximum(freqs, 1.0) / spec.peak_hz)
    shape_db = spec.peak_db * np.exp(-0.5 * (octaves / 0.5) ** 2) + spec.tilt_db_per_octave * np.log2(np.maximum(freqs, 1.0) / 1000.0)
    response = np.sqrt(ratio / (1.0 + ratio)) * _lowpass(freqs, spec.lowpass_hz, 4) * 10 ** (shape_db / 20)
    response.flags.writeable = False
    return response


def record(scene_spectrum: np.ndarray, n: int, device: str, rng: np.random.Generator) -> np.ndarray:
    """A device's 16-bit recording (int16, n samples) of a scene given as its rfft."""
    spec = DEVICE_SPECS[device]
    gain_db = spec.gain_db + rng.uniform(-DEVICE_GAIN_JITTER_DB, DEVICE_GAIN_JITTER_DB)
    signal = np.fft.irfft(scene_spectrum * device_response(device, n), n) * 10 ** (gain_db / 20)
    signal += 10 ** (spec.noise_floor_db / 20) * rng.standard_normal(n)
    if spec.drive > 0:
        signal = np.tanh(spec.drive * signal) / spec.drive
    return np.round(np.clip(signal, -1.0, 1.0) * 32767).astype(np.int16)


# --- data set files ------------------------------------------------------------------------

def _write_table(path: Path, header: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in (header, *rows):
            f.write("\t".join(row) + "\n")


def _prepare(out: Path, manifest: dict[str, int | float | str], overwrite: bool) -> bool:
    """Make ``out`` ready for the data set described by ``manifest``; True when it already holds
    (part of) that very data set, whose complete audio files can be kept.

    A non-empty folder holding anything else is refused unless ``overwrite``; then the files
    of the layout (manifest, CSVs, audio/*.wav) are deleted first.
    """
    if out.exists() and not out.is_dir():
        raise AscError("exists and is not a folder", out)
    if not out.exists() or not any(out.iterdir()):
        return False
    try:
        previous = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    if previous == manifest:
        return True
    if not overwrite:
        what = f"a different synthetic data set ({json.dumps(previous)})" if previous else "other files"
        raise AscError(f"already contains {what}; pass --overwrite to replace it", out)
    for path in [out / MANIFEST, out / "meta.csv", *(out / "evaluation_setup").glob("fold1_*.csv"), *(out / "audio").glob("*.wav")]:
        path.unlink(missing_ok=True)
    return False


def _write_segment(out: Path, n: int, seed: int, resume: bool, seg: Segment) -> None:
    """Render one segment (n samples) and write each device's recording of it; when resuming,
    a segment whose files all exist is skipped."""
    paths = {device: out / seg.filename(device) for device in seg.devices}
    if resume and all(path.is_file() for path in paths.values()):
        return
    spectrum = render_scene(seg.scene, seg.location, seg.segment, n, seed)
    for device, path in paths.items():
        pcm = record(spectrum, n, device, np.random.default_rng([seed, 3, seg.location, seg.segment, DEVICES.index(device)]))
        with atomic_path(path) as tmp:
            sf.write(tmp, pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")


def _progress(done: Iterator[None], total: int, show: bool) -> None:
    """Run ``done`` (one item per segment written) to its end, behind a progress bar on stderr if ``show``."""
    if not show:
        collections.deque(done, maxlen=0)
        return
    with click.progressbar(done, length=total, label="Recording scenes", file=sys.stderr) as bar:
        collections.deque(bar, maxlen=0)


def make_dataset(
    out_dir: str | Path,
    clips_per_class_device: int = 3,
    seconds: float = 3.0,
    seed: int = 0,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write a synthetic data set in the TAU 2020 Mobile layout to ``out_dir``; returns its path.

    ``clips_per_class_device`` (n) clips per class and device in the evaluate split (90 n
    clips); training has 10 n clips per class from device a and n from each of b, c, s1-s3
    (150 n clips). ``seconds``: clip length (samples = round(seconds * 44100)). Audio files
    already there from an interrupted run with the same arguments are kept (writes are atomic).
    Segments are rendered in one process per core. ``progress``: a progress bar on stderr.
    """
    if clips_per_class_device < 1:
        raise AscError(f"clips per class and device must be at least 1, got {clips_per_class_device}")
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise AscError(f"clip length must be {MIN_SECONDS}-{MAX_SECONDS} s, got {seconds}")
    out = Path(out_dir)
    manifest = {"generator": "asc-synth", "version": GENERATOR_VERSION, "clips_per_class_device": clips_per_class_device, "seconds": seconds, "seed": seed}
    resume = _prepare(out, manifest, overwrite)
    with atomic_open(out / MANIFEST, "w", encoding="utf-8") as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
    segments = plan(clips_per_class_device, seed)
    write = functools.partial(_write_segment, out, round(seconds * SAMPLE_RATE), seed, resume)
    workers = min(len(segments), os.cpu_count() or 1)
    if workers == 1:
        _progress(map(write, segments), len(segments), progress)
    else:  # every segment has its own seeded generators: the same bytes in any order
        pool = concurrent.futures.ProcessPoolExecutor(workers, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))
        try:  # Ctrl-C reaches this process only: the segments not started are dropped, the workers finish their file
            _progress(pool.map(write, segments, chunksize=4), len(segments), progress)
        finally:
            pool.shutdown(cancel_futures=True)
    clips = sorted((seg.filename(device), seg, device) for seg in segments for device in seg.devices)
    _write_table(
        out / "meta.csv",
        ("filename", "scene_label", "identifier", "source_label"),
        ((name, CLASS_LABELS[seg.scene], f"{seg.city}-{seg.location}", device) for name, seg, device in clips),
    )
    for split, file in (("train", "fold1_train.csv"), ("evaluate", "fold1_evaluate.csv")):
        rows = ((name, CLASS_LABELS[seg.scene]) for name, seg, _ in clips if seg.split == split)
        _write_table(out / "evaluation_setup" / file, ("filename", "scene_label"), rows)
    _write_table(out / "evaluation_setup" / "fold1_test.csv", ("filename",), ((name,) for name, seg, _ in clips if seg.split == "evaluate"))
    return out


RECORDING_LOCATION = 10_000  # locations of recordings: far above any data set's, so every scene is from an unseen place


def make_recording(path: str | Path, scenes: Sequence[str], seconds_per_scene: float, device: str = "a", seed: int = 0) -> Path:
    """Write one continuous 16-bit mono WAV at 44.1 kHz to ``path``: ``scenes`` (class labels) one
    after another, ``seconds_per_scene`` each, recorded by ``device``, each from a location of its
    own that no data set uses (a stand-in for a long live recording, e.g. for asc-stream)."""
    unknown = [s for s in scenes if s not in CLASS_LABELS]
    if not scenes or unknown:
        raise AscError(f"unknown scene(s) {unknown}: choose from {', '.join(CLASS_LABELS)}" if unknown else "no scene given")
    if device not in DEVICES:
        raise AscError(f"unknown device {device!r}: choose from {', '.join(DEVICES)}")
    if not MIN_SECONDS <= seconds_per_scene <= MAX_SECONDS:
        raise AscError(f"seconds per scene must be {MIN_SECONDS}-{MAX_SECONDS} s, got {seconds_per_scene}")
    n = round(seconds_per_scene * SAMPLE_RATE)
    parts = [record(render_scene(CLASS_LABELS.index(scene), RECORDING_LOCATION + i, 0, n, seed), n, device,
                    np.random.default_rng([seed, 4, i, DEVICES.index(device)])) for i, scene in enumerate(scenes)]
    with atomic_path(Path(path)) as tmp:
        sf.write(tmp, np.concatenate(parts), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return Path(path)


@click.command()
@click.argument("out_dir", metavar="OUT", type=click.Path(path_type=Path))
@click.option(
    "--clips-per-class-device", default=3, show_default=True, type=click.IntRange(min=1),
    help="n: evaluate has n clips per class and device (90 n), train 150 n",
)
@click.option("--seconds", default=3.0, show_default=True, type=click.FloatRange(MIN_SECONDS, MAX_SECONDS), help="clip length in seconds (TAU: 10)")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="same seed and options give the same bytes")
@click.option("--overwrite", is_flag=True, help="replace a different data set already in OUT")
@click.option("--recording", "scenes", default=None, metavar="SCENE,SCENE,...",
              help="write instead one continuous recording (WAV file OUT) of these scenes in turn, --seconds each")
@click.option("--device", default="a", show_default=True, type=click.Choice(DEVICES), help="--recording: the recording device")
def main(out_dir: Path, clips_per_class_device: int, seconds: float, seed: int, overwrite: bool, scenes: str | None, device: str) -> None:
    """Write a synthetic acoustic scene data set in the TAU Urban Acoustic Scenes 2020 Mobile
    layout (meta.csv, evaluation_setup/fold1_*.csv, audio/*.wav) to the folder OUT, or with
    --recording one long recording of several scenes to the WAV file OUT."""
    try:
        if scenes is not None:
            names = [s.strip() for s in scenes.split(",") if s.strip()]
            path = make_recording(out_dir, names, seconds, device, seed)
            click.echo(f"wrote {len(names) * seconds:g} s ({', '.join(f'{seconds:g} s {s}' for s in names)}, device {device}) to {path}")
            return
        out = make_dataset(out_dir, clips_per_class_device, seconds, seed, overwrite=overwrite, progress=True)
    except AscError as exc:
        raise click.ClickException(str(exc)) from exc
    train, evaluate = split_sizes(clips_per_class_device)
    click.echo(f"wrote {train} train and {evaluate} evaluate clips of {seconds:g} s to {out}")


if __name__ == "__main__":
    main()
