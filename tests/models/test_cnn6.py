import copy

import numpy as np
import pytest
import torch

from asc_deploy.models import Cnn6, build_model, fold_batchnorm, load_checkpoint
from asc_deploy.models.cnn6 import BlockForm, CrossDepthwise, ReluPool, average_pool, cross_kernel
from asc_deploy.models.fold import count_parameters
from tests.conftest import RANDOM_MODEL_SEED as RANDOM_SEED
from tests.shared_data import TAGS, checkpoint_path, needs_shared


def logits(model: torch.nn.Module, logmel: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(logmel)[None, None]).numpy()[0]


@needs_shared
def test_state_dict_layout_is_sp4asc():
    official = torch.load(checkpoint_path("ce"), map_location="cpu", weights_only=True)["net"]
    ours = Cnn6().state_dict()
    assert list(ours) == list(official)
    assert all(ours[k].shape == official[k].shape for k in ours)


@needs_shared
@pytest.mark.parametrize("tag", TAGS)
def test_eval_mode_matches_reference(tag, reference):
    model = build_model(load_checkpoint(checkpoint_path(tag)))
    for name in reference["names"]:
        assert np.abs(logits(model, reference[f"logmel/{name}"]) - reference[f"logits_fp32/{tag}/{name}"]).max() <= 1e-4, name


@needs_shared
@pytest.mark.parametrize("tag", TAGS)
def test_folded_model_matches_reference(tag, reference):
    folded = fold_batchnorm(build_model(load_checkpoint(checkpoint_path(tag))))
    assert count_parameters(folded) == 62_474
    for name in reference["names"]:
        assert np.abs(logits(folded, reference[f"logmel/{name}"]) - reference[f"logits_fp32/{tag}/{name}"]).max() <= 1e-3, name


@needs_shared
def test_sp4asc_fold_without_eps_explains_its_published_logits(reference):
    """SP4ASC's test.py folds without BatchNorm's eps and rounds weights to fp16: repeating that
    reproduces its ``logits/ce`` and shows the ~1.2 logit error the eps-free fold causes."""
    model = build_model(load_checkpoint(checkpoint_path("ce")))
    for bn in [model.bn0, *(b.bn for b in model.blocks)]:
        bn.eps = 0.0
    sp4asc_style = fold_batchnorm(model).half().float()
    worst = 0.0
    for name in reference["names"]:
        ours = logits(sp4asc_style, reference[f"logmel/{name}"])
        assert np.abs(ours - reference[f"logits/ce/{name}"]).max() <= 1e-3, name
        worst = max(worst, np.abs(reference[f"logits/ce/{name}"] - reference[f"logits_fp32/ce/{name}"]).max())
    assert worst > 0.5


def test_training_mode_uses_spec_augment_and_dropout():
    torch.manual_seed(0)
    model = Cnn6(dropout=0.2, spec_aug=[8, 2, 8, 2]).train()
    x = torch.randn(4, 1, 44, 256)
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_fold_refuses_a_folded_model():
    with pytest.raises(ValueError, match="already folded"):
        fold_batchnorm(fold_batchnorm(Cnn6()))


# --- the CROSS block form (asc-train's): same function, same parameters, same gradients ----

def _loss_and_grads(model: torch.nn.Module, logmel: torch.Tensor, labels: torch.Tensor,
                    autocast: torch.dtype | None = None) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
        logits = model(logmel)
    loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}


def _cross_copy(model: Cnn6) -> Cnn6:
    cross = copy.deepcopy(model)
    for block in cross.blocks:
        block.form = BlockForm.CROSS
    return cross


