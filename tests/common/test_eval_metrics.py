"""Tests of common.eval.metrics against scikit-learn and hand-computed cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score

from common.eval.metrics import (
    balanced_accuracy,
    expected_calibration_error,
    shot_group_accuracy,
    top_k_accuracy,
)

SCORES = torch.tensor(
    [
        [0.1, 0.7, 0.2],  # top-1 = 1, top-2 = {1, 2}
        [0.5, 0.3, 0.2],  # top-1 = 0, top-2 = {0, 1}
        [0.2, 0.3, 0.5],  # top-1 = 2, top-2 = {2, 1}
        [0.6, 0.1, 0.3],  # top-1 = 0, top-2 = {0, 2}
    ]
)
TARGETS = torch.tensor([1, 1, 0, 2])


def test_top_k_by_hand() -> None:
    assert top_k_accuracy(SCORES, TARGETS, k=1) == pytest.approx(25.0)
    assert top_k_accuracy(SCORES, TARGETS, k=2) == pytest.approx(75.0)
    assert top_k_accuracy(SCORES, TARGETS, k=3) == pytest.approx(100.0)
    # Predicted labels and NumPy inputs work for k = 1.
    assert top_k_accuracy(np.array([1, 0, 2, 0]), TARGETS.numpy()) == pytest.approx(25.0)


def test_top_k_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(300, 10)).astype(np.float32)
    targets = rng.integers(0, 10, 300)
    for k in (1, 3, 5):
        expected = 100 * top_k_accuracy_score(targets, scores, k=k, labels=np.arange(10))
        assert top_k_accuracy(torch.from_numpy(scores), torch.from_numpy(targets), k=k) == pytest.approx(
            expected
        )


def test_top_k_errors() -> None:
    with pytest.raises(ValueError):
        top_k_accuracy(SCORES, TARGETS, k=4)
    with pytest.raises(ValueError):
        top_k_accuracy(torch.tensor([1, 0, 2, 0]), TARGETS, k=2)
    with pytest.raises(ValueError):
        top_k_accuracy(SCORES, TARGETS[:3])
    with pytest.raises(ValueError):
        top_k_accuracy(SCORES, torch.tensor([1, 1, 0, 3]))
    with pytest.raises(ValueError):
        top_k_accuracy(SCORES, torch.tensor([], dtype=torch.long).reshape(0))


def test_balanced_accuracy_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    # Imbalanced targets, and predictions that include class 6, absent from the targets.
    targets = rng.choice(6, size=400, p=[0.5, 0.2, 0.1, 0.1, 0.05, 0.05])
    preds = np.where(rng.random(400) < 0.6, targets, rng.integers(0, 7, 400))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = 100 * balanced_accuracy_score(targets, preds)
    assert balanced_accuracy(torch.from_numpy(preds), torch.from_numpy(targets)) == pytest.approx(expected)
    # Scores give the same answer through their arg-max.
    scores = torch.nn.functional.one_hot(torch.from_numpy(preds), 7).float()
    assert balanced_accuracy(scores, targets) == pytest.approx(expected)


def test_balanced_accuracy_by_hand() -> None:
    # Class 0: 2/4 right, class 1: 1/1 right -> (50 + 100) / 2 = 75 (plain accuracy would be 60).
    assert balanced_accuracy(torch.tensor([0, 0, 1, 1, 1]), torch.tensor([0, 0, 0, 0, 1])) == pytest.approx(
        75.0
    )


def test_shot_groups_by_hand() -> None:
    counts = [150, 100, 50, 20, 5]  # many: {0, 1} (>= 100); medium: {2}; few: {3, 4} (<= 20), as OLTR
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4])
    preds = torch.tensor([0, 0, 1, 0, 2, 2, 2, 0, 0, 4, 1])
    # Per class: 1.0, 0.5, 0.75, 0.0, 0.5 -> many 75, medium 75, few 25.
    acc = shot_group_accuracy(preds, targets, counts, many=100, few=20)
    assert acc == pytest.approx({"many": 75.0, "medium": 75.0, "few": 25.0})
    # A mini-scale split needs scaled thresholds: with 100 / 20 on counts <= 15 every class is few-shot.
    small = shot_group_accuracy(preds, targets, [15, 10, 5, 2, 1])
    assert math.isnan(small["many"]) and math.isnan(small["medium"]) and small["few"] == pytest.approx(55.0)
    scaled = shot_group_accuracy(preds, targets, np.array([15, 10, 5, 2, 1]), many=10, few=2)
    assert scaled == pytest.approx({"many": 75.0, "medium": 75.0, "few": 25.0})


def test_shot_groups_skip_classes_absent_from_test() -> None:
    acc = shot_group_accuracy(torch.tensor([0, 1]), torch.tensor([0, 0]), [200, 200, 10])
    assert acc["many"] == pytest.approx(50.0)  # class 1 has no test example: not averaged in
    assert math.isnan(acc["few"]) and math.isnan(acc["medium"])


def test_shot_groups_errors() -> None:
    with pytest.raises(ValueError, match="train_class_counts has"):
        shot_group_accuracy(torch.tensor([0]), torch.tensor([3]), [10, 10])
    with pytest.raises(ValueError):
        shot_group_accuracy(torch.tensor([0]), torch.tensor([0]), [10.5, 3])
    with pytest.raises(ValueError):
        shot_group_accuracy(torch.tensor([0]), torch.tensor([0]), [10, 3], many=20, few=20)


def test_ece_by_hand() -> None:
    # Confidences 0.9 (right), 0.9 (wrong), 0.6, 0.6 (both right), 5 bins:
    # |0.5 - 0.9| * 2/4 + |1.0 - 0.6| * 2/4 = 0.4 -> 40 %.
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.6, 0.4]])
    targets = torch.tensor([0, 1, 1, 0])
    assert expected_calibration_error(probs, targets, n_bins=5) == pytest.approx(40.0, abs=1e-4)
    assert expected_calibration_error(probs, targets, n_bins=5, norm="max") == pytest.approx(40.0, abs=1e-4)


def test_ece_matches_numpy_reference() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(500, 4)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    targets = rng.integers(0, 4, 500)
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, 16)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs((pred[sel] == targets[sel]).mean() - conf[sel].mean())
    got = expected_calibration_error(torch.from_numpy(probs).float(), torch.from_numpy(targets))
    assert got == pytest.approx(100 * ece, abs=1e-3)


def test_ece_errors() -> None:
    with pytest.raises(ValueError):
        expected_calibration_error(torch.rand(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        expected_calibration_error(torch.rand(4, 2), torch.zeros(4, dtype=torch.long), n_bins=0)
    with pytest.raises(ValueError):
        expected_calibration_error(torch.rand(4, 2), torch.full((4,), 2))


def test_clustering_accuracy_by_hand_and_permutation_invariance() -> None:
    from common.eval.metrics import clustering_accuracy, hungarian_match

    targets = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    clusters = np.array([5, 5, 7, 7, 7, 9, 9, 5])  # best map: 5->0, 7->1, 9->2
    assert hungarian_match(clusters, targets) == {5: 0, 7: 1, 9: 2}
    assert clustering_accuracy(clusters, targets) == pytest.approx(100 * 6 / 8)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 300)
    relabelled = rng.permutation(6)[labels]
    assert clustering_accuracy(relabelled, labels) == 100.0
    # More clusters than classes: the unmatched cluster's members count as errors.
    assert clustering_accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 1])) == 75.0


def test_hungarian_match_completes_a_permutation_with_num_classes() -> None:
    from common.eval.metrics import hungarian_match

    # cluster 3 never predicted, class 0 never true; 1 and 2 both best at class 1 -> 1->1 (3 votes), 2->2.
    clusters = np.array([1, 1, 1, 2, 2, 0])
    targets = np.array([1, 1, 1, 1, 2, 3])
    assert hungarian_match(clusters, targets) == {1: 1, 2: 2, 0: 3}
    assert hungarian_match(clusters, targets, num_classes=4) == {0: 3, 1: 1, 2: 2, 3: 0}
    perm = hungarian_match(np.array([2, 2, 0]), np.array([0, 0, 1]), num_classes=5)
    assert sorted(perm.values()) == list(range(5)) and perm[2] == 0 and perm[0] == 1
    with pytest.raises(ValueError, match="num_classes"):
        hungarian_match(np.array([0, 5]), np.array([0, 1]), num_classes=3)


def test_multilabel_map_matches_sklearn() -> None:
    from sklearn.metrics import average_precision_score

    from common.eval.metrics import multilabel_average_precision

    rng = np.random.default_rng(1)
    targets = (rng.random((200, 6)) < 0.3).astype(int)
    targets[:, 5] = 0  # a class without positives is left out of the mean
    scores = rng.normal(size=(200, 6)) + 1.5 * targets
    expected = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in range(5)])
    assert multilabel_average_precision(scores, targets) == pytest.approx(100 * expected, rel=1e-5)
    with pytest.raises(ValueError, match="0/1"):
        multilabel_average_precision(scores, targets - 1)


def test_detection_scores_by_hand() -> None:
    from common.eval.metrics import detection_scores

    out = detection_scores([1, 1, 0, 0, 1], [1, 0, 0, 1, 1])
    assert out["precision"] == pytest.approx(200 / 3) and out["recall"] == pytest.approx(200 / 3)
    assert out["f1"] == pytest.approx(200 / 3)
    assert detection_scores([0, 0], [1, 0]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def _gcd_v2_reference(y_true: np.ndarray, y_pred: np.ndarray, old: set[int]) -> tuple[float, float, float]:
    """The GCD code's `split_cluster_acc_v2` (sgvaze/generalized-category-discovery), re-typed: a D x D count
    matrix, one assignment, instance-weighted All / Old / New."""
    from scipy.optimize import linear_sum_assignment

    d = max(y_pred.max(), y_true.max()) + 1
    w = np.zeros((d, d), dtype=int)
    for p, t in zip(y_pred, y_true, strict=True):
        w[p, t] += 1
    rows, cols = linear_sum_assignment(w.max() - w)
    ind_map = {j: i for i, j in zip(rows, cols, strict=True)}
    total = sum(w[i, j] for i, j in zip(rows, cols, strict=True)) / y_pred.size
    parts = []
    for classes in (sorted(old), sorted(set(y_true) - old)):
        parts.append(sum(w[ind_map[i], i] for i in classes) / sum(w[:, i].sum() for i in classes))
    return 100 * total, 100 * parts[0], 100 * parts[1]


def test_gcd_accuracy_by_hand_and_against_the_gcd_code() -> None:
    from common.eval.metrics import gcd_accuracy

    # old classes {0, 1}, new {2}; map 5->0, 7->1, 9->2: old 4 of 5 right, new 2 of 3.
    targets = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    clusters = np.array([5, 5, 7, 7, 7, 9, 9, 5])
    got = gcd_accuracy(clusters, targets, old_classes=[0, 1])
    assert got == pytest.approx({"all": 75.0, "old": 80.0, "new": 100 * 2 / 3})
    rng = np.random.default_rng(1)
    for _ in range(5):
        y_true = rng.integers(0, 8, 200)
        y_pred = np.where(rng.random(200) < 0.6, (y_true + 3) % 8, rng.integers(0, 8, 200))
        got = gcd_accuracy(y_pred, y_true, old_classes=range(5))
        assert (got["all"], got["old"], got["new"]) == pytest.approx(
            _gcd_v2_reference(y_true, y_pred, set(range(5)))
        )
    assert np.isnan(gcd_accuracy(np.array([0, 1]), np.array([0, 1]), old_classes=[0, 1])["new"])
