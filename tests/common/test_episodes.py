"""Few-shot episodes: sizes, disjointness, determinism, and the Dirichlet-imbalanced query set."""

from __future__ import annotations

import numpy as np
import pytest

from common.data.episodes import dirichlet_counts, sample_episode

LABELS = np.repeat(np.arange(10), 40)


def test_balanced_episode_sizes_labels_and_disjointness():
    episode = sample_episode(LABELS, n_way=5, k_shot=3, query_total=75, rng=np.random.default_rng(0))
    assert len(set(episode.classes.tolist())) == 5 and len(episode.support) == 15 and len(episode.query) == 75
    assert not set(episode.support) & set(episode.query)
    assert (LABELS[episode.support] == episode.classes[episode.support_labels]).all()
    assert (LABELS[episode.query] == episode.classes[episode.query_labels]).all()
    assert np.bincount(episode.query_labels).tolist() == [15] * 5
    again = sample_episode(LABELS, n_way=5, k_shot=3, query_total=75, rng=np.random.default_rng(0))
    assert (again.query == episode.query).all() and (again.support == episode.support).all()


def test_dirichlet_counts_sum_and_round_by_largest_remainder():
    assert dirichlet_counts(np.array([0.5, 0.3, 0.2]), 10).tolist() == [5, 3, 2]
    assert dirichlet_counts(np.array([0.34, 0.33, 0.33]), 10).tolist() == [4, 3, 3]
    assert dirichlet_counts(np.array([0.26, 0.26, 0.48]), 5).tolist() == [1, 1, 3]


def test_imbalanced_queries_follow_the_dirichlet_draw():
    rng = np.random.default_rng(1)
    spreads = []
    for _ in range(200):
        episode = sample_episode(
            np.repeat(np.arange(10), 80), n_way=5, k_shot=1, query_total=75, rng=rng, dirichlet_alpha=2.0
        )
        counts = np.bincount(episode.query_labels, minlength=5)
        assert counts.sum() == 75
        spreads.append(counts.max() - counts.min())
    # Dirichlet(2) over 5 classes: the largest class is typically about three times the smallest.
    assert np.mean(spreads) > 15
    with pytest.raises(ValueError, match="has 40 examples"):
        sample_episode(LABELS, n_way=2, k_shot=5, query_total=100, rng=np.random.default_rng(2))
    with pytest.raises(ValueError, match="does not split"):
        sample_episode(LABELS, n_way=3, k_shot=1, query_total=10, rng=np.random.default_rng(0))