def _random_logmel(batch: int, frames: int, dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    return (-40.0 + 15.0 * torch.randn(batch, 1, frames, 256, generator=generator)).to(dtype)


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_cross_form_has_sp4asc_loss_and_gradients(dtype, rtol, one_torch_thread):
    """Training mode (batch statistics), one forward and backward pass: the CROSS form's loss and
    the gradient of every parameter equal SP4ASC's form's (float64: to rounding; float32: within
    float32 rounding of sums over ~10^5 terms), relative to each gradient's largest element."""
    torch.manual_seed(RANDOM_SEED)
    reference = Cnn6(dropout=0.0).to(dtype).train()
    cross = _cross_copy(reference)
    logmel, labels = _random_logmel(3, 44, dtype), torch.tensor([1, 7, 3])
    expected_loss, expected = _loss_and_grads(reference, logmel, labels)
    loss, got = _loss_and_grads(cross, logmel, labels)
    assert loss == pytest.approx(expected_loss, rel=rtol)
    assert set(got) == set(expected)
    for name, grad in expected.items():
        scale = grad.abs().max().item()
        assert scale > 0, name
        assert (got[name] - grad).abs().max().item() <= rtol * scale, name


def test_cross_form_under_bf16_autocast_has_float32_gradients_to_bf16_precision(one_torch_thread):
    """asc-train's CPU mixed precision: the CROSS form's loss and gradients under bfloat16
    autocast against SP4ASC's form in float32. bfloat16 keeps 8 bits of mantissa, so single
    elements differ by up to tens of percent of a gradient's largest one;
    the gradients point the same way (cosine >= 0.97 for every parameter, measured 0.988) and
    closer than SP4ASC's own form under the same autocast (mean cosine 0.994 against 0.993)."""
    torch.manual_seed(RANDOM_SEED)
    reference = Cnn6(dropout=0.0).train()
    logmel, labels = _random_logmel(4, 64, torch.float32), torch.tensor([1, 7, 3, 0])
    expected_loss, expected = _loss_and_grads(reference, logmel, labels)
    loss, cross = _loss_and_grads(_cross_copy(reference), logmel, labels, torch.bfloat16)
    _, sp4asc = _loss_and_grads(copy.deepcopy(reference), logmel, labels, torch.bfloat16)

    def cosines(got: dict[str, torch.Tensor]) -> list[float]:
        return [torch.nn.functional.cosine_similarity(got[n].flatten(), g.flatten(), dim=0).item() for n, g in expected.items()]

    assert loss == pytest.approx(expected_loss, rel=2e-3)
    assert min(cosines(cross)) >= 0.97
    assert np.mean(cosines(cross)) >= np.mean(cosines(sp4asc))


def test_average_pool_is_avg_pool2d():
    """The depthwise-convolution pooling of the CPU training path equals avg_pool2d exactly in
    float32 and to bfloat16 rounding (one half unit in the last place: 2**-8 relative), odd sizes included."""
    generator = torch.Generator().manual_seed(4)
    x = torch.relu(torch.randn(2, 5, 9, 12, generator=generator))
    assert torch.equal(average_pool(x), torch.nn.functional.avg_pool2d(x, 2))
    expected = torch.nn.functional.avg_pool2d(x.bfloat16().float(), 2)
    assert torch.allclose(average_pool(x.bfloat16()).float(), expected, rtol=2**-8, atol=0)


def test_cross_depthwise_gradients_are_exact():
    """The CPU backward of :class:`CrossDepthwise` (input and both 1-D kernels) against finite
    differences in float64, with frames and bins shorter than, equal to and longer than the
    dilation's reach."""
    generator = torch.Generator().manual_seed(2)
    for frames, bins in [(3, 2), (5, 7), (9, 4)]:
        inputs = (torch.randn(2, 3, frames, bins, dtype=torch.float64, generator=generator).requires_grad_(),
                  torch.randn(3, 1, 3, 1, dtype=torch.float64, generator=generator).requires_grad_(),
                  torch.randn(3, 1, 1, 3, dtype=torch.float64, generator=generator).requires_grad_())
        assert torch.autograd.gradcheck(CrossDepthwise.apply, inputs)


def test_cross_kernel_layout():
    time_weight = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 3, 1)
    freq_weight = torch.tensor([10.0, 20.0, 30.0]).view(1, 1, 1, 3)
    expected = torch.tensor([[0.0, 1.0, 0.0], [10.0, 22.0, 30.0], [0.0, 3.0, 0.0]])
    assert torch.equal(cross_kernel(time_weight, freq_weight)[0, 0], expected)


@needs_shared
@pytest.mark.parametrize("tag", TAGS)
def test_cross_form_of_official_checkpoints_matches_reference(tag, reference):
    """Eval mode, unfolded and folded: the CROSS form of each official checkpoint computes the
    reference logits as closely as SP4ASC's form does."""
    checkpoint = load_checkpoint(checkpoint_path(tag))
    model = Cnn6(block_form=BlockForm.CROSS)
    model.load_state_dict(checkpoint.state_dict, strict=True)
    for cnn, tolerance in ((model.eval(), 1e-4), (fold_batchnorm(model), 1e-3)):
        for name in reference["names"]:
            assert np.abs(logits(cnn, reference[f"logmel/{name}"]) - reference[f"logits_fp32/{tag}/{name}"]).max() <= tolerance, name


def test_every_block_form_has_sp4asc_state_dict():
    assert {k: v.shape for k, v in Cnn6(block_form=BlockForm.CROSS).state_dict().items()} == \
        {k: v.shape for k, v in Cnn6().state_dict().items()}


def test_relu_pool_gradients_are_exact():
    """:class:`ReluPool` against finite differences in float64, even and odd frames and bins (the
    odd trailing row and column get no gradient, as in avg_pool2d)."""
    generator = torch.Generator().manual_seed(3)
    for frames, bins in [(4, 6), (5, 7)]:
        x = torch.randn(2, 3, frames, bins, dtype=torch.float64, generator=generator).requires_grad_()
        assert torch.autograd.gradcheck(ReluPool.apply, (x,))
        assert torch.equal(ReluPool.apply(x), torch.nn.functional.avg_pool2d(torch.relu(x), 2))
