"""Frequency-proportional label noise on a long-tailed training set (RCAL's Assumption 3.1 (3)).

Kept here until `common.data.corruptions` has it (papers/rcal/README.md, "Needed shared change")."""

from __future__ import annotations

import math

import numpy as np

NOISE_TYPE = "frequency_proportional"


def inject_frequency_proportional_noise(
    labels: np.ndarray, noise_rate: float, num_classes: int, *, seed: int
) -> np.ndarray:
    """Exactly ``round(noise_rate * n)`` uniformly chosen examples get a label ``j != y`` drawn with
    probability proportional to the class size ``n_j`` of ``labels`` (frequent classes receive most flips).

    This is the `noise_mode='imb'` protocol of RoLT (Wei et al. 2021, Stomach-ache/RoLT@145f45b
    data/imbalance_cifar.py `get_noisy_data`), which RCAL (Zhang et al. ICCV 2023) assumes in its analysis:
    P(y~ = j | y = k) proportional to n_j for j != k. Rounding is half up, as in common.data.corruptions;
    the input is not modified and the output is deterministic given ``seed``."""
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {y.shape} and dtype {y.dtype}.")
    if int(num_classes) < 2 or (y.size and (y.min() < 0 or y.max() >= num_classes)):
        raise ValueError(f"labels must lie in [0, {num_classes}) with num_classes >= 2.")
    rate = float(noise_rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"noise_rate must lie in [0, 1), got {noise_rate}.")
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    rng = np.random.default_rng(seed)
    noisy = y.copy()
    m = int(math.floor(rate * y.size + 0.5 + 1e-9))
    flipped = rng.choice(y.size, size=m, replace=False)
    for k in np.unique(y[flipped]):
        members = flipped[y[flipped] == k]
        weights = counts.copy()
        weights[k] = 0.0
        if weights.sum() == 0:  # a single populated class has nowhere to flip to
            continue
        noisy[members] = rng.choice(num_classes, size=members.size, p=weights / weights.sum())
    return noisy
