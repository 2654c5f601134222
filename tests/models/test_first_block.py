import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from asc_deploy.models.cnn6 import cross_kernel
from asc_deploy.models.first_block import batch_normalized_cross_conv, cross_tap_weights, cross_taps


def _kernels(channels: int, dtype: torch.dtype, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.randn(channels, 1, 3, 1, dtype=dtype, generator=generator),
            torch.randn(channels, 1, 1, 3, dtype=dtype, generator=generator))


def _batchnorm(channels: int, dtype: torch.dtype, generator: torch.Generator, momentum: float | None) -> torch.nn.BatchNorm2d:
    bn = torch.nn.BatchNorm2d(channels, momentum=momentum).to(dtype).train()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, dtype=dtype, generator=generator) + 0.5)
        bn.bias.copy_(torch.randn(channels, dtype=dtype, generator=generator))
    return bn


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize(("frames", "bins"), [(3, 2), (6, 9), (20, 16)])
def test_is_convolution_then_training_batchnorm(frames, bins, momentum):
    """float64: the output equals conv2d with the cross kernel then a training-mode BatchNorm2d to
    rounding, and after two batches the running statistics and batch count are BatchNorm2d's
    (momentum and cumulative averages), including maps shorter than the dilation's reach."""
    generator = torch.Generator().manual_seed(7)
    time_weight, freq_weight = _kernels(4, torch.float64, generator)
    bn = _batchnorm(4, torch.float64, generator, momentum)
    reference = copy.deepcopy(bn)
    for _ in range(2):
        x = 3.0 + 2.0 * torch.randn(3, 1, frames, bins, dtype=torch.float64, generator=generator)
        expected = reference(F.conv2d(x, cross_kernel(time_weight, freq_weight), padding=2, dilation=2))
        got = batch_normalized_cross_conv(x, cross_tap_weights(time_weight, freq_weight), bn)
        assert (got - expected).abs().max().item() <= 1e-12
    assert int(bn.num_batches_tracked) == int(reference.num_batches_tracked) == 2
    assert torch.allclose(bn.running_mean, reference.running_mean, rtol=1e-12, atol=0)
    assert torch.allclose(bn.running_var, reference.running_var, rtol=1e-12, atol=0)


def test_gradients_are_exact():
    """Against finite differences in float64: input (through the batch statistics too), tap
    weights and BatchNorm's scale and shift."""
    generator = torch.Generator().manual_seed(8)
    time_weight, freq_weight = _kernels(3, torch.float64, generator)
    bn = _batchnorm(3, torch.float64, generator, 0.1)

    def function(x: torch.Tensor, taps: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        affine = SimpleNamespace(eps=bn.eps, weight=scale, bias=shift, track_running_stats=False)  # a BatchNorm2d's fields
        return batch_normalized_cross_conv(x, taps, affine)

    inputs = (torch.randn(2, 1, 5, 6, dtype=torch.float64, generator=generator).requires_grad_(),
              cross_tap_weights(time_weight, freq_weight).requires_grad_(),
              bn.weight.detach().clone().requires_grad_(), bn.bias.detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(function, inputs)


def test_taps_and_weights_are_the_cross_kernel():
    """Tap weights times taps is the dilated cross convolution, tap by tap."""
    generator = torch.Generator().manual_seed(9)
    time_weight, freq_weight = _kernels(2, torch.float64, generator)
    x = torch.randn(2, 1, 7, 8, dtype=torch.float64, generator=generator)
    expected = F.conv2d(x, cross_kernel(time_weight, freq_weight), padding=2, dilation=2)
    got = torch.einsum("ct,btp->bcp", cross_tap_weights(time_weight, freq_weight), cross_taps(x)).view(expected.shape)
    assert (got - expected).abs().max().item() <= 1e-13


def test_float32_statistics_do_not_cancel():
    """An input far from zero mean (100 +- 1): the statistics in float64 of centred taps keep
    float32's output within float32 rounding of float64's (measured 2.3e-7 of the output's scale;
    convolution then BatchNorm2d in float32: 3.8e-7)."""
    generator = torch.Generator().manual_seed(10)
    time_weight, freq_weight = _kernels(4, torch.float64, generator)
    bn = _batchnorm(4, torch.float64, generator, 0.1)
    x = 100.0 + torch.randn(4, 1, 32, 64, dtype=torch.float64, generator=generator)
    taps = cross_tap_weights(time_weight, freq_weight)
    expected = batch_normalized_cross_conv(x, taps, copy.deepcopy(bn))
    got = batch_normalized_cross_conv(x.float(), taps.float(), copy.deepcopy(bn).float())
    assert got.dtype == torch.float32
    assert (got.double() - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
