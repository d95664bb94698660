"""Triton kernel for streaming top-k similar keys per query row.

Each similarity is packed with its key index into one int64 whose integer order is the float order, so
one sort moves values and indices together. A program keeps the running top K_PAD (sorted descending) of its
query rows; per key tile it takes the tile's top K_PAD, and the elementwise max of the running list and the
reversed tile list holds the top K_PAD of their union (a bitonic merge step), which one sort reorders.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from common.kernels.triton_info_nce import (
    dot_precision,
    feature_block,
    interpreter_upcast,
    similarity_tile,
)


@triton.jit
def _pack(values, indices):
    """int64 whose signed order is the float order of `values`; `indices` (>= 0) in the low 32 bits."""
    bits = values.to(tl.int32, bitcast=True)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (key.to(tl.int64) << 32) | indices.to(tl.int64)


@triton.jit
def _unpack(packed):
    key = (packed >> 32).to(tl.int32)
    bits = key ^ ((key >> 31) & 0x7FFFFFFF)
    return bits.to(tl.float32, bitcast=True), (packed & 0x7FFFFFFF).to(tl.int32)


@triton.jit
def _topk_kernel(
    q_ptr,
    k_ptr,
    excl_ptr,
    qlab_ptr,
    klab_ptr,
    val_ptr,
    idx_ptr,
    num_q,
    num_k,
    dim,
    k,
    stride_q,
    stride_qd,
    stride_k,
    stride_kd,
    HAS_EXCLUDE: tl.constexpr,
    HAS_LABELS: tl.constexpr,
    K_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < num_q
    if HAS_EXCLUDE:
        excl = tl.load(excl_ptr + rows, mask=row_ok, other=-1)
    if HAS_LABELS:
        qlab = tl.load(qlab_ptr + rows, mask=row_ok, other=0)
    # Start from packed (-inf, index 0); validation guarantees k real candidates beat it.
    best = _pack(tl.full((BLOCK_N, K_PAD), float("-inf"), tl.float32), tl.zeros((BLOCK_N, K_PAD), tl.int32))
    for c0 in range(0, num_k, BLOCK_M):
        cols = c0 + tl.arange(0, BLOCK_M)
        sims = similarity_tile(
            q_ptr,
            k_ptr,
            rows,
            cols,
            num_q,
            num_k,
            dim,
            stride_q,
            stride_qd,
            stride_k,
            stride_kd,
            BLOCK_N,
            BLOCK_M,
            BLOCK_D,
            PRECISION,
            UPCAST,
        )
        keep = (cols < num_k)[None, :] & row_ok[:, None]
        if HAS_EXCLUDE:
            keep = keep & (cols[None, :] != excl[:, None])
        if HAS_LABELS:
            klab = tl.load(klab_ptr + cols, mask=cols < num_k, other=0)
            keep = keep & (klab[None, :] != qlab[:, None])
        sims = tl.where(keep, sims, float("-inf"))
        packed = _pack(sims, tl.broadcast_to(cols[None, :], (BLOCK_N, BLOCK_M)))
        tile_best = tl.topk(packed, K_PAD, dim=1)
        best = tl.sort(tl.maximum(best, tl.flip(tile_best, 1)), dim=1, descending=True)
    values, indices = _unpack(best)
    slots = tl.arange(0, K_PAD)
    offsets = rows.to(tl.int64)[:, None] * k + slots[None, :]
    out_ok = row_ok[:, None] & (slots < k)[None, :]
    tl.store(val_ptr + offsets, values, mask=out_ok)
    tl.store(idx_ptr + offsets, indices, mask=out_ok)


def topk_launch(k_pad: int) -> dict[str, int]:
    """Warps and pipeline stages by the running list's width. Wide lists (K_PAD >= 128) spill with 4 warps on
    sm_90 (cuobjdump of the compiled kernel), and their wide key tiles leave shared memory for 2 stages."""
    return {"num_warps": 8, "num_stages": 2} if k_pad >= 128 else {"num_warps": 4, "num_stages": 3}


def topk_rows(k_pad: int) -> int:
    """Query rows per program: the running list (rows x K_PAD int64) lives in registers."""
    return 32 if k_pad <= 64 else 16


def topk_similar(
    query: torch.Tensor,
    key: torch.Tensor,
    k: int,
    exclude_index: torch.Tensor | None,
    query_labels: torch.Tensor | None,
    key_labels: torch.Tensor | None,
    *,
    block_rows: int | None = None,
    block_cols: int = 64,
    block_d: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of chunked.topk_similar (float32 values, int64 indices); dispatch caps k."""
    num_q, dim = query.shape
    num_k = key.shape[0]
    k_pad = max(16, triton.next_power_of_2(k))
    block_cols = max(block_cols, k_pad)  # the tile must hold at least K_PAD candidates
    block_rows = block_rows or topk_rows(k_pad)
    values = torch.empty(num_q, k, dtype=torch.float32, device=query.device)
    indices = torch.empty(num_q, k, dtype=torch.int32, device=query.device)
    dummy = values  # placeholder pointer for absent optional inputs (never read)
    excl = exclude_index.contiguous() if exclude_index is not None else dummy
    has_labels = query_labels is not None and key_labels is not None
    qlab = query_labels.contiguous() if has_labels else dummy
    klab = key_labels.contiguous() if has_labels else dummy
    grid = (triton.cdiv(num_q, block_rows),)
    _topk_kernel[grid](
        query,
        key,
        excl,
        qlab,
        klab,
        values,
        indices,
        num_q,
        num_k,
        dim,
        k,
        query.stride(0),
        query.stride(1),
        key.stride(0),
        key.stride(1),
        HAS_EXCLUDE=exclude_index is not None,
        HAS_LABELS=has_labels,
        K_PAD=k_pad,
        BLOCK_N=block_rows,
        BLOCK_M=block_cols,
        BLOCK_D=feature_block(dim, block_d),
        PRECISION=dot_precision(query.dtype),
        UPCAST=interpreter_upcast(query.dtype),
        **topk_launch(k_pad),
    )
    return values, indices.long()
