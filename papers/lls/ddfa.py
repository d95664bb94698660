"""The Discretize-Factorize-Adjust steps of DDFA and its evaluation, as NumPy / scikit-learn functions.

Each follows the official code (acmi-lab/Latent-Label-Shift-DDFA @ccb82ca):
  * discretise: k-means with `nredo=5`, `niter=100` on p(d|x) of the validation + training splits
    (`clustering.py`, faiss; scikit-learn's KMeans with n_init=5, max_iter=100 here);
  * factorise: the m x D matrix of p(cluster | d) (columns normalised), NMF of its transpose with K components
    (`NMF(n_components=K, init='random')`), then p(cluster|y) columns normalised to one with the scale moved
    into p(y|d), whose columns are normalised to one (`class_prior_estimation.py`);
  * adjust: p(y|x) = pinv(p(d|y)) p(d|x) with p(d|y) the column-normalised p(y|d)^T (uniform domain sizes),
    then p_d(y|x) proportional to p(y|x) p(d|y) for the example's domain (`experiment_utils.py`);
  * evaluate: one Hungarian matching of predicted to true classes on the test split gives the accuracy and
    permutes the rows of the estimated p(y|d); its error is the summed absolute difference to the true
    matrix (`experiment_framework.py`, `test_post_cluster_p_y_given_d_l1_norm`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

from common.eval.metrics import clustering_accuracy, hungarian_match


def kmeans(features: np.ndarray, num_clusters: int, *, seed: int) -> KMeans:
    """k-means fitted as the official faiss call (5 restarts, 100 iterations)."""
    model = KMeans(n_clusters=num_clusters, n_init=5, max_iter=100, random_state=seed % 2**31)
    return model.fit(np.asarray(features, dtype=np.float64))


def cluster_domain_histogram(clusters: np.ndarray, domains: np.ndarray, num_clusters: int, num_domains: int):
    """p(cluster | d) as an (m, D) matrix whose columns sum to one."""
    counts = np.zeros((num_clusters, num_domains))
    np.add.at(counts, (clusters, domains), 1.0)
    return counts / np.maximum(counts.sum(0, keepdims=True), 1e-12)


@dataclass
class Factorization:
    """p(y|d) (K, D) and p(cluster|y) (m, K), every column a distribution."""

    p_y_given_d: np.ndarray
    p_cluster_given_y: np.ndarray


def factorize(p_cluster_given_d: np.ndarray, num_classes: int, *, seed: int) -> Factorization:
    """NMF of p(cluster|d)^T into K topics, normalised as the official `ClusterNMFClassPriorEstimation`."""
    model = NMF(n_components=num_classes, init="random", random_state=seed % 2**31)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the official run keeps the 200-iteration result
        weights = model.fit_transform(p_cluster_given_d.T).T  # (K, D)
    topics = model.components_.T.copy()  # (m, K)
    scale = topics.sum(0, keepdims=True)
    scale = np.where(scale == 0, 1.0, scale)
    topics /= scale
    weights = weights * scale[0][:, None]
    weights /= np.where(weights.sum(0, keepdims=True) == 0, 1e-12, weights.sum(0, keepdims=True))
    return Factorization(weights, topics)


def p_d_given_y(p_y_given_d: np.ndarray) -> np.ndarray:
    """(D, K) p(d|y) from (K, D) p(y|d) under equal domain sizes (columns normalised)."""
    transposed = p_y_given_d.T
    total = transposed.sum(0, keepdims=True)
    return transposed / np.where(total == 0, 1e-8, total)


def posterior_uniform(p_d_given_x: np.ndarray, p_y_given_d: np.ndarray) -> np.ndarray:
    """(N, K) p(y|x) solving p(d|x) = sum_y p(d|y) p(y|x) by the pseudo-inverse (unnormalised, official)."""
    return (np.linalg.pinv(p_d_given_y(p_y_given_d)) @ p_d_given_x.T).T


def domain_adjust(p_y_given_x: np.ndarray, p_y_given_d: np.ndarray, domains: np.ndarray) -> np.ndarray:
    """(N, K) p_d(y|x) proportional to p(y|x) p(d|y) for each example's domain d."""
    adjusted = p_y_given_x * p_d_given_y(p_y_given_d)[domains]
    return adjusted / adjusted.sum(1, keepdims=True)


def full_matching(predicted: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    """perm[c] = the true class matched to predicted class c: the Hungarian matching completed into a
    permutation of the classes (`common.eval.metrics.hungarian_match` with ``num_classes``)."""
    mapping = hungarian_match(predicted, targets, num_classes=num_classes)
    return np.array([mapping[c] for c in range(num_classes)])


def evaluate(
    predicted: np.ndarray, targets: np.ndarray, p_y_given_d_est: np.ndarray, p_y_given_d_true: np.ndarray
) -> dict[str, float]:
    """Hungarian test accuracy (%) and L1 error of the matched p(y|d) estimate (official sum over the K x D
    entries, and per domain)."""
    num_classes, num_domains = p_y_given_d_true.shape[1], p_y_given_d_true.shape[0]
    perm = full_matching(predicted, targets, num_classes)
    matched = np.zeros_like(p_y_given_d_est)
    matched[perm] = p_y_given_d_est
    l1 = float(np.abs(p_y_given_d_true.T - matched).sum())
    return {
        "test/acc": clustering_accuracy(predicted, targets),
        "test/pyd_l1": l1,
        "test/pyd_l1_per_domain": l1 / num_domains,
    }
