"""The calibration hold-out: location-grouped, class-stratified, seeded, disjoint from the evaluate split."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from asc_deploy.errors import AscError
from asc_deploy.labels import NUM_CLASSES
from asc_deploy.train.dataset import Clip, read_split
from asc_deploy.train.holdout import holdout_split


def test_split_shares_no_clip_or_location_with_evaluate_or_remaining_train(calibration_dir: Path) -> None:
    train, evaluate = read_split(calibration_dir, "train"), read_split(calibration_dir, "evaluate")
    split = holdout_split(train, 0.3, 0)
    held = {c.filename for c in split.calibration}
    held_locations = {c.location for c in split.calibration}
    assert held and held.isdisjoint(c.filename for c in evaluate)
    assert held_locations.isdisjoint(c.location for c in evaluate)
    assert held_locations.isdisjoint(c.location for c in split.train)  # no location straddles the cut
    assert held | {c.filename for c in split.train} == {c.filename for c in train}
    assert len(held) + len(split.train) == len(train)
    assert set(split.locations) == held_locations


def test_split_holds_out_every_class_and_device_about_the_fraction(calibration_dir: Path) -> None:
    train = read_split(calibration_dir, "train")
    split = holdout_split(train, 0.3, 0)
    per_class, total = Counter(c.label for c in split.calibration), Counter(c.label for c in train)
    assert sorted(per_class) == list(range(NUM_CLASSES))
    assert all(Counter(c.label for c in split.train)[label] > 0 for label in range(NUM_CLASSES))  # kept for training too
    assert all(0.3 * total[label] <= per_class[label] <= total[label] - 1 for label in range(NUM_CLASSES))
    assert {c.device for c in split.calibration} == {c.device for c in train}  # a, b, c, s1, s2, s3


def test_split_is_seeded_and_recorded(calibration_dir: Path) -> None:
    train = read_split(calibration_dir, "train")
    first, again, other = holdout_split(train, 0.3, 0), holdout_split(train, 0.3, 0), holdout_split(train, 0.3, 1)
    assert first.record() == again.record()
    assert first.record()["clips"] != other.record()["clips"]
    record = first.record()
    assert (record["fraction"], record["seed"], record["train_clips"]) == (0.3, 0, len(first.train))
    assert record["clips"] == [c.filename for c in first.calibration] and record["locations"] == first.locations


def clip(name: str, label: int, location: str | None) -> Clip:
    return Clip(Path(name), name, label, "a", location)


def test_bad_inputs_are_clear_errors() -> None:
    one_location = [clip(f"{c}-{i}", c, f"loc{c}") for c in range(NUM_CLASSES) for i in range(3)]
    with pytest.raises(AscError, match="class 'airport' has 1 recording location"):
        holdout_split(one_location, 0.2, 0)
    with pytest.raises(AscError, match="no location"):
        holdout_split([clip("x", 0, None)], 0.2, 0)
    with pytest.raises(AscError, match="fraction must be in"):
        holdout_split(one_location, 1.0, 0)
