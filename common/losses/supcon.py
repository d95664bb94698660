"""Supervised contrastive loss (Khosla et al., NeurIPS 2020, Eq. 2, the L^sup_out variant)."""

from __future__ import annotations

import torch

from common.registry import register_loss

REDUCTIONS = ("mean", "sum", "none")


@register_loss("supcon")
def supcon_loss(
    query: torch.Tensor,
    key: torch.Tensor,
    query_labels: torch.Tensor,
    key_labels: torch.Tensor,
    temperature: float = 0.1,
    *,
    self_index: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """SupCon of query rows (N, d) against key rows (M, d), similarities <q_i, k_j> / temperature.

    For anchor i, A(i) is every key but key self_index[i] (the anchor itself, when queries are also keys)
    and P(i) the keys of A(i) with the anchor's label:
        loss_i = -1/|P(i)| sum_{p in P(i)} log( exp(s_ip) / sum_{a in A(i)} exp(s_ia) ).
    Pass L2-normalised embeddings. Anchors without a positive have loss 0 and are left out of "mean".
    No base-temperature rescaling (the official code multiplies by temperature / 0.07). Half inputs are
    computed in float32.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; use one of {REDUCTIONS}")
    if query.shape[1] != key.shape[1]:
        raise ValueError(f"query and key widths differ: {tuple(query.shape)} vs {tuple(key.shape)}")
    if query_labels.shape != (query.shape[0],) or key_labels.shape != (key.shape[0],):
        raise ValueError("query_labels and key_labels need one label per row of query and key")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    logits = (query.to(dtype) @ key.to(dtype).T) / temperature
    positive = query_labels[:, None] == key_labels[None, :]
    if self_index is not None:
        is_self = torch.arange(key.shape[0], device=key.device)[None, :] == self_index[:, None]
        positive &= ~is_self
        logits = logits.masked_fill(is_self, -torch.inf)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    num_positive = positive.sum(1)
    # where() rather than a product: the anchor's own column holds -inf.
    summed = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(1)
    rows = -summed / num_positive.clamp_min(1)
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / (num_positive > 0).sum().clamp_min(1)
