import numpy as np
import pytest
import torch

from asc_deploy.labels import num_frames
from asc_deploy.models import LogMelFrontend
from asc_deploy.models.mel import mel_filterbank
from tests.shared_data import needs_shared


def exact_logmel(wave: np.ndarray) -> np.ndarray:
    """The same log-mel in float64 with numpy's FFT: the truth both float32 frontends approximate."""
    wave = np.pad(wave.astype(np.float64), 1024, mode="reflect")
    frames = np.stack([wave[i * 1024 : i * 1024 + 2048] for i in range(num_frames(len(wave) - 2048))])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(2048) / 2048)
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    return 10 * np.log10(np.maximum(power @ mel_filterbank(44100, 2048, 256, 0, 22050), 1e-10))


@pytest.fixture(scope="module")
def frontend() -> LogMelFrontend:
    return LogMelFrontend().eval()


def test_filterbank_matches_librosa():
    librosa = pytest.importorskip("librosa")
    expected = librosa.filters.mel(sr=44100, n_fft=2048, n_mels=256, fmin=0, fmax=22050)
    assert np.abs(mel_filterbank(44100, 2048, 256, 0, 22050).T - expected).max() < 1e-8


def test_compact_filterbank_expands_to_the_dense_one(frontend):
    weights = frontend.mel_weights().numpy()  # rows in DFT output order k1 * 17 + k2, bin k1 + 64 * k2
    k = (np.arange(frontend.n1)[:, None] + frontend.n1 * np.arange(frontend.kept_k2)[None, :]).ravel()
    dense = np.zeros((1025, 256))
    dense[k[k <= 1024]] = weights[k <= 1024]
    assert np.abs(weights[k > 1024]).max() == 0
    assert np.abs(dense - mel_filterbank(44100, 2048, 256, 0, 22050)).max() < 1e-7


@pytest.mark.parametrize("samples", [44100, 441000, 529200, 50001])
def test_output_shape(frontend, samples):
    out = frontend(torch.randn(2, samples))
    assert out.shape == (2, 1, num_frames(samples), 256) and out.dtype == torch.float32


@needs_shared
def test_matches_torchlibrosa_reference(frontend, reference):
    """<= 1e-3 dB against the float64 truth on every clip (1 s and 12 s included). Against the
    torchlibrosa reference the bar is 1e-3 dB except where the reference itself is off the truth:
    its conv DFT is 1.16e-3 dB away from float64 on 03_vehicle, so no float32 method that does not
    repeat its exact arithmetic can be within 1e-3 dB of it everywhere."""
    for name in reference["names"]:
        wave, expected = reference[f"wave/{name}"], reference[f"logmel/{name}"]
        with torch.no_grad():
            ours = frontend(torch.from_numpy(wave)[None])[0, 0].numpy()
        truth = exact_logmel(wave)
        assert ours.shape == expected.shape
        assert np.abs(ours - truth).max() <= 5e-4, name
        error, ref_error = np.abs(ours - expected), np.abs(expected - truth)
        assert error.max() <= 1.2e-3, name
        assert np.all((error <= 1e-3) | (ref_error > 8e-4)), name
        assert np.mean(error <= 1e-4) > 0.999, name


def test_macs_counts_its_matrices(frontend):
    per_frame = 2048 + 128 * 64 * 32 + 4 * 2048 + 64 * 64 * 34 + 2 * 64 * 17 + 1088 * 256
    assert frontend.macs(441000) == 431 * per_frame


def test_rejects_bad_configuration():
    with pytest.raises(ValueError, match="hop_length"):
        LogMelFrontend(hop_length=512)
    with pytest.raises(ValueError, match="fft_factors"):
        LogMelFrontend(fft_factors=(32, 32))
