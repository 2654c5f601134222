import numpy as np
import pytest
import torch

from asc_deploy.models import Cnn6, LogMelFrontend, TTAClassifier, build_model, load_checkpoint
from asc_deploy.models.spec_augment import SpecAugment, apply_stripes, draw_stripes, stripe_keep_mask
from asc_deploy.stripes import tta_stripes
from tests.shared_data import checkpoint_path, needs_shared


def test_keep_mask_zeroes_exactly_the_stripes():
    stripes = torch.tensor([[[2, 3], [8, 0]], [[0, 1], [9, 1]]])
    expected = torch.ones(2, 10)
    expected[0, 2:5] = 0
    expected[1, 0] = expected[1, 9] = 0
    assert torch.equal(stripe_keep_mask(stripes, 10), expected)
    assert torch.equal(stripe_keep_mask(torch.zeros(3, 0, 2, dtype=torch.int64), 4), torch.ones(3, 4))


@pytest.mark.parametrize("size", [5, 44, 431])
def test_draws_follow_sp4asc_distribution_and_fit_short_clips(size):
    gen = torch.Generator().manual_seed(0)
    stripes = draw_stripes(2000, 2, 128, size, gen)
    width, start = stripes[..., 1], stripes[..., 0]
    assert width.min() >= 0 and width.max() < min(128, size)
    assert start.min() >= 0 and (start + width).max() <= size
    host = tta_stripes([128, 2, 32, 2], 2000, size, 256, seed=1)[0]
    assert host[..., 1].max() < min(128, size) and (host.sum(-1)).max() <= size
    assert abs(width.float().mean().item() - host[..., 1].mean()) < 0.05 * min(128, size)


def test_spec_augment_only_in_training():
    x = torch.randn(3, 1, 40, 64)
    augment = SpecAugment([16, 2, 8, 2])
    assert torch.equal(augment.eval()(x), x)
    torch.manual_seed(0)
    assert (augment.train()(x) == 0).any()
    with pytest.raises(ValueError):
        SpecAugment([16, 2, 8])


def test_tta_with_one_empty_pass_equals_single_pass():
    torch.manual_seed(0)
    frontend, cnn = LogMelFrontend(), Cnn6().eval()
    wave = torch.randn(2, 44_100)
    empty = torch.zeros(1, 2, 2, dtype=torch.int64)
    with torch.no_grad():
        tta = TTAClassifier(frontend, cnn)(wave, empty, empty)
        single = torch.softmax(cnn(frontend(wave)), dim=-1)
    assert torch.allclose(tta, single, atol=1e-6)


def test_tta_equals_mean_of_masked_single_passes():
    torch.manual_seed(0)
    frontend, cnn = LogMelFrontend(), Cnn6().eval()
    wave = torch.randn(2, 2 * 44_100)
    time, freq = (torch.from_numpy(s) for s in tta_stripes([128, 2, 32, 2], 30, 87, 256, seed=3))
    with torch.no_grad():
        tta = TTAClassifier(frontend, cnn)(wave, time, freq)
        x = cnn.normalize(frontend(wave))
        loop = torch.stack([
            torch.softmax(cnn.forward_head(cnn.forward_features(apply_stripes(x, time[a : a + 1].expand(2, -1, -1), freq[a : a + 1].expand(2, -1, -1)))), -1)
            for a in range(30)
        ]).mean(0)
    assert torch.allclose(tta, loop, atol=1e-6)


@needs_shared
def test_tta_matches_sp4asc_recorded_stripes(reference, tta_reference):
    """Torch TTA on one clip per checkpoint (the ONNX tests cover every clip)."""
    frontend = LogMelFrontend()
    for tag in ("ce", "mixup", "focal"):
        model = TTAClassifier(frontend, build_model(load_checkpoint(checkpoint_path(tag)))).eval()
        name = str(tta_reference["names"][0])
        with torch.no_grad():
            probs = model(torch.from_numpy(reference[f"wave/{name}"])[None], torch.from_numpy(tta_reference[f"time_stripes/{tag}"]),
                          torch.from_numpy(tta_reference[f"freq_stripes/{tag}"]))[0].numpy()
        assert np.abs(probs - tta_reference[f"probs_tta/{tag}/{name}"]).max() <= 1e-4
