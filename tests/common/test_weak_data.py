"""Generators of weak supervision keep their truth and realise their rates exactly."""

from __future__ import annotations

import numpy as np
import pytest

from common.data.feedback import estimate_item_propensity, make_implicit_feedback
from common.data.retrieval import make_retrieval_pool, mine_negatives, pooled_judgements, retriever_scores
from common.data.weak_labels import (
    UNKNOWN,
    dirichlet_domain_priors,
    make_bags,
    mask_multilabel,
    sample_domains,
)


def test_mask_multilabel_counts_and_truth():
    rng = np.random.default_rng(0)
    y = (rng.random((300, 8)) < 0.25).astype(int)
    obs = mask_multilabel(y, 0.3, seed=1, negative_keep=0.1, negative_flip=0.05)
    positives, negatives = int(y.sum()), int((y == 0).sum())
    assert ((obs == 1) & (y == 1)).sum() == int(np.floor(0.3 * positives + 0.5))
    assert ((obs == 0) & (y == 0)).sum() == int(np.floor(0.1 * negatives + 0.5))
    assert ((obs == 1) & (y == 0)).sum() == int(np.floor(0.05 * negatives + 0.5))
    assert not ((obs == 0) & (y == 1)).any()
    np.testing.assert_array_equal(obs, mask_multilabel(y, 0.3, seed=1, negative_keep=0.1, negative_flip=0.05))
    single = mask_multilabel(y, 0.0, seed=2, single_positive=True)
    has_positive = y.sum(1) > 0
    np.testing.assert_array_equal((single == 1).sum(1), has_positive.astype(int))
    assert set(np.unique(single)) <= {1, UNKNOWN}
    with pytest.raises(ValueError, match="0/1"):
        mask_multilabel(y + 1, 0.5, seed=0)


def test_bags_partition_and_proportions():
    labels = np.random.default_rng(0).integers(0, 3, 103)
    bags = make_bags(labels, 10, seed=0)
    assert bags.num_bags == 10 and (bags.bag_of == -1).sum() == 3 and (bags.sizes == 10).all()
    for b in range(bags.num_bags):
        counts = np.bincount(labels[bags.members(b)], minlength=3)
        np.testing.assert_allclose(bags.proportions[b], counts / 10)
    assert make_bags(labels, 10, seed=0, drop_last=False).sizes.tolist() == [10] * 10 + [3]
    with pytest.raises(ValueError, match="bag_size"):
        make_bags(labels, 0, seed=0)


def test_latent_label_shift_domains_follow_priors():
    priors = dirichlet_domain_priors(6, 3, 0.5, seed=0, max_condition_number=50)
    assert priors.shape == (6, 3) and np.allclose(priors.sum(1), 1) and np.linalg.cond(priors) <= 50
    labels = np.repeat(np.arange(3), 400)
    indices, domains = sample_domains(labels, priors, 100, seed=0)
    assert len(np.unique(indices)) == len(indices)  # without replacement
    for d in range(6):
        counts = np.bincount(labels[indices[domains == d]], minlength=3)
        assert counts.sum() == 100 and np.abs(counts - 100 * priors[d]).max() < 1
    with pytest.raises(ValueError, match="too few"):
        sample_domains(labels, priors, 1000, seed=0)


def test_implicit_feedback_model():
    data = make_implicit_feedback(200, 100, seed=0, exposure_power=2.0, test_items_per_user=5)
    assert (data.test_mask.sum(1) == 5).all()
    assert not (data.clicks.astype(bool) & data.test_mask).any()
    train = ~data.test_mask
    np.testing.assert_array_equal(data.clicks[train], (data.exposed & data.relevant)[train])
    np.testing.assert_array_equal(data.test_relevance[data.test_mask], data.relevant[data.test_mask])
    # Clicks follow exposure: the most popular items are clicked more often than the rarest.
    popular = data.popularity >= np.quantile(data.popularity, 0.9)
    assert data.clicks[:, popular].mean() > 3 * data.clicks[:, data.rare_items(0.5)].mean()
    theta_hat = estimate_item_propensity(data.clicks, power=0.5)
    assert theta_hat.max() == 1.0 and (theta_hat > 0).all()
    assert np.corrcoef(theta_hat, data.popularity)[0, 1] > 0.5


def test_pooled_judgements_leave_false_negatives_for_strong_miners():
    pool = make_retrieval_pool(50, 1000, 16, 5, seed=0)
    weak = retriever_scores(pool, 0.6, seed=1)
    strong = retriever_scores(pool, 0.05, seed=2)
    judged = pooled_judgements(pool, [weak], depth=10)
    assert not (judged & ~pool.relevance).any() and judged.sum() < pool.relevance.sum()
    strong_negs = mine_negatives(strong, judged, depth=20, num_negatives=5, seed=0)
    weak_negs = mine_negatives(weak, judged, depth=20, num_negatives=5, seed=0)
    rows = np.arange(50)[:, None]
    assert not judged[rows, strong_negs].any()
    assert pool.relevance[rows, strong_negs].mean() > pool.relevance[rows, weak_negs].mean()
