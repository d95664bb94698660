"""Exact PyTorch backend: query-row blocks x key blocks, never an N x M matrix.

Memory is O(block_rows * block_cols) on top of the inputs and gradients. Half-precision inputs are cast to
float32 block by block; float64 stays float64.
"""

from __future__ import annotations

import torch

from common.kernels._rowmath import RowStats

# Whether one backward pass yields both gradients: yes, each similarity tile feeds both.
SHARES_TILES_BETWEEN_GRADIENTS = True

DEFAULT_BLOCK_ROWS = 512
DEFAULT_BLOCK_COLS = 2048


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _negative_mask(
    rows: slice,
    cols: slice,
    positive_index: torch.Tensor,
    query_labels: torch.Tensor | None,
    key_labels: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(is_positive, is_negative) masks of one tile."""
    col_ids = torch.arange(cols.start, cols.stop, device=positive_index.device)
    is_pos = col_ids[None, :] == positive_index[rows, None]
    is_neg = ~is_pos
    if query_labels is not None and key_labels is not None:
        is_neg &= query_labels[rows, None] != key_labels[None, cols]
    return is_pos, is_neg


def _blocks(total: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, total)) for start in range(0, total, size)]


def info_nce_row_stats(
    query: torch.Tensor,
    key: torch.Tensor,
    positive_index: torch.Tensor,
    query_labels: torch.Tensor | None,
    key_labels: torch.Tensor | None,
    inv_temp: float,
    beta: float,
    *,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    block_cols: int = DEFAULT_BLOCK_COLS,
) -> RowStats:
    """Streaming log-sum-exp statistics of every query row's negatives (see _rowmath)."""
    ct = compute_dtype(query.dtype)
    num_query, num_key = query.shape[0], key.shape[0]
    out = torch.empty(4 if beta > 0 else 3, num_query, dtype=ct, device=query.device)
    neg_inf = torch.tensor(-torch.inf, dtype=ct, device=query.device)
    for rows in _blocks(num_query, block_rows):
        q_block = query[rows].to(ct)
        lse_a_parts, lse_b_parts = [], []
        pos_logit = torch.zeros(q_block.shape[0], dtype=ct, device=query.device)
        count = torch.zeros_like(pos_logit)
        for cols in _blocks(num_key, block_cols):
            logits = (q_block @ key[cols].to(ct).T) * inv_temp
            is_pos, is_neg = _negative_mask(rows, cols, positive_index, query_labels, key_labels)
            pos_logit += torch.where(is_pos, logits, 0.0).sum(1)
            count += is_neg.sum(1)
            lse_a_parts.append(torch.logsumexp(torch.where(is_neg, logits * (1.0 + beta), neg_inf), 1))
            if beta > 0:
                lse_b_parts.append(torch.logsumexp(torch.where(is_neg, logits * beta, neg_inf), 1))
        out[0, rows] = torch.logsumexp(torch.stack(lse_a_parts, 1), 1)
        out[1, rows] = pos_logit
        out[2, rows] = count
        if beta > 0:
            out[3, rows] = torch.logsumexp(torch.stack(lse_b_parts, 1), 1)
    return RowStats(lse_a=out[0], lse_b=out[3] if beta > 0 else None, pos_logit=out[1], num_negatives=out[2])


def info_nce_negative_grads(
    query: torch.Tensor,
    key: torch.Tensor,
    positive_index: torch.Tensor,
    query_labels: torch.Tensor | None,
    key_labels: torch.Tensor | None,
    inv_temp: float,
    beta: float,
    lse_a: torch.Tensor,
    lse_b: torch.Tensor | None,
    neg_coef: torch.Tensor,
    *,
    need_query: bool = True,
    need_key: bool = True,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    block_cols: int = DEFAULT_BLOCK_COLS,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients w.r.t. query and key through the negatives' term log S_i, tiles recomputed.

    With G_ij = neg_coef_i * dlog S_i / ds_ij on negatives: dquery = inv_temp * G @ key,
    dkey = inv_temp * G^T @ query (in the compute dtype).
    """
    ct = compute_dtype(query.dtype)
    grad_query = torch.zeros(query.shape, dtype=ct, device=query.device) if need_query else None
    grad_key = torch.zeros(key.shape, dtype=ct, device=key.device) if need_key else None
    for rows in _blocks(query.shape[0], block_rows):
        q_block = query[rows].to(ct)
        coef = neg_coef[rows, None]
        a = lse_a[rows, None]
        for cols in _blocks(key.shape[0], block_cols):
            k_block = key[cols].to(ct)
            logits = (q_block @ k_block.T) * inv_temp
            _, is_neg = _negative_mask(rows, cols, positive_index, query_labels, key_labels)
            if beta > 0:
                assert lse_b is not None
                dlogs = (1.0 + beta) * torch.exp((1.0 + beta) * logits - a) - beta * torch.exp(
                    beta * logits - lse_b[rows, None]
                )
            else:
                dlogs = torch.exp(logits - a)
            tile_grad = torch.where(is_neg, coef * dlogs, 0.0)
            if grad_query is not None:
                grad_query[rows] += tile_grad @ k_block
            if grad_key is not None:
                grad_key[cols] += tile_grad.T @ q_block
    if grad_query is not None:
        grad_query *= inv_temp
    if grad_key is not None:
        grad_key *= inv_temp
    return grad_query, grad_key


def topk_similar(
    query: torch.Tensor,
    key: torch.Tensor,
    k: int,
    exclude_index: torch.Tensor | None,
    query_labels: torch.Tensor | None,
    key_labels: torch.Tensor | None,
    *,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    block_cols: int = DEFAULT_BLOCK_COLS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Streaming top-k of <q_i, k_j> over key blocks; values in the compute dtype, indices int64."""
    ct = compute_dtype(query.dtype)
    num_query = query.shape[0]
    values = torch.empty(num_query, k, dtype=ct, device=query.device)
    indices = torch.empty(num_query, k, dtype=torch.long, device=query.device)
    for rows in _blocks(num_query, block_rows):
        q_block = query[rows].to(ct)
        best_val = torch.full((q_block.shape[0], 0), -torch.inf, dtype=ct, device=query.device)
        best_idx = torch.empty((q_block.shape[0], 0), dtype=torch.long, device=query.device)
        for cols in _blocks(key.shape[0], block_cols):
            sims = q_block @ key[cols].to(ct).T
            col_ids = torch.arange(cols.start, cols.stop, device=query.device)
            keep = torch.ones_like(sims, dtype=torch.bool)
            if exclude_index is not None:
                keep &= col_ids[None, :] != exclude_index[rows, None]
            if query_labels is not None and key_labels is not None:
                keep &= query_labels[rows, None] != key_labels[None, cols]
            cand_val = torch.cat([best_val, torch.where(keep, sims, -torch.inf)], 1)
            cand_idx = torch.cat([best_idx, col_ids.expand(sims.shape[0], -1)], 1)
            best_val, slot = torch.topk(cand_val, min(k, cand_val.shape[1]), dim=1)
            best_idx = torch.gather(cand_idx, 1, slot)
        values[rows], indices[rows] = best_val, best_idx
    return values, indices
