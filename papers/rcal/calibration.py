"""RCAL's distributional representation calibration (Zhang et al. ICCV 2023, Sec. 3.2), on fixed features.

Per (noisy) class: drop Local Outlier Factor outliers, estimate a Gaussian (mean, shrinkage covariance);
tail classes average their statistics with those of the q head classes whose means are nearest; then
points sampled from the class Gaussians balance the classes for the classifier. Plain NumPy/scikit-learn."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COVARIANCES = ("ledoit_wolf", "empirical")


@dataclass
class ClassGaussians:
    """Per-class Gaussian statistics: means (K, D), covariances (K, D, D), the number of examples each was
    estimated from (K,), and which classes borrowed statistics from head classes (K,)."""

    means: np.ndarray
    covariances: np.ndarray
    counts: np.ndarray
    borrowed: np.ndarray


def lof_inliers(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    n_neighbors: int = 20,
    min_examples: int = 5,
) -> np.ndarray:
    """Boolean mask of the examples that scikit-learn's LocalOutlierFactor keeps within their labelled class
    (`fit_predict == 1`). Classes with fewer than `min_examples` examples are kept whole (too few points
    for local densities); the neighbourhood is min(n_neighbors, n_k - 1)."""
    from sklearn.neighbors import LocalOutlierFactor

    keep = np.ones(len(labels), dtype=bool)
    for k in range(num_classes):
        members = np.flatnonzero(labels == k)
        if len(members) < max(min_examples, 3):
            continue
        lof = LocalOutlierFactor(n_neighbors=min(n_neighbors, len(members) - 1))
        keep[members] = lof.fit_predict(features[members]) == 1
    return keep


def class_gaussians(
    features: np.ndarray, labels: np.ndarray, num_classes: int, *, covariance: str = "ledoit_wolf"
) -> ClassGaussians:
    """Mean and covariance of each class's features. `ledoit_wolf`: scikit-learn's LedoitWolf shrinkage
    (well conditioned for classes with fewer examples than dimensions); `empirical`: the ML estimate. A class
    with one example gets a zero covariance, an empty class a zero mean (count 0)."""
    from sklearn.covariance import EmpiricalCovariance, LedoitWolf

    if covariance not in COVARIANCES:
        raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
    dim = features.shape[1]
    means = np.zeros((num_classes, dim))
    covs = np.zeros((num_classes, dim, dim))
    counts = np.bincount(labels, minlength=num_classes)[:num_classes]
    for k in range(num_classes):
        z = features[labels == k].astype(np.float64)
        if len(z) == 0:
            continue
        means[k] = z.mean(0)
        if len(z) >= 2:
            # No precision matrix: only the covariance is used (saves a pseudo-inverse per class).
            estimator = (LedoitWolf if covariance == "ledoit_wolf" else EmpiricalCovariance)(
                store_precision=False
            )
            covs[k] = estimator.fit(z).covariance_
    return ClassGaussians(means, covs, counts, np.zeros(num_classes, dtype=bool))


def calibrate_tail(
    stats: ClassGaussians, *, head_fraction: float = 0.5, num_borrowed: int = 2, blend_means: bool = True
) -> ClassGaussians:
    """Tail calibration: the classes outside the `head_fraction` largest (by count) average their mean
    (if `blend_means`) and covariance with those of the `num_borrowed` (q) head classes whose means are
    nearest in Euclidean distance, each of the q + 1 terms with weight 1 / (q + 1). A tail class with fewer
    than two examples has no covariance of its own and takes the mean of the q head covariances; an
    empty class takes nothing (it has no mean to compare)."""
    k_total = len(stats.counts)
    order = np.argsort(-stats.counts, kind="stable")
    n_head = min(max(int(np.ceil(head_fraction * k_total)), 1), k_total)
    head, tail = order[:n_head], order[n_head:]
    q = min(int(num_borrowed), len(head))
    means, covs = stats.means.copy(), stats.covariances.copy()
    borrowed = np.zeros(k_total, dtype=bool)
    if q < 1:
        return ClassGaussians(means, covs, stats.counts.copy(), borrowed)
    for k in tail:
        if stats.counts[k] == 0:
            continue
        distances = np.linalg.norm(stats.means[head] - stats.means[k], axis=1)
        near = head[np.argsort(distances, kind="stable")[:q]]
        if blend_means:
            means[k] = (stats.means[k] + stats.means[near].sum(0)) / (q + 1)
        if stats.counts[k] >= 2:
            covs[k] = (stats.covariances[k] + stats.covariances[near].sum(0)) / (q + 1)
        else:
            covs[k] = stats.covariances[near].mean(0)
        borrowed[k] = True
    return ClassGaussians(means, covs, stats.counts.copy(), borrowed)


def sample_to_balance(
    stats: ClassGaussians, real_counts: np.ndarray, rng: np.random.Generator, target: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Points drawn from each class's Gaussian so that real + sampled reach `target` per class (default: the
    largest real count). Classes with no real example get none (there is no distribution to draw from).
    Returns (features (M, D) float32, labels (M,) int64)."""
    real_counts = np.asarray(real_counts)
    target = int(real_counts.max()) if target is None else int(target)
    features, labels = [], []
    for k, count in enumerate(real_counts):
        extra = target - int(count)
        if extra <= 0 or stats.counts[k] == 0:
            continue
        features.append(
            stats.means[k]
            + rng.standard_normal((extra, len(stats.means[k]))) @ _sqrt_cov(stats.covariances[k]).T
        )
        labels.append(np.full(extra, k, dtype=np.int64))
    if not features:
        return np.zeros((0, stats.means.shape[1]), np.float32), np.zeros(0, np.int64)
    return np.concatenate(features).astype(np.float32), np.concatenate(labels)


def _sqrt_cov(cov: np.ndarray) -> np.ndarray:
    """A factor A with A A^T = cov: Cholesky with a tiny diagonal jitter (covariances of few points are
    singular), or the symmetric eigendecomposition if that fails."""
    cov = 0.5 * (cov + cov.T)
    jitter = 1e-9 * max(float(np.trace(cov)) / len(cov), 1e-12)
    try:
        return np.linalg.cholesky(cov + jitter * np.eye(len(cov)))
    except np.linalg.LinAlgError:
        values, vectors = np.linalg.eigh(cov)
        return vectors * np.sqrt(np.clip(values, 0.0, None))


def class_balanced_weights(counts: np.ndarray, beta: float = 0.9999) -> np.ndarray:
    """Class-balanced loss weights of Cui et al. CVPR 2019: (1 - beta) / (1 - beta^n_k), normalised to sum
    to the number of classes; an empty class gets weight 0."""
    counts = np.asarray(counts, dtype=np.float64)
    weights = np.zeros_like(counts)
    present = counts > 0
    weights[present] = (1.0 - beta) / (1.0 - np.power(beta, counts[present]))
    return weights * len(counts) / weights.sum()
