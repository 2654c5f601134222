import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from asc_deploy.models.cnn6 import cross_kernel
from asc_deploy.models.first_block import WindowReluMean, cross_tap_weights, cross_taps, first_block, window_order


def _kernels(channels: int, dtype: torch.dtype, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.randn(channels, 1, 3, 1, dtype=dtype, generator=generator),
            torch.randn(channels, 1, 1, 3, dtype=dtype, generator=generator))


def _batchnorm(channels: int, dtype: torch.dtype, generator: torch.Generator, momentum: float | None) -> torch.nn.BatchNorm2d:
    bn = torch.nn.BatchNorm2d(channels, momentum=momentum).to(dtype).train()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, dtype=dtype, generator=generator) + 0.5)
        bn.bias.copy_(torch.randn(channels, dtype=dtype, generator=generator))
    return bn


def _block(x: torch.Tensor, time_weight: torch.Tensor, freq_weight: torch.Tensor, bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    """The block as SP4ASC's layers compute it (cross kernel: same function as its two 1-D kernels)."""
    return F.avg_pool2d(torch.relu(bn(F.conv2d(x, cross_kernel(time_weight, freq_weight), padding=2, dilation=2))), 2)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize(("frames", "bins"), [(3, 2), (7, 9), (20, 16)])
def test_is_convolution_batchnorm_relu_pool(frames, bins, momentum):
    """float64: in training mode the output equals conv2d with the cross kernel, a training-mode
    BatchNorm2d, ReLU and avg_pool2d to rounding, and after two batches the running statistics
    and batch count are BatchNorm2d's (momentum and cumulative averages); then in eval mode
    (running statistics) too. Odd sizes and maps shorter than the dilation's reach included."""
    generator = torch.Generator().manual_seed(7)
    time_weight, freq_weight = _kernels(4, torch.float64, generator)
    bn = _batchnorm(4, torch.float64, generator, momentum)
    reference = copy.deepcopy(bn)
    taps = cross_tap_weights(time_weight, freq_weight)
    for _ in range(2):
        x = 3.0 + 2.0 * torch.randn(3, 1, frames, bins, dtype=torch.float64, generator=generator)
        got, expected = first_block(x, taps, bn), _block(x, time_weight, freq_weight, reference)
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= 1e-12
    assert int(bn.num_batches_tracked) == int(reference.num_batches_tracked) == 2
    assert torch.allclose(bn.running_mean, reference.running_mean, rtol=1e-12, atol=0)
    assert torch.allclose(bn.running_var, reference.running_var, rtol=1e-12, atol=0)
    bn.eval(), reference.eval()
    got, expected = first_block(x, taps, bn), _block(x, time_weight, freq_weight, reference)
    assert (got - expected).abs().max().item() <= 1e-12
    assert int(bn.num_batches_tracked) == 2


def test_gradients_are_exact():
    """Against finite differences in float64: input (through the batch statistics too), tap
    weights and BatchNorm's scale and shift; odd frames."""
    generator = torch.Generator().manual_seed(8)
    time_weight, freq_weight = _kernels(3, torch.float64, generator)

    def function(x: torch.Tensor, taps: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        affine = SimpleNamespace(eps=1e-5, weight=scale, bias=shift, training=True, track_running_stats=False)  # a BatchNorm2d's fields
        return first_block(x, taps, affine)

    inputs = (torch.randn(2, 1, 5, 6, dtype=torch.float64, generator=generator).requires_grad_(),
              cross_tap_weights(time_weight, freq_weight).requires_grad_(),
              (torch.rand(3, dtype=torch.float64, generator=generator) + 0.5).requires_grad_(),
              torch.randn(3, dtype=torch.float64, generator=generator).requires_grad_())
    assert torch.autograd.gradcheck(function, inputs)


def test_window_relu_mean_gradients_are_exact():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(11)).requires_grad_()
    assert torch.autograd.gradcheck(WindowReluMean.apply, (x,))
    assert torch.equal(WindowReluMean.apply(x), torch.relu(x).mean(dim=2))


def test_window_order_groups_each_window():
    """Plane q of the window order holds the window's value at (q // 2, q % 2) for every window,
    windows in (frame // 2, bin // 2) order; the odd trailing frame and bin are dropped."""
    rows = torch.arange(2 * 5 * 7, dtype=torch.float64).view(1, 2, 35)  # 2 rows of a 5 x 7 map
    ordered = window_order(rows, 5, 7).view(1, 2, 4, 2, 3)
    maps = rows.view(1, 2, 5, 7)
    for q in range(4):
        assert torch.equal(ordered[:, :, q], maps[:, :, q // 2:4:2, q % 2:6:2])


def test_taps_and_weights_are_the_cross_kernel():
    """Tap weights times taps is the dilated cross convolution, tap by tap."""
    generator = torch.Generator().manual_seed(9)
    time_weight, freq_weight = _kernels(2, torch.float64, generator)
    x = torch.randn(2, 1, 7, 8, dtype=torch.float64, generator=generator)
    expected = F.conv2d(x, cross_kernel(time_weight, freq_weight), padding=2, dilation=2)
    got = torch.einsum("ct,btp->bcp", cross_tap_weights(time_weight, freq_weight), cross_taps(x)).view(expected.shape)
    assert (got - expected).abs().max().item() <= 1e-13


@pytest.mark.parametrize("training", [True, False])
def test_float32_does_not_cancel(training):
    """An input far from zero mean (100 +- 1): statistics in float64 and centred taps keep
    float32's output within float32 rounding of float64's, in training and eval mode."""
    generator = torch.Generator().manual_seed(10)
    time_weight, freq_weight = _kernels(4, torch.float64, generator)
    bn = _batchnorm(4, torch.float64, generator, 0.1)
    x = 100.0 + torch.randn(4, 1, 32, 64, dtype=torch.float64, generator=generator)
    taps = cross_tap_weights(time_weight, freq_weight)
    first_block(x, taps, bn)  # running statistics of this batch for eval mode
    bn.train(training)
    expected = first_block(x, taps, copy.deepcopy(bn))
    got = first_block(x.float(), taps.float(), copy.deepcopy(bn).float())
    assert got.dtype == torch.float32
    assert (got.double() - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
