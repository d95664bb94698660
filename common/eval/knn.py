"""Weighted k-nearest-neighbour classification of frozen features (the InstDisc / SimCLR monitor).

Each test point takes the k training features of highest cosine similarity s and gives each of them the
vote exp(s / temperature) for its label (Wu et al. 2018, Sec. 3.4; the kNN monitor of leftthomas/SimCLR,
chingyaoc/DCL main.py `test` and joshr17/HCL image/main.py `test`, with k = 200 and temperature 0.5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common.kernels import topk_similar


@torch.no_grad()
def knn_class_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    *,
    k: int = 200,
    temperature: float = 0.5,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Summed votes (num_test, num_classes) of each test point's k most cosine-similar training points.

    Features are L2-normalised here; k is capped at the number of training points. Similarities are
    computed in float32 (or float64 for float64 inputs) by the streaming top-k kernel."""
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError(
            f"{train_features.shape[0]} training features but {train_labels.shape[0]} training labels"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = torch.float64 if train_features.dtype == torch.float64 else torch.float32
    bank = F.normalize(train_features.to(dtype), dim=1)
    queries = F.normalize(test_features.to(device=bank.device, dtype=dtype), dim=1)
    labels = train_labels.to(bank.device).long()
    k = min(int(k), bank.shape[0])
    scores = []
    for start in range(0, queries.shape[0], chunk_size):
        sims, idx = topk_similar(queries[start : start + chunk_size], bank, k)
        votes = torch.exp(sims.to(dtype) / temperature)
        chunk = torch.zeros(len(idx), num_classes, dtype=dtype, device=bank.device)
        scores.append(chunk.scatter_add_(1, labels[idx], votes))
    return torch.cat(scores)


@torch.no_grad()
def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    *,
    k: int = 200,
    temperature: float = 0.5,
) -> float:
    """Top-1 accuracy (%) of the weighted kNN vote; a tie goes to the lowest class index."""
    scores = knn_class_scores(
        train_features, train_labels, test_features, num_classes, k=k, temperature=temperature
    )
    predicted = scores.argmax(1).cpu()
    return 100.0 * float((predicted == test_labels.cpu().long()).float().mean())
