"""Torch modules shared by training, export and benchmarking (needs the ``[train]`` extra).

Data flows one way: waveform -> :class:`LogMelFrontend` -> log-mel -> :class:`Cnn6` -> logits.
"""

from asc_deploy.models.checkpoint import Checkpoint, build_model, load_checkpoint
from asc_deploy.models.cnn6 import Cnn6
from asc_deploy.models.fold import fold_batchnorm
from asc_deploy.models.frontend import LogMelFrontend
from asc_deploy.models.pipeline import TTAClassifier, WaveformClassifier

__all__ = [
    "Checkpoint",
    "Cnn6",
    "LogMelFrontend",
    "TTAClassifier",
    "WaveformClassifier",
    "build_model",
    "fold_batchnorm",
    "load_checkpoint",
]
