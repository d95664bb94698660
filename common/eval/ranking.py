"""Top-k ranking metrics for a whole score matrix at once (recommendation and retrieval).

``scores`` is ``(Q, I)`` (queries or users by items or documents), ``relevance`` the same shape with graded
(>= 0) or binary relevance. Each row ranks its *candidate* items: all items by default, or those where
``candidates`` is True (e.g. a user's MCAR test items), never those where ``exclude`` is True (e.g. the
items seen in training), and only items with ``item_subset`` True when given (e.g. rare items).

Definitions (those of torchmetrics' retrieval metrics, which the tests check cell by cell):
  * DCG@k = sum_{r<=k} rel_r / log2(r + 1) (gain = relevance, not 2^rel - 1); nDCG@k = DCG@k / ideal DCG@k;
  * precision@k = hits@k / k; recall@k = hits@k / (number of relevant candidates);
  * AP@k = mean over the hits in the top k of the precision at that hit's rank (0 without a hit);
  * F1@k = harmonic mean of precision@k and recall@k of the row.
A row with no relevant candidate is skipped (``empty="skip"``) or scores 0 (``empty="zero"``); the
returned values are means over the rows kept, in [0, 1] (DCG is unbounded).
"""

from __future__ import annotations

from typing import Literal

import torch

METRICS = ("dcg", "ndcg", "precision", "recall", "map", "f1")

__all__ = ["METRICS", "ranking_metrics"]


def ranking_metrics(
    scores: torch.Tensor,
    relevance: torch.Tensor,
    k: int | list[int],
    *,
    candidates: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
    item_subset: torch.Tensor | None = None,
    metrics: tuple[str, ...] = METRICS,
    empty: Literal["skip", "zero"] = "skip",
    reduction: Literal["mean", "none"] = "mean",
) -> dict[str, float | torch.Tensor]:
    """``{"ndcg@10": value, ...}`` for every metric and every k (per row with ``reduction="none"``)."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    relevance = torch.as_tensor(relevance, dtype=torch.float64)
    if scores.ndim != 2 or relevance.shape != scores.shape:
        raise ValueError(
            f"scores and relevance must both be (queries, items); got {tuple(scores.shape)} and "
            f"{tuple(relevance.shape)}."
        )
    if (relevance < 0).any():
        raise ValueError("relevance must be >= 0 (0 = not relevant).")
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown ranking metrics {sorted(unknown)}; choose from {METRICS}.")
    if empty not in ("skip", "zero") or reduction not in ("mean", "none"):
        raise ValueError("empty must be 'skip' or 'zero' and reduction 'mean' or 'none'.")
    ks = [k] if isinstance(k, int) else list(k)
    if not ks or any(int(x) < 1 for x in ks):
        raise ValueError(f"k must be a positive integer or a list of them, got {k}.")

    allowed = torch.ones_like(scores, dtype=torch.bool)
    for name, mask in (("candidates", candidates), ("exclude", exclude)):
        if mask is not None and torch.as_tensor(mask).shape != scores.shape:
            raise ValueError(f"{name} must have the shape of scores {tuple(scores.shape)}.")
    if candidates is not None:
        allowed &= torch.as_tensor(candidates, dtype=torch.bool)
    if exclude is not None:
        allowed &= ~torch.as_tensor(exclude, dtype=torch.bool)
    if item_subset is not None:
        subset = torch.as_tensor(item_subset, dtype=torch.bool)
        if subset.shape != scores.shape[1:]:
            raise ValueError(f"item_subset must be a boolean vector over the {scores.shape[1]} items.")
        allowed &= subset.unsqueeze(0)

    gains = torch.where(allowed, relevance, torch.zeros_like(relevance))
    masked = torch.where(allowed, scores, torch.full_like(scores, -torch.inf))
    num_relevant = (gains > 0).sum(1).to(torch.float64)
    keep = num_relevant > 0 if empty == "skip" else torch.ones_like(num_relevant, dtype=torch.bool)
    width = min(max(ks), scores.shape[1])
    order = masked.topk(width, dim=1, sorted=True).indices
    ranked = gains.gather(1, order)
    # Ranked slots beyond a row's candidates hold -inf scores; they must not count as hits.
    ranked = torch.where(masked.gather(1, order).isfinite(), ranked, torch.zeros_like(ranked))
    ideal = gains.topk(width, dim=1, sorted=True).values
    discount = 1.0 / torch.log2(torch.arange(2, width + 2, dtype=torch.float64))
    hit = (ranked > 0).to(torch.float64)
    cum_hits = hit.cumsum(1)
    ranks = torch.arange(1, width + 1, dtype=torch.float64)

    out: dict[str, float | torch.Tensor] = {}
    for kk in ks:
        n = min(int(kk), width)
        dcg = (ranked[:, :n] * discount[:n]).sum(1)
        idcg = (ideal[:, :n] * discount[:n]).sum(1)
        hits = cum_hits[:, n - 1]
        precision = hits / int(kk)
        recall = torch.where(num_relevant > 0, hits / num_relevant.clamp_min(1), torch.zeros_like(hits))
        ap = (hit[:, :n] * cum_hits[:, :n] / ranks[:n]).sum(1) / hits.clamp_min(1)
        values = {
            "dcg": dcg,
            "ndcg": torch.where(idcg > 0, dcg / idcg.clamp_min(1e-300), torch.zeros_like(dcg)),
            "precision": precision,
            "recall": recall,
            "map": ap,
            "f1": torch.where(
                precision + recall > 0,
                2 * precision * recall / (precision + recall).clamp_min(1e-300),
                torch.zeros_like(precision),
            ),
        }
        for name in metrics:
            per_row = values[name][keep]
            if reduction == "none":
                out[f"{name}@{kk}"] = per_row
            else:
                out[f"{name}@{kk}"] = float(per_row.mean()) if per_row.numel() else float("nan")
    return out
