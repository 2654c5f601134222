"""Whole classifiers from waveform to scores, as exported to ONNX and run by the torch backend.

Both wrap the same :class:`LogMelFrontend` and :class:`Cnn6`. ``cnn_dtype`` float16 runs the CNN
in half precision while the frontend, inputs and outputs stay float32 (power spectra exceed
fp16's 65,504 and amin 1e-10 is 0 in fp16). ``temperature`` (a calibrated checkpoint's, see
:mod:`asc_deploy.models.calibration`) divides the float32 logits before every softmax; None (the
default) leaves the function and the exported graph exactly as uncalibrated.
"""

from __future__ import annotations

import torch
from torch import nn

from asc_deploy.models.calibration import Temperature, logit_scale
from asc_deploy.models.cnn6 import Cnn6
from asc_deploy.models.frontend import LogMelFrontend
from asc_deploy.models.spec_augment import stripe_keep_mask


class WaveformClassifier(nn.Module):
    """Waveform (batch, samples) float32 at 44.1 kHz -> (logits, probs), each (batch, classes)
    float32, probs = softmax(logits); with a ``temperature`` the logits are the CNN's divided by it."""

    def __init__(self, frontend: LogMelFrontend, cnn: Cnn6, cnn_dtype: torch.dtype = torch.float32,
                 temperature: Temperature | None = None) -> None:
        super().__init__()
        self.frontend, self.cnn, self.cnn_dtype = frontend, cnn.to(cnn_dtype), cnn_dtype
        self.calibration = logit_scale(temperature)

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.calibration(self.cnn(self.frontend(waveform).to(self.cnn_dtype)).float())
        return logits, torch.softmax(logits, dim=-1)


class FeatureExtractor(nn.Module):
    """The CNN up to its last feature map: log-mel (batch, 1, frames, bins) in dB -> features
    (batch, channels, frames // 16, bins // 16) float32. With :class:`FeatureHead`, the classifier
    split where a stream classifier reuses the feature columns away from a window's edges."""

    def __init__(self, cnn: Cnn6, cnn_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.cnn, self.cnn_dtype = cnn.to(cnn_dtype), cnn_dtype

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        return self.cnn.forward_features(self.cnn.normalize(logmel.to(self.cnn_dtype))).float()


class FeatureHead(nn.Module):
    """Features (batch, channels, columns, bins // 16) float32 -> (logits, probs), each (batch,
    classes) float32; with a ``temperature`` the logits are divided by it, as in :class:`WaveformClassifier`."""

    def __init__(self, cnn: Cnn6, cnn_dtype: torch.dtype = torch.float32, temperature: Temperature | None = None) -> None:
        super().__init__()
        self.cnn, self.cnn_dtype = cnn.to(cnn_dtype), cnn_dtype
        self.calibration = logit_scale(temperature)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.calibration(self.cnn.forward_head(features.to(self.cnn_dtype)).float())
        return logits, torch.softmax(logits, dim=-1)


class PassScorer(nn.Module):
    """The CNN and softmax of test-time augmentation: augmented log-mel (passes, batch, 1, frames,
    bins) -> probabilities (passes, batch, classes) float32, every pass scored independently.

    Its own module so that an exported TTA graph keeps its nodes under one name scope
    (``/scorer/``), which ``asc_deploy.export.loop`` uses to run the passes one at a time. A
    ``temperature`` divides each pass's logits before its softmax (inside that scope).
    """

    def __init__(self, cnn: Cnn6, temperature: Temperature | None = None) -> None:
        super().__init__()
        self.cnn = cnn
        self.calibration = logit_scale(temperature)

    def logits(self, augmented: torch.Tensor) -> torch.Tensor:
        """The CNN's logits of every pass, (passes, batch, classes) float32, before any temperature."""
        logits = self.cnn.forward_head(self.cnn.forward_features(augmented.reshape(-1, *augmented.shape[2:])))
        return logits.float().reshape(-1, augmented.shape[1], logits.shape[-1])  # -1: no pass count in the scorer

    def forward(self, augmented: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.calibration(self.logits(augmented)), dim=-1)


class TTAClassifier(nn.Module):
    """SP4ASC's test-time augmentation as one batched call.

    Inputs: waveform (batch, samples) float32; time_stripes (passes, n_time, 2) and freq_stripes
    (passes, n_freq, 2) int64 ``[start, width]`` in frames and mel bins. The log-mel is computed
    once; each pass zeroes its stripes after bn0's normalisation (where SP4ASC's SpecAugmentation
    sits) and the (passes x batch) CNN calls run as one batch (:class:`PassScorer`). Output: the
    mean over passes of the softmax (of the logits divided by ``temperature`` when given), (batch,
    classes) float32. The same stripes apply to every clip of the batch.
    """

    def __init__(self, frontend: LogMelFrontend, cnn: Cnn6, cnn_dtype: torch.dtype = torch.float32,
                 temperature: Temperature | None = None) -> None:
        super().__init__()
        self.frontend, self.scorer, self.cnn_dtype = frontend, PassScorer(cnn.to(cnn_dtype), temperature), cnn_dtype

    @property
    def cnn(self) -> Cnn6:
        return self.scorer.cnn

    def augment(self, waveform: torch.Tensor, time_stripes: torch.Tensor, freq_stripes: torch.Tensor) -> torch.Tensor:
        """The normalised log-mel of every pass, (passes, batch, 1, frames, bins) in ``cnn_dtype``."""
        x = self.cnn.normalize(self.frontend(waveform).to(self.cnn_dtype))  # (batch, 1, frames, bins)
        time_keep = stripe_keep_mask(time_stripes, x.shape[2]).to(self.cnn_dtype)  # (passes, frames)
        freq_keep = stripe_keep_mask(freq_stripes, x.shape[3]).to(self.cnn_dtype)  # (passes, bins)
        return x[None] * time_keep[:, None, None, :, None] * freq_keep[:, None, None, None, :]

    def forward(self, waveform: torch.Tensor, time_stripes: torch.Tensor, freq_stripes: torch.Tensor) -> torch.Tensor:
        return self.scorer(self.augment(waveform, time_stripes, freq_stripes)).mean(dim=0)
