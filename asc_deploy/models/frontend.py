"""Log-mel frontend: waveform at 44.1 kHz -> (batch, 1, frames, mel bins) log-mel in dB.

Numerically the torchlibrosa frontend of SP4ASC (n_fft 2048, hop 1024, periodic Hann window,
centred frames with reflect padding, power spectrum, Slaney mel 0-22050 Hz, 10*log10 with
amin 1e-10, ref 1.0, no top_db), computed so that it exports to small, portable ONNX:

- frames come from reshaping the padded signal into hop-sized chunks (hop = n_fft / 2) and
  concatenating neighbours: no unfold, no STFT op;
- the real DFT is a Cooley-Tukey factorisation n_fft = N1 x N2 (2048 = 64 x 32): a size-N1 DFT
  as one MatMul, an elementwise twiddle, a size-N2 DFT as one MatMul that keeps only the bins
  up to Nyquist. About 0.4 MMAC a frame instead of 4.2 for a dense DFT, and the matrices hold
  10 k floats instead of 4 M (64 x 32 is the most accurate split in float32);
- the Slaney filterbank is stored compactly (one segment index and one ramp value per FFT bin,
  one norm per band) and expanded with a few ops that runtimes constant-fold at load.
Only MatMul, Mul, Add, Sub, Pad, Slice, Concat, Reshape, Equal, Cast, Max, Log are needed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from asc_deploy.labels import HOP_LENGTH, MEL_BINS, N_FFT, SAMPLE_RATE
from asc_deploy.models.mel import filterbank_segments


def _dft_matrices(n1: int, n2: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matrices of the factorised real DFT of size n = n1 * n2 (float64).

    Sample index n = n2_count * i1 + i2 (i1 < n1, i2 < n2), bin k = k1 + n1 * k2 (k1 < n1).
    Returns ``outer`` (2*n1, n1): rows [cos; -sin] of the size-n1 DFT over i1; ``twiddle``
    (2, n1, n2): real and imaginary part of exp(-2 pi j i2 k1 / n); ``inner`` (2*n2, 2*K2) with
    K2 = n / 2 / n1 + 1 bins k2 kept: [[C, -S], [S, C]] so that [Zr | Zi] @ inner = [Xr | Xi].
    """
    n = n1 * n2
    i1 = np.arange(n1)
    outer = np.concatenate([np.cos(2 * np.pi * np.outer(i1, i1) / n1), -np.sin(2 * np.pi * np.outer(i1, i1) / n1)])
    angle = -2 * np.pi * np.outer(np.arange(n1), np.arange(n2)) / n
    twiddle = np.stack([np.cos(angle), np.sin(angle)])
    k2 = np.arange(n // 2 // n1 + 1)
    phase = 2 * np.pi * np.outer(np.arange(n2), k2) / n2
    cos, sin = np.cos(phase), np.sin(phase)
    inner = np.block([[cos, -sin], [sin, cos]])
    return outer, twiddle, inner


class LogMelFrontend(nn.Module):
    """Waveform (batch, samples) at 44.1 kHz -> log-mel (batch, 1, frames, mel_bins) in dB.

    frames = samples // hop_length + 1 (431 for a 10 s clip). Clips must be longer than
    n_fft / 2 samples (reflect padding). Every tensor built here is float32.
    """

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        n_fft: int = N_FFT,
        hop_length: int = HOP_LENGTH,
        mel_bins: int = MEL_BINS,
        fmin: float = 0.0,
        fmax: float | None = None,
        amin: float = 1e-10,
        fft_factors: tuple[int, int] = (64, 32),
    ) -> None:
        super().__init__()
        if hop_length * 2 != n_fft:
            raise ValueError(f"hop_length must be n_fft / 2 for chunked framing, got {hop_length} and {n_fft}")
        if fft_factors[0] * fft_factors[1] != n_fft:
            raise ValueError(f"fft_factors {fft_factors} do not multiply to n_fft {n_fft}")
        fmax = sample_rate / 2 if fmax is None else fmax
        self.sample_rate, self.n_fft, self.hop_length, self.mel_bins = sample_rate, n_fft, hop_length, mel_bins
        self.fmin, self.fmax, self.amin = fmin, fmax, amin
        self.n1, self.n2 = fft_factors
        self.kept_k2 = n_fft // 2 // self.n1 + 1  # bins k2 of the inner DFT up to Nyquist

        def buffer(name: str, value: np.ndarray, dtype: torch.dtype = torch.float32) -> None:
            # Persistent buffers become ONNX initializers, so the ops that expand them stay in the graph.
            self.register_buffer(name, torch.as_tensor(value, dtype=dtype))

        window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
        outer, twiddle, inner = _dft_matrices(self.n1, self.n2)
        buffer("window", window.reshape(self.n1, self.n2))
        buffer("dft_outer", outer)
        buffer("twiddle_real", twiddle[0])
        buffer("twiddle_imag", twiddle[1])
        buffer("dft_inner", inner)

        # Filterbank rows follow the DFT's output order k1 * kept_k2 + k2 (bin k = k1 + n1 * k2);
        # rows of bins above Nyquist get segment -1, hence weight 0.
        segment, rise, norm = filterbank_segments(sample_rate, n_fft, mel_bins, fmin, fmax)
        k = (np.arange(self.n1)[:, None] + self.n1 * np.arange(self.kept_k2)[None, :]).ravel()
        valid = k <= n_fft // 2
        k = np.minimum(k, n_fft // 2)
        buffer("mel_segment", np.where(valid, segment[k], -1), torch.int64)
        buffer("mel_rise", np.where(valid, rise[k], 0.0))
        buffer("mel_norm", norm)

    def mel_weights(self) -> torch.Tensor:
        """Dense filterbank (n1 * kept_k2 rows in DFT output order, mel_bins), float32."""
        edges = torch.arange(self.mel_bins + 2, device=self.mel_segment.device)
        in_segment = (self.mel_segment[:, None] == edges[None, :]).to(torch.float32)
        rising = in_segment[:, : self.mel_bins] * self.mel_rise[:, None]
        falling = in_segment[:, 1 : self.mel_bins + 1] * (1.0 - self.mel_rise[:, None])
        return (rising + falling) * self.mel_norm[None, :]

    def power_spectrogram(self, waveform: torch.Tensor) -> torch.Tensor:
        """Waveform (batch, samples) -> power (batch, frames, n1 * kept_k2) in DFT output order."""
        batch, samples = waveform.shape
        padded = nn.functional.pad(waveform[:, None, :], (self.n_fft // 2, self.n_fft // 2), mode="reflect")[:, 0, :]
        chunks = padded[:, : (samples // self.hop_length + 2) * self.hop_length].reshape(batch, -1, self.hop_length)
        frames = torch.cat([chunks[:, :-1], chunks[:, 1:]], dim=-1).reshape(batch, -1, self.n1, self.n2)
        outer = torch.matmul(self.dft_outer, frames * self.window)  # (batch, frames, 2*n1, n2)
        real, imag = outer[..., : self.n1, :], outer[..., self.n1 :, :]
        tw_real, tw_imag = self.twiddle_real, self.twiddle_imag
        twiddled = torch.cat([real * tw_real - imag * tw_imag, real * tw_imag + imag * tw_real], dim=-1)
        spectrum = torch.matmul(twiddled, self.dft_inner)  # (batch, frames, n1, 2*kept_k2)
        power = spectrum[..., : self.kept_k2] ** 2 + spectrum[..., self.kept_k2 :] ** 2
        return power.reshape(batch, power.shape[1], self.n1 * self.kept_k2)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Waveform (batch, samples), float32 at 44.1 kHz -> log-mel (batch, 1, frames, mel_bins) in dB."""
        mel = torch.matmul(self.power_spectrogram(waveform), self.mel_weights())
        return (10.0 / math.log(10.0)) * torch.log(torch.clamp(mel, min=self.amin))[:, None]

    def macs(self, num_samples: int) -> int:
        """Multiply-accumulates for one clip of ``num_samples`` samples, from this module's matrices."""
        frames = num_samples // self.hop_length + 1
        per_frame = (
            self.n_fft  # window
            + self.dft_outer.shape[0] * self.dft_outer.shape[1] * self.n2  # outer DFT
            + 4 * self.n1 * self.n2  # twiddle (complex multiply)
            + self.n1 * self.dft_inner.shape[0] * self.dft_inner.shape[1]  # inner DFT
            + 2 * self.n1 * self.kept_k2  # power
            + self.mel_segment.shape[0] * self.mel_bins  # mel filterbank
        )
        return frames * per_frame
