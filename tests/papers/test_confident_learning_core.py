"""Core of confident learning: hand-computed cases, bit-for-bit parity with cleanlab, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from papers.confident_learning import (
    FILTER_METHODS,
    calibrate_confident_joint,
    confident_joint,
    confident_thresholds,
    cross_val_pred_probs,
    estimate_joint,
    estimate_noise_matrices,
    find_label_issues,
    label_issue_metrics,
)

cleanlab_count = pytest.importorskip("cleanlab.count")
cleanlab_filter = pytest.importorskip("cleanlab.filter")
noise_generation = pytest.importorskip("cleanlab.benchmarking.noise_generation")


def _cleanlab_issues(labels, pred_probs, method, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "too few examples in class" warnings
        return cleanlab_filter.find_label_issues(labels, pred_probs, filter_by=method, n_jobs=1, **kwargs)


# --------------------------------------------------------------------------------------------------
# hand-computed cases
# --------------------------------------------------------------------------------------------------
# 8 examples, 3 classes. x2 is a 1 labelled 0; x4 and x5 are 0s labelled 1; x7 is unsure.
HAND_LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2])
HAND_PROBS = np.array(
    [
        [0.80, 0.10, 0.10],  # x0  s=0
        [0.60, 0.30, 0.10],  # x1  s=0
        [0.10, 0.80, 0.10],  # x2  s=0
        [0.20, 0.70, 0.10],  # x3  s=1
        [0.50, 0.45, 0.05],  # x4  s=1
        [0.70, 0.20, 0.10],  # x5  s=1
        [0.10, 0.10, 0.80],  # x6  s=2
        [0.30, 0.30, 0.40],  # x7  s=2
    ]
)
# Thresholds (mean self-confidence per given class):
#   t0 = (0.80 + 0.60 + 0.10) / 3 = 0.50
#   t1 = (0.70 + 0.45 + 0.20) / 3 = 0.45
#   t2 = (0.80 + 0.40) / 2 = 0.60
# Classes with p >= t (up to 1e-6 slack) per example, and where it is counted (row s, column y*):
#   x0 {0} -> (0,0)   x1 {0} -> (0,0)   x2 {1} -> (0,1)
#   x3 {1} -> (1,1)   x4 {0,1}: two above threshold -> row argmax 0 -> (1,0)   x5 {0} -> (1,0)
#   x6 {2} -> (2,2)   x7 {} (0.3 < 0.5, 0.3 < 0.45, 0.4 < 0.6) -> not counted
HAND_RAW_JOINT = np.array([[2, 1, 0], [2, 1, 0], [0, 0, 1]])
# Calibration: rows 0 and 1 already sum to their label counts (3, 3); row 2 sums to 1 but class 2 has
# 2 labels, so it is scaled to [0, 0, 2]. The total is then 8 = n, so no further rescaling.
HAND_CALIBRATED_JOINT = np.array([[2, 1, 0], [2, 1, 0], [0, 0, 2]])
# Issues: prune counts per (y*, s) are the transposed joint [[2,2,0],[1,1,0],[0,0,2]].
#   PBC: class 0 drops 3-2 = 1 lowest p0 -> x2; class 1 drops 3-1 = 2 lowest p1 -> x5 (0.2), x4 (0.45).
#   PBNR: (s=0, y*=1) drops 1 by largest p1-p0 -> x2; (s=1, y*=0) drops 2 by largest p0-p1 -> x5, x4.
#   C_cj: off-diagonal counted examples x2, x4, x5. C_confusion: argmax != label -> x2, x4, x5.
HAND_ISSUES = np.zeros(8, dtype=bool)
HAND_ISSUES[[2, 4, 5]] = True


def test_hand_computed_thresholds_and_confident_joint():
    np.testing.assert_allclose(confident_thresholds(HAND_LABELS, HAND_PROBS), [0.5, 0.45, 0.6])
    np.testing.assert_array_equal(confident_joint(HAND_LABELS, HAND_PROBS, calibrate=False), HAND_RAW_JOINT)
    np.testing.assert_array_equal(confident_joint(HAND_LABELS, HAND_PROBS), HAND_CALIBRATED_JOINT)
    np.testing.assert_allclose(estimate_joint(HAND_LABELS, HAND_PROBS), HAND_CALIBRATED_JOINT / 8.0)


@pytest.mark.parametrize("method", FILTER_METHODS)
def test_hand_computed_label_issues(method):
    np.testing.assert_array_equal(find_label_issues(HAND_LABELS, HAND_PROBS, method=method), HAND_ISSUES)
    assert label_issue_metrics(find_label_issues(HAND_LABELS, HAND_PROBS, method=method), HAND_ISSUES) == {
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
    }


def test_several_confident_classes_take_row_argmax_even_if_below_its_threshold():
    # t0 = (0.95 + 0.5)/2 = 0.725, t1 = (0.3 + 0.3)/2 = 0.3, t2 = (0.2 + 0.2)/2 = 0.2.
    # Row 1 has classes 1 and 2 above threshold but its argmax is class 0 (0.5 < t0): counted at (0, 0).
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [
            [0.95, 0.03, 0.02],  # {0} -> (0,0)
            [0.50, 0.30, 0.20],  # {1,2} -> argmax 0 -> (0,0)
            [0.20, 0.30, 0.50],  # {1,2} -> argmax 2 -> (1,2)
            [0.60, 0.30, 0.10],  # {1} -> (1,1)
            [0.10, 0.70, 0.20],  # {1,2} -> argmax 1 -> (2,1)
            [0.60, 0.20, 0.20],  # {2} -> (2,2)
        ]
    )
    expected = np.array([[2, 0, 0], [0, 1, 1], [0, 1, 1]])
    np.testing.assert_array_equal(confident_joint(labels, probs, calibrate=False), expected)
    np.testing.assert_array_equal(
        confident_joint(labels, probs, calibrate=False),
        cleanlab_count.compute_confident_joint(labels, probs, calibrate=False),
    )


def test_calibration_rounding_breaks_ties_towards_last_column():
    # Row 0 scales [1, 1, 1] to 4 labels: 4/3 each, rounds to [1, 1, 1] (sum 3); the missing unit goes to
    # the largest rounding residual, all equal here, and the reference picks the last column.
    raw = np.array([[1, 1, 1], [0, 2, 0], [0, 0, 1]])
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    expected = np.array([[1, 1, 2], [0, 2, 0], [0, 0, 1]])
    np.testing.assert_array_equal(calibrate_confident_joint(raw, labels), expected)
    np.testing.assert_array_equal(cleanlab_count.calibrate_confident_joint(raw, labels), expected)


def test_label_issue_metrics_hand_values():
    found = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    truth = np.array([1, 0, 0, 1, 0, 0], dtype=bool)
    metrics = label_issue_metrics(found, truth)
    assert metrics["precision"] == pytest.approx(1 / 3)
    assert metrics["recall"] == pytest.approx(1 / 2)
    assert metrics["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert label_issue_metrics(np.zeros(3, bool), np.zeros(3, bool)) == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
    }


# --------------------------------------------------------------------------------------------------
# parity with cleanlab on realistic out-of-sample probabilities
# --------------------------------------------------------------------------------------------------
def _noisy_digits(seed: int, frac_zero_noise_rates: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    features, true_labels = load_digits(return_X_y=True)
    num_classes = 10
    noise_matrix = noise_generation.generate_noise_matrix_from_trace(
        num_classes,
        num_classes * (1 - 0.4),
        py=np.bincount(true_labels) / len(true_labels),
        frac_zero_noise_rates=frac_zero_noise_rates,
        valid_noise_matrix=True,
        seed=seed,
    )
    np.random.seed(seed)  # generate_noisy_labels draws from the global numpy generator
    noisy_labels = noise_generation.generate_noisy_labels(true_labels, noise_matrix)
    return features / 16.0, true_labels, noisy_labels


@pytest.fixture(
    scope="module", params=[(0, 0.0), (1, 0.4), (2, 0.6)], ids=lambda p: f"seed{p[0]}-sparsity{p[1]}"
)
def digits_case(request):
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    seed, sparsity = request.param
    features, true_labels, noisy_labels = _noisy_digits(seed, sparsity)
    with threadpool_limits(limits=1):  # tiny fits; BLAS threads only oversubscribe the CPU
        pred_probs = cross_val_pred_probs(
            LogisticRegression(max_iter=300), features, noisy_labels, n_folds=4, seed=seed
        )
    return features, true_labels, noisy_labels, pred_probs, seed


def test_cross_val_pred_probs_matches_cleanlab_folds(digits_case):
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    features, _, noisy_labels, pred_probs, seed = digits_case
    assert pred_probs.shape == (len(noisy_labels), 10)
    np.testing.assert_allclose(pred_probs.sum(axis=1), 1.0, atol=1e-9)
    if seed == 0:  # one seed is enough: same StratifiedKFold split, same deterministic estimator
        with threadpool_limits(limits=1):
            reference = cleanlab_count.estimate_cv_predicted_probabilities(
                features, noisy_labels, LogisticRegression(max_iter=300), cv_n_folds=4, seed=seed
            )
        np.testing.assert_allclose(pred_probs, reference, rtol=0, atol=1e-12)


def test_confident_joint_and_noise_estimates_match_cleanlab(digits_case):
    _, _, labels, pred_probs, _ = digits_case
    for calibrate in (True, False):
        np.testing.assert_array_equal(
            confident_joint(labels, pred_probs, calibrate=calibrate),
            cleanlab_count.compute_confident_joint(labels, pred_probs, calibrate=calibrate),
        )
    np.testing.assert_array_equal(
        estimate_joint(labels, pred_probs), cleanlab_count.estimate_joint(labels, pred_probs)
    )
    estimate = cleanlab_count.estimate_py_and_noise_matrices_from_probabilities
    py, noise, inverse, _ = estimate(labels, pred_probs)
    ours = estimate_noise_matrices(labels, pred_probs)
    for mine, theirs in zip(ours, (noise, inverse, py), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(ours[0].sum(axis=0), 1.0)  # P(s|y*): columns sum to 1
    np.testing.assert_allclose(ours[1].sum(axis=0), 1.0)  # P(y*|s): columns sum to 1
    py_raw, noise_raw, inverse_raw, _ = estimate(labels, pred_probs, converge_latent_estimates=False)
    ours_raw = estimate_noise_matrices(labels, pred_probs, converge_latent_estimates=False)
    for mine, theirs in zip(ours_raw, (noise_raw, inverse_raw, py_raw), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("method", FILTER_METHODS)
def test_find_label_issues_matches_cleanlab(digits_case, method):
    _, true_labels, labels, pred_probs, _ = digits_case
    ours = find_label_issues(labels, pred_probs, method=method)
    np.testing.assert_array_equal(ours, _cleanlab_issues(labels, pred_probs, method))
    # Sanity: with a decent model the flagged set is mostly real label errors.
    assert label_issue_metrics(ours, labels != true_labels)["precision"] > 0.6


def test_find_label_issues_matches_cleanlab_on_random_probabilities():
    """Dirichlet probabilities with ties (rounded rows), missing classes, float32, non-default options."""
    rng = np.random.default_rng(2024)
    n_checked = 0
    for trial in range(40):
        num_classes = int(rng.integers(2, 9))
        n = int(rng.integers(8, 250))
        labels = rng.integers(0, num_classes, n)
        probs = rng.dirichlet(np.full(num_classes, rng.choice([0.1, 1.0, 4.0])), n)
        if trial % 2:  # informative probabilities with 30% relabelled examples
            probs = 0.5 * probs + 0.5 * np.eye(num_classes)[labels]
            labels = np.where(rng.random(n) < 0.3, rng.integers(0, num_classes, n), labels)
        if trial % 3 == 0:  # many exact ties
            probs = np.round(probs, 1) + 1e-12
            probs /= probs.sum(axis=1, keepdims=True)
        if trial % 5 == 0:  # a class that never occurs as a given label
            labels[labels == num_classes - 1] = 0
        if trial % 7 == 0:
            probs = probs.astype(np.float32)
        if len(np.unique(labels)) < 2:  # cleanlab refuses single-class labels
            continue
        n_checked += 1
        for calibrate in (True, False):
            np.testing.assert_array_equal(
                confident_joint(labels, probs, calibrate=calibrate),
                cleanlab_count.compute_confident_joint(labels, probs, calibrate=calibrate),
            )
        for method in FILTER_METHODS:
            np.testing.assert_array_equal(
                find_label_issues(labels, probs, method=method), _cleanlab_issues(labels, probs, method)
            )
        for method in ("prune_by_class", "prune_by_noise_rate", "both"):
            for options in ({"frac_noise": 0.5}, {"min_examples_per_class": 4}):
                np.testing.assert_array_equal(
                    find_label_issues(labels, probs, method=method, **options),
                    _cleanlab_issues(labels, probs, method, **options),
                )
    assert n_checked >= 30


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("labels", "probs", "match"),
    [
        (HAND_LABELS[:-1], HAND_PROBS, "same examples"),
        (HAND_LABELS, HAND_PROBS[:, 0], "2-D"),
        (HAND_LABELS, HAND_PROBS * 0.9, "sum to 1"),
        (HAND_LABELS, np.log(HAND_PROBS), r"\[0, 1\]"),
        (np.where(HAND_LABELS == 2, 3, HAND_LABELS), HAND_PROBS, r"labels must be in \[0, 2\]"),
        (HAND_LABELS - 1, HAND_PROBS, r"labels must be in \[0, 2\]"),
        (HAND_LABELS + 0.5, HAND_PROBS, "integer"),
        (HAND_LABELS.astype(str), HAND_PROBS, "integer"),
        (HAND_LABELS[:, None], HAND_PROBS, "1-D"),
        (HAND_LABELS, np.where(np.eye(8, 3, dtype=bool), np.nan, HAND_PROBS), "NaN"),
        (HAND_LABELS[:0], HAND_PROBS[:0], "empty"),
    ],
)
def test_bad_input_raises_clear_value_error(labels, probs, match):
    for call in (
        lambda: confident_joint(labels, probs),
        lambda: estimate_joint(labels, probs),
        lambda: estimate_noise_matrices(labels, probs),
        lambda: find_label_issues(labels, probs, method="prune_by_noise_rate"),
    ):
        with pytest.raises(ValueError, match=match):
            call()


def test_unknown_method_lists_valid_methods():
    with pytest.raises(ValueError, match="unknown method 'pbnr'.*prune_by_class, prune_by_noise_rate, both"):
        find_label_issues(HAND_LABELS, HAND_PROBS, method="pbnr")


def test_bad_options_and_metric_inputs():
    with pytest.raises(ValueError, match="frac_noise"):
        find_label_issues(HAND_LABELS, HAND_PROBS, method="both", frac_noise=1.5)
    with pytest.raises(ValueError, match="min_examples_per_class"):
        find_label_issues(HAND_LABELS, HAND_PROBS, method="both", min_examples_per_class=-1)
    with pytest.raises(ValueError, match="same length"):
        label_issue_metrics(np.ones(3, bool), np.ones(4, bool))
    with pytest.raises(ValueError, match="boolean"):
        label_issue_metrics(np.array([0, 2, 1]), np.ones(3, bool))
    with pytest.raises(ValueError, match="square"):
        calibrate_confident_joint(np.ones((2, 3)), [0, 1])


def test_cross_val_pred_probs_bad_input():
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    features = np.random.default_rng(0).normal(size=(12, 3))
    labels = np.array([0, 1] * 6)
    with pytest.raises(ValueError, match="same length"):
        cross_val_pred_probs(LogisticRegression(), features, labels[:-1], seed=0)
    with pytest.raises(ValueError, match="predict_proba"):
        cross_val_pred_probs(LinearSVC(), features, labels, seed=0)
    with pytest.raises(ValueError, match="n_folds"):
        cross_val_pred_probs(LogisticRegression(), features, labels, n_folds=1, seed=0)
    with pytest.raises(ValueError, match="at least n_folds=4"):
        cross_val_pred_probs(LogisticRegression(), features, np.array([0] * 10 + [1] * 2), seed=0)
