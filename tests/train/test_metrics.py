"""asc_deploy.metrics against sklearn.metrics.log_loss and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss

from asc_deploy.metrics import classwise_log_loss_accuracy, groupwise


def random_scores(seed: int, clips: int = 200, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(classes), size=clips)
    labels = rng.integers(0, classes, clips)
    return probs, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_loss_matches_sklearn(seed: int) -> None:
    probs, labels = random_scores(seed)
    scores = classwise_log_loss_accuracy(probs, labels, 10)
    assert scores["micro_logloss"] == pytest.approx(log_loss(labels, probs, labels=range(10)), rel=1e-12)
    for c in range(10):
        mine = labels == c
        assert scores["class_logloss"][c] == pytest.approx(log_loss(labels[mine], probs[mine], labels=range(10)), rel=1e-12)
    assert scores["logloss"] == pytest.approx(np.mean(scores["class_logloss"]), rel=1e-12)
    assert scores["count"] == 200 and sum(scores["class_count"]) == 200


def test_macro_accuracy_is_mean_of_class_recalls() -> None:
    # class 0: 3 clips, 2 right; class 1: 1 clip, right; class 2: none.
    probs = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
    labels = np.array([0, 0, 0, 1])
    scores = classwise_log_loss_accuracy(probs, labels, 3)
    assert scores["class_accuracy"][:2] == pytest.approx([2 / 3, 1.0])
    assert np.isnan(scores["class_accuracy"][2]) and scores["class_count"] == [3, 1, 0]
    assert scores["accuracy"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert scores["micro_accuracy"] == pytest.approx(3 / 4)
    expected_class0 = -(np.log(0.9) + np.log(0.6) + np.log(0.2)) / 3
    assert scores["logloss"] == pytest.approx((expected_class0 - np.log(0.6)) / 2)


def test_zero_probability_gives_finite_loss() -> None:
    scores = classwise_log_loss_accuracy(np.array([[0.0, 1.0]]), np.array([0]), 2)
    assert np.isfinite(scores["logloss"]) and scores["accuracy"] == 0.0


def test_groupwise_scores_each_group_on_its_own_clips() -> None:
    probs, labels = random_scores(3, clips=90)
    groups = np.array(["a", "b", "s1"] * 30)
    table = groupwise(probs, labels, groups)
    assert list(table) == ["a", "b", "s1"]
    for name, scores in table.items():
        np.testing.assert_equal(scores, classwise_log_loss_accuracy(probs[groups == name], labels[groups == name], 10))


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError):
        classwise_log_loss_accuracy(np.ones((3, 4)) / 4, np.zeros(3, dtype=int), 10)
    with pytest.raises(ValueError):
        classwise_log_loss_accuracy(np.ones((3, 10)) / 10, np.array([0, 1, 10]), 10)
