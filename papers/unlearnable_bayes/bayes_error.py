"""Differentiable Bayes-error estimates and the exact Bayes error of two Gaussian classes.

The paper's estimator (official `bayeslap`, cat-claws/bayes-error-local-averaging @52d5901, used by
cat-claws/unlearnable @1dc455c cifar10-retrain.py) is local averaging of the posterior: every example's class
posterior is the RBF-kernel-weighted label average of the *other* examples,
    p(c | x_i) = sum_{j != i, y_j = c} k(x_i, x_j) / sum_{j != i} k(x_i, x_j), k = exp(-|x_i - x_j|^2/2s^2),
and BE_hat = mean_i (1 - max_c p(c | x_i)). The soft-label kNN posterior (the k nearest other examples,
uniform weights) is the other estimator of the mini estimator check."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def kernel_posterior(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    sigma: float,
    chunk_size: int = 2048,
) -> torch.Tensor:
    """Leave-one-out RBF local-averaging posteriors `(N, K)` of `features (N, D)`; differentiable in
    `features`. Rows are computed in chunks (the (chunk, N) kernel is the largest tensor)."""
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    flat = features.flatten(1)
    onehot = F.one_hot(labels.long(), num_classes).to(flat.dtype)
    rows = []
    for start in range(0, len(flat), chunk_size):
        block = flat[start : start + chunk_size]
        # log-kernel, so that far-apart points give exact zeros and the normaliser never underflows to 0/0.
        logits = -torch.cdist(block, flat).pow(2) / (2 * sigma**2)
        own = torch.arange(start, start + len(block), device=flat.device)
        logits[torch.arange(len(block), device=flat.device), own] = -torch.inf  # leave one out
        weights = torch.softmax(logits, dim=1)
        rows.append(weights @ onehot)
    return torch.cat(rows)


def knn_posterior(features: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int) -> torch.Tensor:
    """Soft labels of the `k` nearest other examples (uniform weights), `(N, K)`; not differentiable."""
    flat = features.flatten(1)
    dist = torch.cdist(flat, flat)
    dist.fill_diagonal_(torch.inf)
    neighbours = dist.topk(k, dim=1, largest=False).indices
    return F.one_hot(labels.long()[neighbours], num_classes).float().mean(1)


def bayes_error_from_posteriors(posteriors: torch.Tensor) -> torch.Tensor:
    """Plug-in Bayes error E_x[1 - max_c p(c | x)] of per-example posteriors `(N, K)`."""
    return (1 - posteriors.max(dim=1).values).mean()


def kernel_bayes_error(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, sigma: float, chunk_size: int = 2048
) -> torch.Tensor:
    """BE_hat of the official local-averaging estimator (a scalar tensor, differentiable in `features`)."""
    return bayes_error_from_posteriors(kernel_posterior(features, labels, num_classes, sigma, chunk_size))


def max_abs_normalise(features: torch.Tensor) -> torch.Tensor:
    """Features divided by their largest absolute entry (the official scaling before the RBF kernel); the
    scale is treated as a constant."""
    return features / (features.detach().abs().max() + 1e-8)


def two_gaussians_bayes_error(distance: float) -> float:
    """Exact Bayes error of two equiprobable Gaussians N(+-m, I), |2m| = `distance`: Phi(-distance / 2)."""
    return 0.5 * math.erfc(distance / (2 * math.sqrt(2)))


def two_gaussians_distance(bayes_error: float) -> float:
    """The mean distance whose two-Gaussian Bayes error is `bayes_error` (inverse of the above)."""
    if not 0 < bayes_error < 0.5:
        raise ValueError(f"a two-class Bayes error lies in (0, 0.5), got {bayes_error}")
    # Phi^{-1}(1 - b) by bisection on erfc (no scipy needed); 200 halvings reach float precision.
    low, high = 0.0, 40.0
    for _ in range(200):
        mid = (low + high) / 2
        if two_gaussians_bayes_error(mid) > bayes_error:
            low = mid
        else:
            high = mid
    return (low + high) / 2
