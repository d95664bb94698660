"""Linear probes on frozen features: scikit-learn logistic regression (small feature sets) and a torch linear
head trained with Adam (paper scale; optionally re-encoding augmented inputs every epoch)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def extract_features(
    encode: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable[dict[str, torch.Tensor]],
    device: torch.device | str,
    *,
    input_key: str = "x",
    label_key: str = "y",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of every batch of `loader` (in loader order) and their labels; the caller sets eval mode."""
    features, labels = [], []
    for batch in loader:
        features.append(encode(batch[input_key].to(device, non_blocking=True)).float())
        labels.append(batch[label_key].to(device, non_blocking=True).long())
    return torch.cat(features), torch.cat(labels)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in %."""
    return 100.0 * float((logits.argmax(1) == labels.to(logits.device)).float().mean())


def logistic_regression_probe(
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_features: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
    *,
    C: float = 1.0,
    max_iter: int = 1000,
) -> float:
    """Test accuracy (%) of multinomial logistic regression (L-BFGS, L2 strength 1/C) on standardised
    features; the scaler is fitted on the training features only."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, y_train, x_test, y_test = (
        _numpy(a) for a in (train_features, train_labels, test_features, test_labels)
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    model.fit(x_train.astype(np.float64), y_train)
    return 100.0 * float(np.mean(model.predict(x_test.astype(np.float64)) == y_test))


def train_linear_probe(
    train: tuple[torch.Tensor, torch.Tensor] | Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    feature_dim: int,
    num_classes: int,
    epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 1e-6,
    batch_size: int = 512,
    seed: int = 0,
) -> float:
    """Test accuracy (%) of a linear head trained with Adam and cross entropy on frozen features.

    `train` is either (features, labels), shuffled into batches every epoch, or a function returning an
    iterable of (features, labels) batches for one epoch (e.g. a frozen encoder applied to freshly
    augmented inputs). The head is evaluated once, after the last epoch."""
    device = test_features.device
    generator = torch.Generator().manual_seed(int(seed))
    head = nn.Linear(feature_dim, num_classes)
    bound = 1.0 / feature_dim**0.5  # nn.Linear's default init, drawn from our own generator
    with torch.no_grad():
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.uniform_(-bound, bound, generator=generator)
    head = head.to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(int(epochs)):
        for features, labels in _epoch_batches(train, batch_size, generator):
            loss = F.cross_entropy(head(features.to(device).float()), labels.to(device).long())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return accuracy(head(test_features.float()), test_labels)


def _epoch_batches(
    train: Any, batch_size: int, generator: torch.Generator
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    if callable(train):
        return train()
    features, labels = train
    order = torch.randperm(len(features), generator=generator).to(features.device)
    return ((features[idx], labels[idx]) for idx in order.split(batch_size))


def _numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
