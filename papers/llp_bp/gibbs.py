"""The LLP-BP Gibbs distribution over binary instance labels: a kNN similarity graph plus bag counts.

    log p(y) = - sim_lambda * sum_{(i,j) in kNN} s_ij (y_i - y_j)^2
               - bag_lambda * sum_b (sum_{i in b} y_i - c_b)^2

with s_ij = exp(-||x_i - x_j||) (Matern-1/2 kernel, unit length scale and amplitude) on the edges of a cosine
kNN graph and c_b the bag's positive count (paper Section 3). Both squares expand into unary and pairwise
log-potentials (the official network.py writes them that way for PGMax):
    similarity: unary -sim_lambda * sum_j s_ij on y_i, pairwise +2 sim_lambda s_ij on y_i y_j;
    bag:        unary -bag_lambda * (1 - 2 c_b) on y_i, pairwise -2 bag_lambda on every within-bag pair,
up to the constant bag_lambda * sum_b c_b^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.neighbors import NearestNeighbors

from papers.llp_bp.bp import BinaryPairwiseMRF, as_mrf

__all__ = [
    "SimilarityGraph",
    "bag_pairs",
    "gibbs_log_score",
    "knn_similarity_graph",
    "llp_bp_mrf",
    "matern_half",
]


@dataclass(frozen=True)
class SimilarityGraph:
    """Undirected kNN edges (E, 2) with i < j and their kernel similarities (E,)."""

    edges: np.ndarray
    similarities: np.ndarray


def matern_half(a: np.ndarray, b: np.ndarray, length_scale: float = 1.0) -> np.ndarray:
    """Matern-1/2 kernel exp(-||a - b|| / length_scale), row by row."""
    return np.exp(-np.linalg.norm(a - b, axis=-1) / length_scale)


def knn_similarity_graph(
    features: np.ndarray,
    *,
    n_neighbors: int = 5,
    neigh_thresh: float = 2.0,
    bag_counts: np.ndarray | None = None,
    max_bag_count: int | None = None,
) -> SimilarityGraph:
    """Edges from every point to its `n_neighbors` cosine nearest neighbours (itself excluded) at cosine
    distance < `neigh_thresh`, deduplicated as undirected pairs, weighted by the Matern-1/2 similarity of the
    features. With `max_bag_count`, only points whose bag count (`bag_counts`, per point) is at most that
    value send edges (the official train.py keeps edges of bags with count <= 1)."""
    x = np.asarray(features, dtype=np.float64)
    k = min(int(n_neighbors), x.shape[0] - 1)
    distances, neighbours = NearestNeighbors(n_neighbors=k, metric="cosine").fit(x).kneighbors()
    source = np.repeat(np.arange(x.shape[0]), k)
    target = neighbours.reshape(-1)
    keep = (distances.reshape(-1) < neigh_thresh) & (source != target)
    if max_bag_count is not None:
        if bag_counts is None:
            raise ValueError("max_bag_count needs bag_counts")
        keep &= np.asarray(bag_counts)[source] <= max_bag_count
    pairs = np.sort(np.stack([source[keep], target[keep]], 1), axis=1)
    pairs = np.unique(pairs, axis=0).reshape(-1, 2)
    return SimilarityGraph(edges=pairs, similarities=matern_half(x[pairs[:, 0]], x[pairs[:, 1]]))


def bag_pairs(bag_of: np.ndarray) -> np.ndarray:
    """Every within-bag pair (i, j), i < j, of examples with a bag (bag id >= 0)."""
    bag_of = np.asarray(bag_of)
    members = np.flatnonzero(bag_of >= 0)
    order = members[np.argsort(bag_of[members], kind="stable")]
    _, starts, sizes = np.unique(bag_of[order], return_index=True, return_counts=True)
    pairs = []
    for size in np.unique(sizes):  # one vectorised block per bag size
        rows, cols = np.triu_indices(int(size), 1)
        blocks = np.stack([order[s : s + size] for s in starts[sizes == size]])
        pairs.append(np.stack([blocks[:, rows].reshape(-1), blocks[:, cols].reshape(-1)], 1))
    pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    return np.sort(pairs, axis=1)


def llp_bp_mrf(
    num_variables: int,
    graph: SimilarityGraph,
    bag_of: np.ndarray,
    bag_counts: np.ndarray,
    *,
    sim_lambda: float = 10.0,
    bag_lambda: float = 10.0,
) -> BinaryPairwiseMRF:
    """The expanded log-potentials of the Gibbs distribution (`bag_counts` per bag; examples with bag -1 have
    no bag term). Edges that are both kNN and within-bag pairs get the sum of both potentials."""
    bag_of = np.asarray(bag_of)
    in_bag = bag_of >= 0
    count_of = np.zeros(num_variables)
    count_of[in_bag] = np.asarray(bag_counts, dtype=np.float64)[bag_of[in_bag]]
    unary = np.where(in_bag, -bag_lambda * (1.0 - 2.0 * count_of), 0.0)
    # -sim_lambda * sum_j s_ij for both endpoints of every similarity edge
    np.subtract.at(unary, graph.edges[:, 0], sim_lambda * graph.similarities)
    np.subtract.at(unary, graph.edges[:, 1], sim_lambda * graph.similarities)
    within = bag_pairs(bag_of)
    all_pairs = np.concatenate([graph.edges, within]).astype(np.int64)
    all_weights = np.concatenate(
        [2.0 * sim_lambda * graph.similarities, np.full(len(within), -2.0 * bag_lambda)]
    )
    keys = all_pairs[:, 0] * num_variables + all_pairs[:, 1]
    unique_keys, slot = np.unique(keys, return_inverse=True)
    weights = np.bincount(slot.reshape(-1), weights=all_weights, minlength=unique_keys.size)
    edges = np.stack([unique_keys // num_variables, unique_keys % num_variables], 1)
    return as_mrf(unary, edges, weights)


def gibbs_log_score(
    labels: np.ndarray,
    graph: SimilarityGraph,
    bag_of: np.ndarray,
    bag_counts: np.ndarray,
    *,
    sim_lambda: float = 10.0,
    bag_lambda: float = 10.0,
) -> np.ndarray:
    """The Gibbs log-score written directly (squares, not expanded) for labelings (..., N)."""
    y = np.asarray(labels, dtype=np.float64)
    i, j = graph.edges[:, 0], graph.edges[:, 1]
    similarity = -sim_lambda * ((y[..., i] - y[..., j]) ** 2 * graph.similarities).sum(-1)
    bag_of = np.asarray(bag_of)
    counts = np.asarray(bag_counts, dtype=np.float64)
    sums = np.zeros((*y.shape[:-1], counts.size))
    for bag in range(counts.size):
        sums[..., bag] = y[..., bag_of == bag].sum(-1)
    return similarity - bag_lambda * ((sums - counts) ** 2).sum(-1)
