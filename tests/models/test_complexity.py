import torch

from asc_deploy.models import Cnn6, LogMelFrontend
from asc_deploy.models.complexity import complexity_report, count_macs


def test_report_numbers_of_cnn6_60k():
    report = complexity_report(Cnn6())
    assert report.parameters == 62_922
    assert report.state_dict_elements == 64_335
    assert report.parameters_folded == 62_474
    assert report.size_kb["fp16"] == 62_474 * 2 / 1024  # 122.0 KB as DCASE counts it
    assert round(report.size_kb["fp16"], 1) == 122.0
    assert report.frontend_macs == LogMelFrontend().macs(441_000)
    assert any("122.0 KB" in line for line in report.lines())


def test_cnn_macs_equal_the_layer_formula():
    frames, bins, expected = 431, 256, 0
    for c_in, c_out in [(1, 64), (64, 128), (128, 128), (128, 128)]:
        positions = frames * bins
        expected += positions * c_out * c_in + 2 * positions * c_out * 3  # 1x1 conv + two depthwise 3-taps
        frames, bins = frames // 2, bins // 2
    expected += 128 * 128 + 128 * 10
    assert complexity_report(Cnn6()).cnn_macs == expected
    assert round(expected / 1e6, 1) == 442.6


def test_nonzero_count_sees_pruned_weights():
    torch.manual_seed(0)
    model = Cnn6()
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.uniform_(0.5, 1.5)  # no zero anywhere, running_var > 0
        model.fc1.weight[:10] = 0
    report = complexity_report(model)
    assert report.parameters_folded - report.nonzero_parameters_folded == 10 * 128


def test_count_macs_on_a_linear_layer():
    assert count_macs(torch.nn.Linear(3, 4), torch.zeros(5, 3)) == 5 * 4 * 3
