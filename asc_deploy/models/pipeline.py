"""Whole classifiers from waveform to scores, as exported to ONNX and run by the torch backend.

Both wrap the same :class:`LogMelFrontend` and :class:`Cnn6`. ``cnn_dtype`` float16 runs the CNN
in half precision while the frontend, inputs and outputs stay float32 (power spectra exceed
fp16's 65,504 and amin 1e-10 is 0 in fp16).
"""

from __future__ import annotations

import torch
from torch import nn

from asc_deploy.models.cnn6 import Cnn6
from asc_deploy.models.frontend import LogMelFrontend
from asc_deploy.models.spec_augment import stripe_keep_mask


class WaveformClassifier(nn.Module):
    """Waveform (batch, samples) float32 at 44.1 kHz -> (logits, probs), each (batch, classes) float32."""

    def __init__(self, frontend: LogMelFrontend, cnn: Cnn6, cnn_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.frontend, self.cnn, self.cnn_dtype = frontend, cnn.to(cnn_dtype), cnn_dtype

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.cnn(self.frontend(waveform).to(self.cnn_dtype)).float()
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
    """Features (batch, channels, columns, bins // 16) float32 -> (logits, probs), each (batch, classes) float32."""

    def __init__(self, cnn: Cnn6, cnn_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.cnn, self.cnn_dtype = cnn.to(cnn_dtype), cnn_dtype

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.cnn.forward_head(features.to(self.cnn_dtype)).float()
        return logits, torch.softmax(logits, dim=-1)


class PassScorer(nn.Module):
    """The CNN and softmax of test-time augmentation: augmented log-mel (passes, batch, 1, frames,
    bins) -> probabilities (passes, batch, classes) float32, every pass scored independently.

    Its own module so that an exported TTA graph keeps its nodes under one name scope
    (``/scorer/``), which ``asc_deploy.export.loop`` uses to run the passes one at a time.
    """

    def __init__(self, cnn: Cnn6) -> None:
        super().__init__()
        self.cnn = cnn

    def forward(self, augmented: torch.Tensor) -> torch.Tensor:
        logits = self.cnn.forward_head(self.cnn.forward_features(augmented.reshape(-1, *augmented.shape[2:])))
        probs = torch.softmax(logits.float(), dim=-1)
        return probs.reshape(augmented.shape[0], augmented.shape[1], probs.shape[-1])


class TTAClassifier(nn.Module):
    """SP4ASC's test-time augmentation as one batched call.

    Inputs: waveform (batch, samples) float32; time_stripes (passes, n_time, 2) and freq_stripes
    (passes, n_freq, 2) int64 ``[start, width]`` in frames and mel bins. The log-mel is computed
    once; each pass zeroes its stripes after bn0's normalisation (where SP4ASC's SpecAugmentation
    sits) and the (passes x batch) CNN calls run as one batch (:class:`PassScorer`). Output: the
    mean over passes of the softmax, (batch, classes) float32. The same stripes apply to every
    clip of the batch.
    """

    def __init__(self, frontend: LogMelFrontend, cnn: Cnn6, cnn_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.frontend, self.scorer, self.cnn_dtype = frontend, PassScorer(cnn.to(cnn_dtype)), cnn_dtype

    @property
    def cnn(self) -> Cnn6:
        return self.scorer.cnn

    def forward(self, waveform: torch.Tensor, time_stripes: torch.Tensor, freq_stripes: torch.Tensor) -> torch.Tensor:
        x = self.cnn.normalize(self.frontend(waveform).to(self.cnn_dtype))  # (batch, 1, frames, bins)
        time_keep = stripe_keep_mask(time_stripes, x.shape[2]).to(self.cnn_dtype)  # (passes, frames)
        freq_keep = stripe_keep_mask(freq_stripes, x.shape[3]).to(self.cnn_dtype)  # (passes, bins)
        augmented = x[None] * time_keep[:, None, None, :, None] * freq_keep[:, None, None, None, :]
        return self.scorer(augmented).mean(dim=0)
