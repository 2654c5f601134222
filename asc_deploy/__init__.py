"""asc-deploy: the SP4ASC acoustic scene classifier, from training to deployment.

Importing this package needs no torch: the runtime (audio loading, ONNX inference) is numpy,
soundfile, soxr and onnxruntime. Training and export live in ``asc_deploy.train`` and
``asc_deploy.export`` and need the ``[train]`` extra.
"""

from __future__ import annotations

from asc_deploy.errors import AscError
from asc_deploy.labels import CLASS_LABELS, SAMPLE_RATE

__version__ = "0.1.0"

__all__ = ["AscError", "CLASS_LABELS", "SAMPLE_RATE", "__version__"]
