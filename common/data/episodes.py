"""Few-shot episodes: N classes, K labelled support examples each, and a query set, balanced or with class
proportions drawn from a Dirichlet distribution (the imbalanced transductive protocol of Veilleux et al.,
NeurIPS 2021, "Realistic evaluation of transductive few-shot learning", used by later transductive work)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Episode:
    classes: np.ndarray  # (N,) the episode's classes, in the order of their episode label 0..N-1
    support: np.ndarray  # (N * K,) dataset indices, class-major
    query: np.ndarray  # (Q,) dataset indices
    support_labels: np.ndarray  # (N * K,) episode labels 0..N-1
    query_labels: np.ndarray  # (Q,) episode labels 0..N-1


def dirichlet_counts(proportions: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to `total`, closest to `proportions * total` (largest remainders)."""
    exact = np.asarray(proportions, dtype=np.float64) * total
    counts = np.floor(exact).astype(np.int64)
    remainder = total - int(counts.sum())
    counts[np.argsort(-(exact - counts), kind="stable")[:remainder]] += 1
    return counts


def sample_episode(
    labels: np.ndarray,
    n_way: int,
    k_shot: int,
    query_total: int,
    rng: np.random.Generator,
    dirichlet_alpha: float | None = None,
) -> Episode:
    """One episode from a labelled pool. `dirichlet_alpha=None`: `query_total / n_way` queries per class (must
    divide); otherwise the class proportions of the query set are drawn from Dirichlet(alpha, ..., alpha)
    (small alpha: strong imbalance; Veilleux et al. use 2). Support and query never share an example; a class
    without enough examples for its draw is an error naming the counts."""
    labels = np.asarray(labels)
    if n_way < 1 or k_shot < 1 or query_total < 0:
        raise ValueError(
            f"need n_way >= 1, k_shot >= 1, query_total >= 0; got {n_way}, {k_shot}, {query_total}"
        )
    available = np.unique(labels)
    if len(available) < n_way:
        raise ValueError(f"{n_way}-way episodes need {n_way} classes; the pool has {len(available)}")
    classes = rng.choice(available, size=n_way, replace=False)
    if dirichlet_alpha is None:
        if query_total % n_way:
            raise ValueError(f"a balanced query set of {query_total} does not split over {n_way} classes")
        counts = np.full(n_way, query_total // n_way, dtype=np.int64)
    else:
        if dirichlet_alpha <= 0:
            raise ValueError(f"dirichlet_alpha must be > 0, got {dirichlet_alpha}")
        counts = dirichlet_counts(rng.dirichlet(np.full(n_way, float(dirichlet_alpha))), query_total)
    support, query, query_labels = [], [], []
    for episode_label, (cls, count) in enumerate(zip(classes, counts, strict=True)):
        members = np.flatnonzero(labels == cls)
        if len(members) < k_shot + count:
            raise ValueError(f"class {cls} has {len(members)} examples; the episode needs {k_shot} + {count}")
        picked = rng.choice(members, size=k_shot + count, replace=False)
        support.append(picked[:k_shot])
        query.append(picked[k_shot:])
        query_labels.append(np.full(count, episode_label, dtype=np.int64))
    return Episode(
        classes=classes,
        support=np.concatenate(support),
        query=np.concatenate(query),
        support_labels=np.repeat(np.arange(n_way, dtype=np.int64), k_shot),
        query_labels=np.concatenate(query_labels),
    )
