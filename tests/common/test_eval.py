"""kNN and linear-probe evaluation of frozen features (common.eval)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from common.eval import (
    extract_features,
    knn_accuracy,
    knn_class_scores,
    logistic_regression_probe,
    train_linear_probe,
)


def test_knn_votes_match_a_hand_computed_case():
    # Bank on the unit circle at 0, 30, 90 and 180 degrees; query at 0 degrees; k = 3, temperature 0.5.
    angles = torch.tensor([0.0, 30.0, 90.0, 180.0]) * math.pi / 180
    bank = torch.stack([torch.cos(angles), torch.sin(angles)], 1) * 3.0  # norms do not matter (cosine)
    labels = torch.tensor([0, 1, 1, 0])
    query = torch.tensor([[2.0, 0.0]])
    scores = knn_class_scores(bank, labels, query, num_classes=2, k=3, temperature=0.5)
    # Neighbours: 0 deg (cos 1, class 0), 30 deg (cos 0.866, class 1), 90 deg (cos 0, class 1).
    expected = torch.tensor([[math.exp(1 / 0.5), math.exp(math.cos(math.pi / 6) / 0.5) + math.exp(0.0)]])
    torch.testing.assert_close(scores, expected.to(scores.dtype), rtol=1e-6, atol=1e-6)
    # Class 0 gets e^2 = 7.39, class 1 gets e^1.73 + 1 = 6.65: a weighted vote, not a majority vote.
    assert knn_accuracy(bank, labels, query, torch.tensor([0]), 2, k=3, temperature=0.5) == 100.0


@pytest.mark.parametrize(("k", "temperature"), [(1, 0.5), (7, 0.07), (25, 0.5)])
def test_knn_matches_sklearn_weighted_cosine_neighbours(k: int, temperature: float):
    """sklearn's KNeighborsClassifier with cosine distance d = 1 - cos and weights exp((1 - d) / T) is the
    same classifier (continuous random features: no ties among neighbours)."""
    gen = torch.Generator().manual_seed(k)
    bank = torch.randn(300, 16, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 5, (300,), generator=gen)
    queries = torch.randn(120, 16, generator=gen, dtype=torch.float64)
    ours = knn_class_scores(bank, labels, queries, 5, k=k, temperature=temperature).argmax(1)
    peer = KNeighborsClassifier(
        n_neighbors=k, metric="cosine", algorithm="brute", weights=lambda d: np.exp((1.0 - d) / temperature)
    ).fit(bank.numpy(), labels.numpy())
    np.testing.assert_array_equal(ours.numpy(), peer.predict(queries.numpy()))


def test_knn_caps_k_at_the_bank_size_and_checks_inputs():
    bank, labels = torch.eye(3), torch.tensor([0, 1, 2])
    scores = knn_class_scores(bank, labels, bank, 3, k=200, temperature=1.0)
    assert scores.shape == (3, 3)
    assert torch.equal(scores.argmax(1), labels)  # its own copy is every point's nearest neighbour
    with pytest.raises(ValueError, match="training labels"):
        knn_class_scores(bank, labels[:2], bank, 3)


def _blobs(separation: float, n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=gen)
    centres = separation * torch.eye(4, 8)
    return centres[labels] + torch.randn(n, 8, generator=gen), labels


@pytest.mark.parametrize("probe", ["logistic", "torch"])
def test_linear_probes_separate_blobs_and_stay_at_chance_on_random_labels(probe: str):
    x_train, y_train = _blobs(6.0, seed=0)
    x_test, y_test = _blobs(6.0, seed=1)

    def fit(train_labels: torch.Tensor) -> float:
        if probe == "logistic":
            return logistic_regression_probe(x_train, train_labels, x_test, y_test)
        return train_linear_probe(
            (x_train, train_labels), x_test, y_test, feature_dim=8, num_classes=4, epochs=50, lr=1e-2
        )

    assert fit(y_train) > 95.0
    shuffled = y_train[torch.randperm(len(y_train), generator=torch.Generator().manual_seed(2))]
    assert fit(shuffled) < 45.0  # chance is 25%


def test_torch_probe_accepts_per_epoch_batches_and_is_seeded():
    x_train, y_train = _blobs(4.0, seed=3)
    x_test, y_test = _blobs(4.0, seed=4)
    epochs_seen = []

    def batches():
        epochs_seen.append(1)
        return [(x_train[i : i + 64], y_train[i : i + 64]) for i in range(0, len(x_train), 64)]

    options = dict(feature_dim=8, num_classes=4, epochs=5, lr=1e-2, seed=7)
    acc = train_linear_probe(batches, x_test, y_test, **options)
    assert len(epochs_seen) == 5 and acc > 80.0
    first = train_linear_probe((x_train, y_train), x_test, y_test, **options)
    assert first == train_linear_probe((x_train, y_train), x_test, y_test, **options)


def test_extract_features_keeps_loader_order_and_labels():
    loader = [
        {"x": torch.arange(6.0).view(3, 2), "y": torch.tensor([0, 1, 2]), "y_clean": torch.tensor([2, 1, 0])},
        {"x": torch.arange(6.0, 8.0).view(1, 2), "y": torch.tensor([3]), "y_clean": torch.tensor([3])},
    ]
    features, labels = extract_features(lambda x: 2 * x, loader, "cpu", label_key="y_clean")
    torch.testing.assert_close(features, 2 * torch.arange(8.0).view(4, 2))
    assert labels.tolist() == [2, 1, 0, 3]
