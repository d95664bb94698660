"""Compatibility evaluation of Biondi et al. (CVPR 2024): 1:N search accuracy, the compatibility matrix,
AC and AM.

Following the official code (miccunifi/iamcl2r @ 18495ac):
  performance_metrics.py `identification` (lines 60-84): gallery features are averaged per class into one
      L2-normalised template; each L2-normalised query goes to the template of largest inner product; the
      score is top-1 accuracy (the official mAP at top-1);
  eval.py lines 21-74: entry M[i][j] (i >= j) queries with model i against the gallery of model j, so the
      diagonal is each model's self-test;
  compatibility_metrics.py `average_compatibility` (lines 4-21): AC is the fraction of the T(T-1)/2 pairs
      i > j with M[i][j] > M[j][j] (the empirical compatibility criterion: the new model searching the old
      gallery beats the old model's self-test);
  compatibility_metrics.py `average_accuracy` (lines 24-38): AM is the mean, in %, of the lower triangle of
      M (diagonal included); entries that are exactly 0 count as missing (the upper triangle is stored as 0).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def class_templates(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One L2-normalised mean feature per class of the gallery, and the class of each template."""
    classes = torch.unique(labels)
    normalised = F.normalize(features.float(), dim=1)
    sums = torch.zeros(len(classes), features.shape[1], dtype=normalised.dtype, device=features.device)
    sums.index_add_(0, torch.searchsorted(classes, labels), normalised)
    return F.normalize(sums, dim=1), classes


def identification_accuracy(
    templates: torch.Tensor,
    template_classes: torch.Tensor,
    query_features: torch.Tensor,
    query_labels: torch.Tensor,
) -> float:
    """Top-1 accuracy of assigning each query to the template of largest inner product (fraction)."""
    if len(query_labels) == 0:
        raise ValueError("identification needs at least one query")
    queries = F.normalize(query_features.float(), dim=1)
    nearest = (queries @ templates.to(queries).T).argmax(dim=1)
    return float((template_classes.to(query_labels.device)[nearest] == query_labels).float().mean())


def average_compatibility(matrix: np.ndarray) -> float:
    """AC: share of pairs i > j whose cross test M[i][j] beats the old model's self-test M[j][j]."""
    matrix = np.asarray(matrix, dtype=float)
    steps = matrix.shape[0]
    # As the official code: count the pairs that violate the criterion (M[i][j] <= M[j][j]) and subtract
    # them from the number of pairs, taken as 1 for a single model (which so has AC = 1).
    pairs = max(steps * (steps - 1) / 2, 1)
    violations = sum(matrix[i, j] <= matrix[j, j] for j in range(steps) for i in range(j + 1, steps))
    return float((pairs - violations) / pairs)


def average_multimodel_accuracy(matrix: np.ndarray, per_task: bool = False) -> float | list[float]:
    """AM (%) of a compatibility matrix of accuracies in [0, 1]: the mean of its lower triangle;
    `per_task` gives AM up to each task (the matrix's leading sub-blocks)."""
    matrix = 100.0 * np.asarray(matrix, dtype=float)
    lower = np.where(np.tril(np.ones_like(matrix, dtype=bool)) & (matrix != 0), matrix, np.nan)
    values = [float(np.nanmean(lower[: t + 1, : t + 1])) for t in range(matrix.shape[0])]
    return values if per_task else values[-1]
