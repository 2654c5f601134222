"""Export forms (export/forms.py: ExportFrontend, ExportBlock) rearrange the graph for speed,
not the math: they compute the shared modules' functions to float32 rounding."""

import numpy as np
import pytest
import torch

from asc_deploy.export.forms import ExportBlock, ExportFrontend, export_cnn
from asc_deploy.models import Cnn6, LogMelFrontend, build_model, fold_batchnorm, load_checkpoint
from tests.models.test_frontend import exact_logmel
from tests.shared_data import checkpoint_path, needs_shared


@needs_shared
def test_export_frontend_matches_the_reference_log_mel(reference):
    """Same bars as LogMelFrontend's reference test where they are float32 bars: <= 5e-4 dB from
    the float64 truth, <= 1.2e-3 dB from torchlibrosa's reference (itself up to 1.16e-3 dB off the
    truth), 99.9 % of values within 1e-4 dB of it."""
    frontend = ExportFrontend().eval()
    for name in reference["names"]:
        wave, expected = reference[f"wave/{name}"], reference[f"logmel/{name}"]
        with torch.no_grad():
            ours = frontend(torch.from_numpy(wave)[None])[0, 0].numpy()
        assert ours.shape == expected.shape
        assert np.abs(ours - exact_logmel(wave)).max() <= 5e-4, name
        assert np.abs(ours - expected).max() <= 1.2e-3, name
        assert np.mean(np.abs(ours - expected) <= 1e-4) > 0.999, name


def test_export_frontend_equals_the_shared_frontend():
    wave = torch.from_numpy(np.random.default_rng(0).uniform(-0.5, 0.5, (2, 3 * 44_100)).astype(np.float32))
    with torch.no_grad():
        difference = (ExportFrontend()(wave) - LogMelFrontend()(wave)).abs()  # dB
    # White noise has frames where one FFT bin holds ~1e-4 of the frame's power: float32 rounding,
    # relative to the whole frame, reaches ~1e-3 dB there in both forms (shared 1.4e-3 dB, export
    # 1.5e-3 dB from the float64 truth on this input; between them 2.9e-4 dB); the typical value
    # is ~1e-6 dB.
    assert difference.max() < 1e-3 and difference.mean() < 2e-6


@pytest.mark.parametrize("factors", [(64, 32), (32, 64)])
def test_the_half_spectrum_layout_weights_every_bin_once(factors):
    """The second stage's outputs hold every bin 0 ... n_fft / 2 (some twice, as a bin and as its
    mirror): the layout's filterbank has each bin's weights exactly once, the rest zeros."""
    frontend = ExportFrontend(fft_factors=factors)
    n1, n2 = factors
    assert frontend.mel_layout_rows.shape == (n2 * (n1 // 2 + 1),)
    with torch.no_grad():
        natural, layout = frontend.mel_natural(), frontend.mel_layout()
    held = frontend.mel_layout_rows <= 1024
    assert sorted(frontend.mel_layout_rows[held].tolist()) == list(range(1025))
    assert torch.equal(layout[held], natural[frontend.mel_layout_rows[held]]) and not layout[~held].any()
    assert natural[1025:].abs().sum() == 0 and natural[:1025].abs().sum() > 0
    wave = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 44_100)).astype(np.float32))
    with torch.no_grad():
        assert (frontend(wave) - LogMelFrontend(fft_factors=factors)(wave)).abs().max() < 1e-3


@needs_shared
def test_export_cnn_equals_the_folded_cnn():
    torch.manual_seed(0)
    random = Cnn6().eval()
    with torch.no_grad():
        for module in random.modules():  # non-trivial BatchNorm statistics to fold
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1), module.running_var.uniform_(0.5, 2), module.weight.uniform_(0.5, 2)
        for cnn in (fold_batchnorm(build_model(load_checkpoint(checkpoint_path("ce")))), fold_batchnorm(random)):
            x = torch.randn(2, 1, 44, 256) * 10 - 40
            assert (export_cnn(cnn)(x) - cnn(x)).abs().max() < 1e-4
            # blocks in groups of output channels (the CPU schedule) compute the same values; only
            # the 1x1 convolutions' summation order may change with the group size
            whole = export_cnn(cnn)(x)
            for groups in ((2, 4, 1, 1), (4, 2, 2, 2), (64, 128, 1, 128)):
                assert (export_cnn(cnn, channel_groups=groups)(x) - whole).abs().max() < 1e-4, groups


def test_channel_groups_must_divide_the_channels():
    cnn = fold_batchnorm(Cnn6().eval())
    assert len(ExportBlock(cnn.conv1, 2).sp_convs) == 2 and not ExportBlock(cnn.conv1, 2).ch_convs  # 1x1 folded
    assert len(ExportBlock(cnn.conv2, 4).ch_convs) == 4
    for block, groups in ((cnn.conv1, 3), (cnn.conv1, 0), (cnn.conv2, 5)):
        with pytest.raises(ValueError, match="channel_groups must divide"):
            ExportBlock(block, groups)
    with pytest.raises(ValueError, match="one value per block"):
        export_cnn(cnn, channel_groups=(2, 2))
