"""The torch.export program every torch.export-based format is lowered from."""

import pytest
import torch

from asc_deploy.export.forms import ExportFrontend, export_cnn
from asc_deploy.export.program import MAX_BATCH, MAX_SAMPLES, MIN_SAMPLES, export_program
from asc_deploy.models import WaveformClassifier, build_model, fold_batchnorm, load_checkpoint
from tests.shared_data import checkpoint_path, needs_shared

pytestmark = needs_shared


def test_one_program_for_every_length_and_batch(one_torch_thread):
    """Bounds as documented, and the same logits as the eager module at lengths that are and are
    not whole hops (a program specialised on samples % hop would differ or fail on some)."""
    checkpoint = load_checkpoint(checkpoint_path("ce"))
    program = export_program(checkpoint)
    ranges = sorted((r.lower, r.upper) for r in program.range_constraints.values())
    assert ranges == [(1, MAX_BATCH), (MIN_SAMPLES, MAX_SAMPLES)]
    eager = WaveformClassifier(ExportFrontend(), export_cnn(fold_batchnorm(build_model(checkpoint)))).eval()
    generator = torch.Generator().manual_seed(0)
    for batch, samples in ((1, MIN_SAMPLES), (3, 44 * 1024), (2, 44 * 1024 + 1), (1, 5 * 44100 + 1023)):
        waveform = 0.1 * torch.randn(batch, samples, generator=generator)
        with torch.no_grad():
            logits, probs = program.module()(waveform)
            expected = eager(waveform)[0]
        assert logits.shape == (batch, 10)
        assert (logits - expected).abs().max() <= 1e-5, (batch, samples)
