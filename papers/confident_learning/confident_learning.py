"""Confident learning (Northcutt, Jiang & Chuang, JAIR 2021; arXiv 1911.00068) in numpy.

Estimates the joint distribution of given (noisy) and latent true labels from out-of-sample predicted
probabilities and flags the examples whose given label is likely wrong. Every function here reproduces
the numbers of the reference implementation, cleanlab 2.x (``cleanlab.count`` / ``cleanlab.filter``),
including its tie-breaking and rounding; the parity tests in ``tests/papers`` check this.
cleanlab is AGPL-3.0, so this module is an independent implementation of the same semantics, not a copy.

Conventions: ``labels`` are the given labels ``s`` in ``{0..K-1}``; ``pred_probs`` is ``(n, K)``;
confident-joint rows are the given label and columns the latent true label ``y*``.

Differences from cleanlab, all in input checking: rows of ``pred_probs`` must sum to 1 (cleanlab does not
check), and labels with a single distinct class are accepted (cleanlab refuses them). Integer counts and
masks are tested for exact equality; noise matrices and p(y*) to 1e-10 relative tolerance (they came out
bit-identical in every case tried, but some sums run in a different memory order).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "FILTER_METHODS",
    "calibrate_confident_joint",
    "class_weights_from_noise_matrix",
    "confident_joint",
    "confident_thresholds",
    "cross_val_pred_probs",
    "estimate_joint",
    "estimate_noise_matrices",
    "find_label_issues",
    "label_issue_metrics",
]

#: Pruning rules of the paper (Sec. 3.2) under cleanlab's ``filter_by`` names:
#: prune_by_class = PBC, prune_by_noise_rate = PBNR, both = C+NR, confident_learning = C_cj,
#: predicted_neq_given = C_confusion.
FILTER_METHODS: tuple[str, ...] = (
    "prune_by_class",
    "prune_by_noise_rate",
    "both",
    "confident_learning",
    "predicted_neq_given",
)

# Numerical constants of the reference implementation (cleanlab.internal.constants).
_FLOAT_TOL = 1e-6  # slack when comparing a probability with a threshold / with the argmax
_THRESHOLD_FLOOR = 2 * _FLOAT_TOL  # per-class thresholds are clipped from below to this
_MISSING_CLASS_THRESHOLD = 2.0  # threshold of a class absent from labels: no probability reaches it
_TINY = 1e-100  # guards divisions by zero
_PY_FLOOR = 1e-6  # lower clip of p(y*) while estimating it
_PY_FLOOR_AFTER_CONVERGENCE = 1e-5  # lower clip of p(y*) after the consistency iterations
_MAX_NOISE_RATE = 0.9999  # off-diagonal noise rates are clipped to [0, this]
_PROB_SUM_ATOL = 1e-4  # rows of pred_probs must sum to 1 within this
_MIN_DIAGONAL_FOR_WEIGHTS = 1e-3  # p(s=k|y*=k) floor when inverting it into a class weight (as cleanlab)


# --------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------
def _check_inputs(labels: Any, pred_probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return ``labels`` as int64 (n,) and ``pred_probs`` as float (n, K), or raise ValueError."""
    pred_probs = np.asarray(pred_probs)
    if pred_probs.ndim != 2:
        raise ValueError(
            f"pred_probs must be a 2-D array (n_examples, n_classes); got shape {pred_probs.shape}."
        )
    n, num_classes = pred_probs.shape
    if n == 0:
        raise ValueError("pred_probs is empty: need at least one example.")
    if num_classes < 2:
        raise ValueError(f"pred_probs must have at least 2 columns (classes); got {num_classes}.")
    if not np.issubdtype(pred_probs.dtype, np.floating):
        pred_probs = pred_probs.astype(float)
    if not np.all(np.isfinite(pred_probs)):
        raise ValueError("pred_probs contains NaN or infinite values.")
    if pred_probs.min() < -_FLOAT_TOL or pred_probs.max() > 1 + _FLOAT_TOL:
        raise ValueError(
            f"pred_probs must lie in [0, 1]; got values in [{pred_probs.min():.4g}, {pred_probs.max():.4g}]. "
            "Pass probabilities (e.g. softmax outputs), not logits."
        )
    row_sums = pred_probs.sum(axis=1)
    bad_rows = np.flatnonzero(np.abs(row_sums - 1.0) > _PROB_SUM_ATOL)
    if bad_rows.size:
        i = int(bad_rows[0])
        raise ValueError(
            f"each row of pred_probs must sum to 1 (tolerance {_PROB_SUM_ATOL}); {bad_rows.size} rows "
            f"do not, e.g. row {i} sums to {row_sums[i]:.6g}."
        )

    labels_arr = np.asarray(labels)
    if labels_arr.ndim != 1:
        raise ValueError(f"labels must be a 1-D array of class indices; got shape {labels_arr.shape}.")
    if labels_arr.shape[0] != n:
        raise ValueError(
            f"labels and pred_probs must describe the same examples: len(labels)={labels_arr.shape[0]} but "
            f"pred_probs has {n} rows."
        )
    if labels_arr.dtype == bool or not np.issubdtype(labels_arr.dtype, np.number):
        raise ValueError(f"labels must be integer class indices; got dtype {labels_arr.dtype}.")
    if not np.all(np.mod(labels_arr, 1) == 0):
        raise ValueError("labels must be integer class indices; got non-integer values.")
    labels_int = labels_arr.astype(np.int64)
    if labels_int.min() < 0 or labels_int.max() >= num_classes:
        raise ValueError(
            f"labels must be in [0, {num_classes - 1}] (pred_probs has {num_classes} columns); "
            f"got values in [{labels_int.min()}, {labels_int.max()}]."
        )
    return labels_int, pred_probs


