"""Tests of common.data.partition: GMM clean/noisy partition on synthetic losses, global and per class."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.data.partition import clean_mask, gmm_clean_probability, per_class_gmm_clean_probability


def precision_recall(mask: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    hit = (mask & clean).sum()
    return hit / mask.sum(), hit / clean.sum()


def bimodal_losses(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    clean = np.abs(rng.normal(0.2, 0.1, 800))  # learned: low loss
    noisy = rng.normal(2.5, 0.5, 200)  # memorised late: high loss
    losses = np.concatenate([clean, noisy])
    is_clean = np.arange(1000) < 800
    perm = rng.permutation(1000)
    return losses[perm], is_clean[perm]


def class_scaled_losses(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class 1's *clean* losses (~1.5) exceed class 0's *noisy* ones (~0.6): one global split must fail."""
    rng = np.random.default_rng(seed)
    losses, labels, clean = [], [], []
    for cls, (mc, sc, mn, sn) in enumerate([(0.1, 0.03, 0.6, 0.1), (1.5, 0.2, 4.0, 0.4)]):
        losses += [np.abs(rng.normal(mc, sc, 400)), np.abs(rng.normal(mn, sn, 100))]
        labels += [cls] * 500
        clean += [True] * 400 + [False] * 100
    return np.concatenate(losses), np.array(labels), np.array(clean)


def test_global_gmm_recovers_clean_set() -> None:
    losses, is_clean = bimodal_losses()
    prob = gmm_clean_probability(losses)
    assert isinstance(prob, np.ndarray) and prob.shape == losses.shape
    assert ((prob >= 0) & (prob <= 1)).all()
    precision, recall = precision_recall(clean_mask(prob, 0.5), is_clean)
    assert precision > 0.95 and recall > 0.95
    # Low losses are the clean component: the smallest loss is almost surely clean, the largest not.
    assert prob[np.argmin(losses)] > 0.99 and prob[np.argmax(losses)] < 0.01


def test_normalisation_makes_it_scale_invariant() -> None:
    losses, _ = bimodal_losses(1)
    np.testing.assert_allclose(gmm_clean_probability(losses), gmm_clean_probability(7.0 * losses + 3.0))


def test_per_class_beats_global_on_class_dependent_scales() -> None:
    losses, labels, is_clean = class_scaled_losses()
    global_mask = clean_mask(gmm_clean_probability(losses))
    per_class_mask = clean_mask(per_class_gmm_clean_probability(losses, labels, num_classes=2))
    global_acc = (global_mask == is_clean).mean()
    per_class_acc = (per_class_mask == is_clean).mean()
    precision, recall = precision_recall(per_class_mask, is_clean)
    assert precision > 0.95 and recall > 0.95
    assert per_class_acc > global_acc + 0.2
    # The global split throws away class 1's clean examples wholesale.
    assert global_mask[(labels == 1) & is_clean].mean() < 0.5


def test_seeded_determinism_and_torch_round_trip() -> None:
    losses, labels, _ = class_scaled_losses(3)
    a = per_class_gmm_clean_probability(losses, labels, seed=5)
    b = per_class_gmm_clean_probability(losses, labels, seed=5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        gmm_clean_probability(losses, seed=5), gmm_clean_probability(losses, seed=5)
    )
    t = per_class_gmm_clean_probability(torch.tensor(losses), torch.tensor(labels), seed=5)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), a, atol=1e-6)
    mask = clean_mask(t)
    assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool


def test_degenerate_groups_are_all_clean() -> None:
    assert gmm_clean_probability(np.full(10, 0.3)).tolist() == [1.0] * 10
    losses = np.array([0.1, 0.2, 3.0, 0.1, 0.15, 2.8, 5.0])
    labels = np.array([0, 0, 0, 0, 0, 0, 1])  # class 1 has a single example
    prob = per_class_gmm_clean_probability(losses, labels)
    assert prob[-1] == 1.0
    assert prob[2] < 0.5 and prob[0] > 0.5


def test_clean_mask_is_strict() -> None:
    prob = np.array([0.5, 0.51, 0.49, 1.0, 0.0])
    assert clean_mask(prob, 0.5).tolist() == [False, True, False, True, False]
    with pytest.raises(ValueError):
        clean_mask(prob, 1.5)
    with pytest.raises(ValueError):
        clean_mask(np.ones((2, 2)))


@pytest.mark.parametrize(
    "losses",
    [np.array([0.1, np.nan, 0.3]), np.array([0.1, np.inf]), np.zeros((3, 2)), np.array([])],
)
def test_bad_losses(losses: np.ndarray) -> None:
    with pytest.raises(ValueError):
        gmm_clean_probability(losses)


def test_bad_labels_and_options() -> None:
    losses = np.linspace(0, 1, 6)
    with pytest.raises(ValueError, match="one label per loss"):
        per_class_gmm_clean_probability(losses, np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match="integers"):
        per_class_gmm_clean_probability(losses, np.zeros(6))
    with pytest.raises(ValueError, match="num_classes"):
        per_class_gmm_clean_probability(losses, np.array([0, 1, 2, 0, 1, 2]), num_classes=2)
    with pytest.raises(ValueError):
        per_class_gmm_clean_probability(losses, np.array([0, -1, 0, 0, 0, 0]))
    with pytest.raises(ValueError):
        gmm_clean_probability(losses, max_iter=0)
