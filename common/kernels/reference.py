"""Plain, materialised PyTorch versions of the kernel ops: ground truth for tests and benchmarks.

They build the full N x M similarity matrix and rely on autograd; use them only on small inputs.
Arguments are assumed valid (the public functions in common.kernels check them).
"""

from __future__ import annotations

import torch


def _negative_mask(
    num_query: int,
    num_key: int,
    positive_index: torch.Tensor,
    query_labels: torch.Tensor | None,
    key_labels: torch.Tensor | None,
) -> torch.Tensor:
    cols = torch.arange(num_key, device=positive_index.device)
    negative = cols[None, :] != positive_index[:, None]
    if query_labels is not None and key_labels is not None:
        negative &= query_labels[:, None] != key_labels[None, :]
    return negative


def info_nce_rows_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    temperature: float | torch.Tensor,
    positive_index: torch.Tensor | None = None,
    query_labels: torch.Tensor | None = None,
    key_labels: torch.Tensor | None = None,
    hard_negative_beta: float = 0.0,
    debias_tau_plus: float = 0.0,
) -> torch.Tensor:
    """Per-row InfoNCE / HCL / DCL loss of query -> key, written straight from the formulas."""
    num_query, num_key = query.shape[0], key.shape[0]
    if positive_index is None:
        positive_index = torch.arange(num_query, device=query.device)
    logits = query @ key.T / temperature
    negative = _negative_mask(num_query, num_key, positive_index, query_labels, key_labels)
    n = negative.sum(1).to(logits.dtype)
    has_neg = n > 0
    # Shift each row by its (constant) max so exp cannot overflow; every term below scales by exp(-shift).
    shift = logits.max(1, keepdim=True).values.detach()
    shifted = logits - shift
    pos = torch.exp(shifted.gather(1, positive_index[:, None])).squeeze(1)
    exp_neg = torch.where(negative, torch.exp(shifted), 0.0)
    beta = hard_negative_beta
    importance = torch.where(negative, torch.exp(beta * shifted), 0.0)
    mean_importance = importance.sum(1, keepdim=True) / torch.where(has_neg, n, 1.0)[:, None]
    weights = importance / torch.where(has_neg[:, None], mean_importance, 1.0)
    neg_sum = (weights * exp_neg).sum(1)
    tau = debias_tau_plus
    if tau > 0:
        floor = n * torch.exp(-1.0 / temperature - shift.squeeze(1))
        neg_sum = torch.maximum((neg_sum - tau * n * pos) / (1.0 - tau), floor)
    loss = torch.log(pos + neg_sum) - torch.log(pos)
    return torch.where(has_neg, loss, torch.zeros_like(loss))


def info_nce_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    temperature: float | torch.Tensor = 0.07,
    *,
    positive_index: torch.Tensor | None = None,
    query_labels: torch.Tensor | None = None,
    key_labels: torch.Tensor | None = None,
    hard_negative_beta: float = 0.0,
    debias_tau_plus: float = 0.0,
    symmetric: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """Materialised version of common.kernels.info_nce (same arguments and semantics)."""
    options = dict(hard_negative_beta=hard_negative_beta, debias_tau_plus=debias_tau_plus)
    rows = info_nce_rows_reference(
        query, key, temperature, positive_index, query_labels, key_labels, **options
    )
    if symmetric:
        backward = info_nce_rows_reference(key, query, temperature, None, key_labels, query_labels, **options)
        rows = 0.5 * (rows + backward)
    if reduction == "mean":
        return rows.mean()
    if reduction == "sum":
        return rows.sum()
    return rows


def topk_similar_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    k: int,
    *,
    exclude_index: torch.Tensor | None = None,
    query_labels: torch.Tensor | None = None,
    key_labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk on the full masked similarity matrix."""
    sims = query @ key.T
    cols = torch.arange(key.shape[0], device=key.device)
    keep = torch.ones_like(sims, dtype=torch.bool)
    if exclude_index is not None:
        keep &= cols[None, :] != exclude_index[:, None]
    if query_labels is not None and key_labels is not None:
        keep &= query_labels[:, None] != key_labels[None, :]
    return torch.topk(torch.where(keep, sims, -torch.inf), k, dim=1)