# --------------------------------------------------------------------------------------------------
# rounding helpers (integer counts whose totals are preserved)
# --------------------------------------------------------------------------------------------------
def _round_keeping_sum(values: np.ndarray) -> np.ndarray:
    """Round a 1-D float vector to integers whose sum equals the rounded sum of ``values``."""
    values = np.asarray(values, dtype=float)
    rounded = values.round()
    target = np.sum(values).round()
    current = np.sum(rounded).round()
    while abs(current - target) > _FLOAT_TOL:
        gap = np.round(target - current)
        step = -1 if gap < 0 else 1
        n_changes = min(int(abs(gap)), len(values))
        # Entries that lost most to rounding go up first (or, going down, those that gained most).
        by_residual = np.argsort(values - rounded)
        chosen = (by_residual[::-1] if step == 1 else by_residual)[:n_changes]
        rounded[chosen] += step
        current = np.sum(rounded).round()
    return rounded.astype(int)


def _round_keeping_row_sums(matrix: np.ndarray) -> np.ndarray:
    """Round each row of a float matrix to integers, preserving the (rounded) row totals."""
    return np.stack([_round_keeping_sum(row) for row in np.asarray(matrix, dtype=float)]).astype(int)


# --------------------------------------------------------------------------------------------------
# confident joint and noise estimates
# --------------------------------------------------------------------------------------------------
def _class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels, minlength=num_classes)


def confident_thresholds(labels: Any, pred_probs: Any) -> np.ndarray:
    """Per-class thresholds t_j: mean predicted probability of class j over examples labelled j.

    A class that never occurs in ``labels`` gets threshold 2 (no example can be counted into it).
    """
    labels, pred_probs = _check_inputs(labels, pred_probs)
    return _thresholds(labels, pred_probs)


