"""asc-calibrate: the temperature fit recovers known temperatures, refuses fits that cannot work,
and writes a checkpoint that carries the temperature and the calibration record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from asc_deploy.errors import AscError
from asc_deploy.models import build_model, load_checkpoint
from asc_deploy.train.calibrate import MIN_CLIPS, calibrate, fit_temperature, probabilities
from asc_deploy.train.calibrate_cli import main
from asc_deploy.train.dataset import read_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def draw(clips: int, passes: int, temperature: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits (clips, passes, 10) generated at ``temperature``: labels drawn from the probabilities
    of the true logits u (mean over passes of softmax(u)), the logits given are u x temperature."""
    rng = np.random.default_rng(seed)
    u = rng.normal(0, 2.5, (clips, 1, 10)) + rng.normal(0, 0.8, (clips, passes, 10))
    p = probabilities(u)
    labels = (p.cumsum(axis=1) > rng.random((clips, 1))).argmax(axis=1)
    return u * temperature, labels


@pytest.mark.parametrize("temperature", [0.4, 1.0, 2.5])
def test_recovers_known_temperature_single_and_tta(temperature: float) -> None:
    single, labels = draw(20_000, 1, temperature, seed=1)
    fit = fit_temperature(single[:, 0], labels)
    assert fit.temperature == pytest.approx(temperature, rel=0.02)
    assert fit.nll_after <= fit.nll_before
    tta, labels = draw(8_000, 8, temperature, seed=2)
    fit = fit_temperature(tta, labels)
    assert fit.temperature == pytest.approx(temperature, rel=0.02)


def test_recovers_class_wise_temperatures() -> None:
    single, labels = draw(30_000, 1, 1.0, seed=3)
    truth = np.linspace(0.5, 2.0, 10)
    fit = fit_temperature(single[:, 0] * truth, labels, vector=True)
    assert np.allclose(fit.temperature, truth, rtol=0.05)


def test_probabilities_divide_each_pass_before_its_softmax() -> None:
    z = np.array([[[2.0, 0.0], [0.0, 4.0]]])  # one clip, two passes, two classes
    expected = (np.exp([1.0, 0.0]) / np.exp([1.0, 0.0]).sum() + np.exp([0.0, 2.0]) / np.exp([0.0, 2.0]).sum()) / 2
    assert np.allclose(probabilities(z, 2.0), expected[None], atol=1e-12)


def test_fits_that_cannot_work_are_errors_never_t_1() -> None:
    logits, labels = draw(200, 1, 2.0, seed=4)
    logits = logits[:, 0]
    with pytest.raises(AscError, match=f"too few calibration clips to fit a temperature: 29, need at least {MIN_CLIPS}"):
        fit_temperature(logits[:29], labels[:29])
    bad = logits.copy()
    bad[5, 3] = np.nan
    with pytest.raises(AscError, match="non-finite logits for 1 of the 200"):
        fit_temperature(bad, labels)
    keep = labels != 4
    with pytest.raises(AscError, match=r"no clip of class\(es\) \['park'\]"):
        fit_temperature(logits[keep], labels[keep])
    with pytest.raises(AscError, match="no minimum"):  # the same logits for every class: the fit runs to T -> infinity
        fit_temperature(np.tile(logits[:1], (200, 1)), np.arange(200) % 10)
    perfect = 10.0 * np.eye(10)[np.arange(200) % 10]  # every clip right with a wide margin: T -> 0
    with pytest.raises(AscError, match="no minimum in T"):
        fit_temperature(perfect, np.arange(200) % 10)
    few = np.concatenate([np.flatnonzero(labels == c)[:3] for c in range(10)] + [np.flatnonzero(labels == 0)[3:40]])
    with pytest.raises(AscError, match="at least 5 calibration clips per class"):
        fit_temperature(logits[few], labels[few], vector=True)


def test_calibrate_writes_temperatures_and_record(held_out_model: Path, calibration_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "calibrated.pth"
    result = CliRunner().invoke(main, ["--model", str(held_out_model), "--data", str(calibration_dir), "--nb-aug", "4", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "single pass" in result.output and "TTA-4" in result.output
    payload = torch.load(out, map_location="cpu", weights_only=True)  # like every checkpoint
    record = payload["calibration"]
    source = load_checkpoint(held_out_model)
    assert record["split"]["clips"] == source.holdout["clips"] and record["split"]["seed"] == 0
    assert record["split"]["locations"] == source.holdout["locations"]
    assert (record["nb_aug"], record["tta_seed"], record["method"], record["spec_aug"]) == (4, 0, "temperature", [8, 1, 16, 1])
    assert 1.5 < record["temperature"] < 20 and 1.5 < record["tta_temperature"] < 20  # the ridge model is overconfident
    for fit in record["nll"].values():
        assert fit["after"] < fit["before"] - 0.05
    calibrated = load_checkpoint(out)
    assert calibrated.temperature(False) == record["temperature"] and calibrated.temperature(True) == record["tta_temperature"]
    assert all(torch.equal(build_model(calibrated).state_dict()[k], v) for k, v in source.state_dict.items())  # strict, untouched
    # The same fit from Python, nothing written; the held-out clips' NLL at the fitted T is what the record says.
    again = calibrate(held_out_model, calibration_dir)
    assert again["temperature"] == pytest.approx(record["temperature"], rel=1e-9) and again["tta_temperature"] is None


def test_calibrate_refuses_what_it_cannot_do(held_out_model: Path, calibration_dir: Path, random_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.pth"
    result = CliRunner().invoke(main, ["--model", str(random_checkpoint), "--data", str(calibration_dir), "--output", str(out)])
    assert result.exit_code == 1 and not out.exists()
    assert result.output.startswith("asc-calibrate: error: ") and result.output.count("\n") == 1
    assert "trained on the whole training split" in result.output
    payload = torch.load(held_out_model, weights_only=True)
    payload["holdout"] = payload["holdout"] | {"clips": payload["holdout"]["clips"][1:]}
    torch.save(payload, tmp_path / "other.pth")
    with pytest.raises(AscError, match="differs from the"):
        calibrate(tmp_path / "other.pth", calibration_dir, out)
    assert not out.exists()


def test_class_wise_calibration_on_few_clips_is_refused(held_out_model: Path, calibration_dir: Path, tmp_path: Path) -> None:
    """6-11 held-out clips per class: a class the model never gets right has no finite temperature."""
    with pytest.raises(AscError, match="no minimum"):
        calibrate(held_out_model, calibration_dir, tmp_path / "vector.pth", vector=True)
    assert not (tmp_path / "vector.pth").exists()