def _thresholds(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    num_classes = pred_probs.shape[1]
    thresholds = np.full(num_classes, _MISSING_CLASS_THRESHOLD, dtype=float)
    for k in np.unique(labels):
        thresholds[k] = np.mean(pred_probs[labels == k, k])
    return np.maximum(thresholds, _THRESHOLD_FLOOR)


def _confident_counts(labels: np.ndarray, pred_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Uncalibrated confident joint (diagonal at least 1) and the mask of examples counted off-diagonal."""
    num_classes = pred_probs.shape[1]
    above = pred_probs >= _thresholds(labels, pred_probs) - _FLOAT_TOL
    n_above = above.sum(axis=1)
    counted = n_above > 0
    # One class above its threshold: that class. Several: the overall argmax of the row (which, as in
    # the reference implementation, need not itself be above its threshold). None: not counted.
    guess = np.where(n_above > 1, pred_probs.argmax(axis=1), above.argmax(axis=1))
    counts = np.bincount(
        labels[counted] * num_classes + guess[counted], minlength=num_classes * num_classes
    ).reshape(num_classes, num_classes)
    # Every class keeps at least one confidently correct example.
    np.fill_diagonal(counts, np.maximum(counts.diagonal(), 1))
    off_diagonal = counted & (guess != labels)
    return counts, off_diagonal


def calibrate_confident_joint(joint_counts: np.ndarray, labels: Any) -> np.ndarray:
    """Rescale a confident joint so row i sums to #{s = i} and the total is n; integer counts."""
    joint_counts = np.asarray(joint_counts)
    if joint_counts.ndim != 2 or joint_counts.shape[0] != joint_counts.shape[1]:
        raise ValueError(f"joint_counts must be a square (K, K) matrix; got shape {joint_counts.shape}.")
    labels_arr = np.asarray(labels).astype(np.int64)
    num_classes = joint_counts.shape[0]
    if labels_arr.ndim != 1 or labels_arr.min() < 0 or labels_arr.max() >= num_classes:
        raise ValueError(f"labels must be a 1-D array of class indices in [0, {num_classes - 1}].")
    label_counts = _class_counts(labels_arr, num_classes)
    row_totals = np.maximum(joint_counts.sum(axis=1), _TINY)
    rows_scaled = joint_counts / row_totals[:, None] * label_counts[:, None]
    # Summed in column-major order, as the reference does, so the scale factor is bit-identical.
    total = np.sum(np.asfortranarray(rows_scaled))
    rescaled = rows_scaled / max(total, _TINY) * int(label_counts.sum())
    return _round_keeping_row_sums(rescaled)


def confident_joint(labels: Any, pred_probs: Any, *, calibrate: bool = True) -> np.ndarray:
    """Confident joint C[s, y*]: counts of examples with given label s confidently belonging to y*.

    With ``calibrate`` the rows are rescaled to the given-label counts (integer matrix summing to n).
    Equal to ``cleanlab.count.compute_confident_joint(labels, pred_probs, calibrate=calibrate)``.
    """
    labels, pred_probs = _check_inputs(labels, pred_probs)
    counts, _ = _confident_counts(labels, pred_probs)
    return calibrate_confident_joint(counts, labels) if calibrate else counts


def estimate_joint(labels: Any, pred_probs: Any) -> np.ndarray:
    """Estimated joint distribution Q[s, y*]: sums to 1, rows sum to p(s); as cleanlab estimate_joint."""
    calibrated = confident_joint(labels, pred_probs, calibrate=True)
    return calibrated / max(float(np.sum(calibrated)), _TINY)


def _renormalise_noise_rates(matrix: np.ndarray) -> np.ndarray:
    """Clip off-diagonal entries to [0, 0.9999], keep the diagonal, renormalise columns to sum to 1."""
    diagonal = matrix.diagonal().copy()
    clipped = np.clip(matrix, 0.0, _MAX_NOISE_RATE)
    np.fill_diagonal(clipped, diagonal)
    return clipped / np.maximum(clipped.sum(axis=0), _TINY)


def _clip_distribution(values: np.ndarray, low: float) -> np.ndarray:
    clipped = np.clip(values, low, 1.0)
    return clipped * 1.0 / max(np.sum(clipped), _TINY)


def _py_from_diagonals(ps: np.ndarray, noise: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """p(y*) = p(y*|s)_kk / p(s|y*)_kk * p(s)_k, clipped and renormalised (cleanlab's py_method='cnt')."""
    py = inverse.diagonal() / np.maximum(noise.diagonal(), _TINY) * ps
    return _clip_distribution(py, _PY_FLOOR)


def _inverse_from_noise(py: np.ndarray, noise: np.ndarray, ps: np.ndarray) -> np.ndarray:
    joint = noise * py  # joint[s, y] = p(s|y) p(y)
    return _renormalise_noise_rates(joint.T / np.maximum(ps, _TINY))


def _noise_from_inverse(ps: np.ndarray, inverse: np.ndarray, py: np.ndarray) -> np.ndarray:
    joint = (inverse * ps).T  # joint[s, y] = p(y|s) p(s)
    return _renormalise_noise_rates(joint / np.maximum(py, _TINY))


def estimate_noise_matrices(
    labels: Any, pred_probs: Any, *, converge_latent_estimates: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise matrix P(s|y*) (columns sum to 1), inverse noise matrix P(y*|s) (columns sum to 1) and p(y*).

    ``inverse[y, s] = P(y* = y | s)``. Same values as the first three outputs of
    ``cleanlab.count.estimate_py_and_noise_matrices_from_probabilities`` (reordered: noise, inverse, py),
    including its clipping and, with ``converge_latent_estimates``, its 3 x 5 consistency iterations.
    """
    labels, pred_probs = _check_inputs(labels, pred_probs)
    num_classes = pred_probs.shape[1]
    joint_counts = confident_joint(labels, pred_probs, calibrate=True)
    ps = _class_counts(labels, num_classes) / float(len(labels))
    given_totals = joint_counts.sum(axis=1).astype(float)
    true_totals = joint_counts.sum(axis=0).astype(float)
    noise = joint_counts / np.maximum(true_totals, _TINY)  # [s, y] = C[s, y] / sum_s C[s, y]
    inverse = joint_counts.T / np.maximum(given_totals, _TINY)  # [y, s] = C[s, y] / sum_y C[s, y]
    py = _py_from_diagonals(ps, noise, inverse)
    noise = _renormalise_noise_rates(noise)
    inverse = _renormalise_noise_rates(inverse)
    if converge_latent_estimates:
        for _ in range(3):
            for _ in range(5):
                inverse = _inverse_from_noise(py, noise, ps)
                py = _py_from_diagonals(ps, noise, inverse)
            noise = _noise_from_inverse(ps, inverse, py)
        py = _clip_distribution(py, _PY_FLOOR_AFTER_CONVERGENCE)
        noise = _renormalise_noise_rates(noise)
        inverse = _renormalise_noise_rates(inverse)
    return noise, inverse, py


def class_weights_from_noise_matrix(noise_matrix: Any) -> np.ndarray:
    """Per-class loss weights for retraining on the pruned data: ``w_k = 1 / p(s=k | y*=k)``, normalised
    to mean 1 over classes.

    ``noise_matrix[s, y]`` = P(s | y*) (columns sum to 1), e.g. the first output of
    :func:`estimate_noise_matrices`. The diagonal is floored at 1e-3 before inverting (cleanlab's
    ``CleanLearning`` clips the same way). Pruning removes about a fraction ``1 - p(s=k|y*=k)`` of class k, so
    the weights restore each class's share of the loss (paper, Sec. 3.2). The normalisation does not change
    a loss that averages with these weights (``F.cross_entropy(weight=...)`` divides by their sum).
    """
    matrix = np.asarray(noise_matrix, dtype=float)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"noise_matrix must be a square (K, K) matrix; got shape {matrix.shape}.")
    diagonal = matrix.diagonal()
    if not np.all(np.isfinite(diagonal)) or diagonal.min() < 0 or diagonal.max() > 1 + _FLOAT_TOL:
        raise ValueError("the diagonal of noise_matrix must hold probabilities in [0, 1].")
    weights = 1.0 / np.maximum(diagonal, _MIN_DIAGONAL_FOR_WEIGHTS)
    return weights / weights.mean()


# --------------------------------------------------------------------------------------------------
# finding label issues
# --------------------------------------------------------------------------------------------------
def _prune_counts(joint_counts: np.ndarray, min_examples_per_class: int, frac_noise: float) -> np.ndarray:
    """Number of examples to prune per (true y*, given s) cell, indexed ``[y*, s]``.

    Keeps at least ``min_examples_per_class`` on each diagonal (taking the deficit evenly from the
    non-zero noise cells of that given class) and keeps ``frac_noise`` of each noise cell; truncated
    to integers as in the reference.
    """
    counts = joint_counts.T.astype(float)  # [y*, s]: column s holds the given-class-s row of C
    diagonal = counts.diagonal()
    raised = np.maximum(diagonal, min_examples_per_class)
    n_noise_cells = np.maximum(np.count_nonzero(counts, axis=0) - 1.0, 1.0)
    counts = counts - (raised - diagonal) / n_noise_cells
    counts[counts < 0] = 0
    np.fill_diagonal(counts, raised)
    kept = counts * frac_noise
    np.fill_diagonal(kept, counts.diagonal())
    np.fill_diagonal(kept, counts.diagonal() + np.sum(counts - kept, axis=0))
    return _round_keeping_row_sums(kept.astype(int))


def _given_label_is_top(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """Examples whose given label is the argmax once it gets a 1e-6 bonus (never reported as issues)."""
    bonus = pred_probs.copy()
    bonus[np.arange(len(labels)), labels] += _FLOAT_TOL
    return bonus.argmax(axis=1) == labels


def _prune_by_class(
    labels: np.ndarray, pred_probs: np.ndarray, prune: np.ndarray, min_examples_per_class: int
) -> np.ndarray:
    """PBC: in each given class k, flag the examples with the lowest p(k | x), as many as its noise count."""
    flagged = np.zeros(len(labels), dtype=bool)
    for k in range(pred_probs.shape[1]):
        members = np.flatnonzero(labels == k)
        if len(members) <= max(min_examples_per_class, 1):
            continue
        n_flag = len(members) - prune[k, k]
        if n_flag >= 1:
            lowest_first = np.argsort(pred_probs[members, k])
            flagged[members[lowest_first[:n_flag]]] = True
    return flagged


def _prune_by_noise_rate(
    labels: np.ndarray, pred_probs: np.ndarray, prune: np.ndarray, min_examples_per_class: int
) -> np.ndarray:
    """PBNR: for each noise cell (s=k, y*=j), flag the labelled-k examples with largest p(j|x) - p(k|x)."""
    flagged = np.zeros(len(labels), dtype=bool)
    num_classes = pred_probs.shape[1]
    for k in range(num_classes):
        members = np.flatnonzero(labels == k)
        if len(members) <= max(min_examples_per_class, 1):
            continue
        probs_k = pred_probs[members]
        for j in range(num_classes):
            n_flag = prune[j, k]
            if j == k or n_flag <= 0:
                continue
            margin = probs_k[:, j] - probs_k[:, k]
            largest_first = np.argsort(-margin)
            flagged[members[largest_first[:n_flag]]] = True
    return flagged


def find_label_issues(
    labels: Any,
    pred_probs: Any,
    *,
    method: str = "prune_by_noise_rate",
    frac_noise: float = 1.0,
    min_examples_per_class: int = 1,
) -> np.ndarray:
    """Boolean mask of examples whose given label is likely wrong, by one of the paper's pruning rules.

    ``method`` is one of :data:`FILTER_METHODS` ("prune_by_class" = PBC, "prune_by_noise_rate" = PBNR,
    "both" = C+NR, "confident_learning" = C_cj, "predicted_neq_given" = C_confusion). Same mask as
    ``cleanlab.filter.find_label_issues(labels, pred_probs, filter_by=method, frac_noise=...,
    min_examples_per_class=...)``. ``frac_noise`` and ``min_examples_per_class`` only affect PBC, PBNR
    and C+NR. As in cleanlab 2.x, every method finally un-flags examples whose given label is the
    argmax once given a 1e-6 bonus (the paper's original C_cj masks did not have this step).
    """
    if method not in FILTER_METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(FILTER_METHODS)}.")
    if not 0.0 <= frac_noise <= 1.0:
        raise ValueError(f"frac_noise must be in [0, 1]; got {frac_noise}.")
    if int(min_examples_per_class) != min_examples_per_class or min_examples_per_class < 0:
        raise ValueError(
            f"min_examples_per_class must be a non-negative integer; got {min_examples_per_class}."
        )
    labels, pred_probs = _check_inputs(labels, pred_probs)

    if method == "predicted_neq_given":
        flagged = pred_probs.argmax(axis=1) != labels
    elif method == "confident_learning":
        _, flagged = _confident_counts(labels, pred_probs)
    else:
        joint_counts = confident_joint(labels, pred_probs, calibrate=True)
        prune = _prune_counts(joint_counts, int(min_examples_per_class), frac_noise)
        if method == "prune_by_class":
            flagged = _prune_by_class(labels, pred_probs, prune, min_examples_per_class)
        elif method == "prune_by_noise_rate":
            flagged = _prune_by_noise_rate(labels, pred_probs, prune, min_examples_per_class)
        else:  # both
            by_class = _prune_by_class(labels, pred_probs, prune, min_examples_per_class)
            by_noise_rate = _prune_by_noise_rate(labels, pred_probs, prune, min_examples_per_class)
            flagged = by_class & by_noise_rate
    return flagged & ~_given_label_is_top(labels, pred_probs)


def label_issue_metrics(found_mask: Any, true_noisy_mask: Any) -> dict[str, float]:
    """Precision, recall and F1 of flagged examples against the truly mislabelled ones (0 when undefined)."""
    found = np.asarray(found_mask)
    truth = np.asarray(true_noisy_mask)
    if found.ndim != 1 or truth.ndim != 1 or found.shape != truth.shape:
        raise ValueError(
            f"found_mask and true_noisy_mask must be 1-D and the same length; got shapes {found.shape} "
            f"and {truth.shape}."
        )
    for name, arr in (("found_mask", found), ("true_noisy_mask", truth)):
        if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must be boolean (or 0/1); got dtype {arr.dtype}.")
    found, truth = found.astype(bool), truth.astype(bool)
    true_pos = int(np.sum(found & truth))
    n_found, n_true = int(found.sum()), int(truth.sum())
    precision = true_pos / n_found if n_found else 0.0
    recall = true_pos / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


# --------------------------------------------------------------------------------------------------
# out-of-sample probabilities
# --------------------------------------------------------------------------------------------------
def cross_val_pred_probs(estimator: Any, X: Any, labels: Any, *, n_folds: int = 4, seed: int) -> np.ndarray:
    """Out-of-sample predicted probabilities (n, K) by stratified, shuffled, seeded K-fold cross-validation.

    ``estimator`` is any scikit-learn classifier with ``predict_proba``; every class must occur in
    ``labels`` at least ``n_folds`` times.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    labels_arr = np.asarray(labels)
    if labels_arr.ndim != 1:
        raise ValueError(f"labels must be 1-D; got shape {labels_arr.shape}.")
    if len(X) != len(labels_arr):
        raise ValueError(f"X and labels must have the same length; got {len(X)} and {len(labels_arr)}.")
    if int(n_folds) != n_folds or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2; got {n_folds}.")
    if not hasattr(estimator, "predict_proba"):
        raise ValueError(f"estimator {type(estimator).__name__} has no predict_proba.")
    _, class_sizes = np.unique(labels_arr, return_counts=True)
    if class_sizes.min() < n_folds:
        raise ValueError(
            f"every class needs at least n_folds={n_folds} examples for stratified cross-validation; "
            f"the smallest class has {class_sizes.min()}."
        )
    folds = StratifiedKFold(n_splits=int(n_folds), shuffle=True, random_state=seed)
    return cross_val_predict(estimator, X, labels_arr, cv=folds, method="predict_proba")
