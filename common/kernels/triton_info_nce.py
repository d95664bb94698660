"""Triton kernels of the fused InfoNCE family: streaming row statistics forward, recomputed tiles backward.

Forward: one program per block of query rows walks all key tiles with an online log-sum-exp (two of them
for hard-negative reweighting). Backward: one program per (query block, feature chunk) for dquery and per
(key block, feature chunk) for dkey, each recomputing the similarity tiles, so neither pass needs atomics or
an N x M buffer. The O(N) algebra around the statistics lives in _rowmath and is shared with the chunked path.

Import this module after setting TRITON_INTERPRET=1 to run the kernels on CPU tensors (slow; for tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton import knobs

from common.kernels._rowmath import RowStats

# Whether one backward pass yields both gradients: no, dquery and dkey are separate kernels.
SHARES_TILES_BETWEEN_GRADIENTS = False

# Triton decides at decoration time whether a kernel is compiled or interpreted.
INTERPRETED: bool = bool(knobs.runtime.interpret)
_NEG_INIT = tl.constexpr(-1.0e30)  # finite start of a running max, so exp(m_old - m_new) is never nan


def dot_precision(dtype: torch.dtype) -> str:
    """Follow torch's TF32 switch for float32 inputs, so both backends agree by default (exact ieee)."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def grad_dot(dtype: torch.dtype) -> tuple[tl.dtype, str]:
    """Operand dtype and precision of the backward products (tile gradient x embeddings).

    bfloat16 keeps its dtype (float32's exponent range). float16 is widened to float32 in TF32 mode, which
    has float16's mantissa but not its range: per-entry gradients (~ 1 / (N M)) underflow float16.
    """
    if dtype == torch.bfloat16:
        return tl.bfloat16, "ieee"
    if dtype == torch.float16:
        return tl.float32, "tf32"
    return tl.float32, dot_precision(dtype)


def interpreter_upcast(dtype: torch.dtype) -> bool:
    """The Triton interpreter multiplies bfloat16 tiles as raw uint16; upcast them there (exact)."""
    return INTERPRETED and dtype == torch.bfloat16


@triton.jit
def _mma(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b with float32 accumulation."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def similarity_tile(
    a_ptr,
    b_ptr,
    a_rows,
    b_rows,
    num_a,
    num_b,
    dim,
    stride_a,
    stride_ad,
    stride_b,
    stride_bd,
    BLOCK_A: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """(BLOCK_A, BLOCK_B) float32 tile of <a_r, b_c>, accumulated over feature chunks."""
    acc = tl.zeros((BLOCK_A, BLOCK_B), dtype=tl.float32)
    a_off = a_rows.to(tl.int64)[:, None] * stride_a
    b_off = b_rows.to(tl.int64)[:, None] * stride_b
    a_ok = (a_rows < num_a)[:, None]
    b_ok = (b_rows < num_b)[:, None]
    for d0 in range(0, dim, BLOCK_D):
        feats = d0 + tl.arange(0, BLOCK_D)
        f_ok = (feats < dim)[None, :]
        a = tl.load(a_ptr + a_off + feats[None, :] * stride_ad, mask=a_ok & f_ok, other=0.0)
        b = tl.load(b_ptr + b_off + feats[None, :] * stride_bd, mask=b_ok & f_ok, other=0.0)
        acc = _mma(a, tl.trans(b), acc, PRECISION, UPCAST)
    return acc


@triton.jit
def _dlogs_tile(logits, lse_a, lse_b, beta, HARD: tl.constexpr):
    """dlog S_i / ds_ij for every entry (the caller masks non-negatives); lse_* broadcast to the tile."""
    if HARD:
        return (1.0 + beta) * tl.exp((1.0 + beta) * logits - lse_a) - beta * tl.exp(beta * logits - lse_b)
    else:
        return tl.exp(logits - lse_a)


@triton.jit
def _row_stats_kernel(
    q_ptr,
    k_ptr,
    pos_ptr,
    qlab_ptr,
    klab_ptr,
    out_ptr,
    num_q,
    num_k,
    dim,
    stride_q,
    stride_qd,
    stride_k,
    stride_kd,
    inv_temp,
    beta,
    HAS_LABELS: tl.constexpr,
    HARD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < num_q
    pos = tl.load(pos_ptr + rows, mask=row_ok, other=-1)
    if HAS_LABELS:
        qlab = tl.load(qlab_ptr + rows, mask=row_ok, other=0)
    max_a = tl.full((BLOCK_N,), _NEG_INIT, tl.float32)
    sum_a = tl.zeros((BLOCK_N,), tl.float32)
    max_b = tl.full((BLOCK_N,), _NEG_INIT, tl.float32)
    sum_b = tl.zeros((BLOCK_N,), tl.float32)
    pos_logit = tl.zeros((BLOCK_N,), tl.float32)
    count = tl.zeros((BLOCK_N,), tl.float32)
    for c0 in range(0, num_k, BLOCK_M):
        cols = c0 + tl.arange(0, BLOCK_M)
        logits = (
            similarity_tile(
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
            * inv_temp
        )
        is_pos = cols[None, :] == pos[:, None]
        pos_logit += tl.sum(tl.where(is_pos, logits, 0.0), axis=1)
        neg = (cols < num_k)[None, :] & (~is_pos)
        if HAS_LABELS:
            klab = tl.load(klab_ptr + cols, mask=cols < num_k, other=0)
            neg = neg & (klab[None, :] != qlab[:, None])
        count += tl.sum(neg.to(tl.float32), axis=1)
        x = tl.where(neg, logits * (1.0 + beta), float("-inf"))
        new_max = tl.maximum(max_a, tl.max(x, axis=1))
        sum_a = sum_a * tl.exp(max_a - new_max) + tl.sum(tl.exp(x - new_max[:, None]), axis=1)
        max_a = new_max
        if HARD:
            x = tl.where(neg, logits * beta, float("-inf"))
            new_max = tl.maximum(max_b, tl.max(x, axis=1))
            sum_b = sum_b * tl.exp(max_b - new_max) + tl.sum(tl.exp(x - new_max[:, None]), axis=1)
            max_b = new_max
    # Layout of out: [lse_a, pos_logit, count, lse_b] x num_q; log(0) = -inf marks rows without negatives.
    tl.store(out_ptr + rows, max_a + tl.log(sum_a), mask=row_ok)
    tl.store(out_ptr + num_q + rows, pos_logit, mask=row_ok)
    tl.store(out_ptr + 2 * num_q + rows, count, mask=row_ok)
    if HARD:
        tl.store(out_ptr + 3 * num_q + rows, max_b + tl.log(sum_b), mask=row_ok)


@triton.jit
def _grad_query_kernel(
    q_ptr,
    k_ptr,
    pos_ptr,
    qlab_ptr,
    klab_ptr,
    lse_a_ptr,
    lse_b_ptr,
    coef_ptr,
    dq_ptr,
    num_q,
    num_k,
    dim,
    stride_q,
    stride_qd,
    stride_k,
    stride_kd,
    inv_temp,
    beta,
    HAS_LABELS: tl.constexpr,
    HARD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DO: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    GRAD_DTYPE: tl.constexpr,
    GRAD_PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    feats = tl.program_id(1) * BLOCK_DO + tl.arange(0, BLOCK_DO)
    row_ok = rows < num_q
    pos = tl.load(pos_ptr + rows, mask=row_ok, other=-1)
    coef = tl.load(coef_ptr + rows, mask=row_ok, other=0.0)[:, None]
    lse_a = tl.load(lse_a_ptr + rows, mask=row_ok, other=0.0)[:, None]
    lse_b = lse_a
    if HARD:
        lse_b = tl.load(lse_b_ptr + rows, mask=row_ok, other=0.0)[:, None]
    if HAS_LABELS:
        qlab = tl.load(qlab_ptr + rows, mask=row_ok, other=0)
    acc = tl.zeros((BLOCK_N, BLOCK_DO), dtype=tl.float32)
    for c0 in range(0, num_k, BLOCK_M):
        cols = c0 + tl.arange(0, BLOCK_M)
        col_ok = cols < num_k
        logits = (
            similarity_tile(
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
            * inv_temp
        )
        neg = col_ok[None, :] & (cols[None, :] != pos[:, None])
        if HAS_LABELS:
            klab = tl.load(klab_ptr + cols, mask=col_ok, other=0)
            neg = neg & (klab[None, :] != qlab[:, None])
        grad = tl.where(neg, coef * _dlogs_tile(logits, lse_a, lse_b, beta, HARD), 0.0)
        k_tile = tl.load(
            k_ptr + cols.to(tl.int64)[:, None] * stride_k + feats[None, :] * stride_kd,
            mask=col_ok[:, None] & (feats < dim)[None, :],
            other=0.0,
        )
        acc = _mma(grad.to(GRAD_DTYPE), k_tile.to(GRAD_DTYPE), acc, GRAD_PRECISION, UPCAST)
    out = dq_ptr + rows.to(tl.int64)[:, None] * dim + feats[None, :]
    tl.store(out, acc * inv_temp, mask=row_ok[:, None] & (feats < dim)[None, :])


@triton.jit
def _grad_key_kernel(
    q_ptr,
    k_ptr,
    pos_ptr,
    qlab_ptr,
    klab_ptr,
    lse_a_ptr,
    lse_b_ptr,
    coef_ptr,
    dk_ptr,
    num_q,
    num_k,
    dim,
    stride_q,
    stride_qd,
    stride_k,
    stride_kd,
    inv_temp,
    beta,
    HAS_LABELS: tl.constexpr,
    HARD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DO: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    GRAD_DTYPE: tl.constexpr,
    GRAD_PRECISION: tl.constexpr,
):
    # Tiles here are transposed: keys along axis 0, queries along axis 1.
    cols = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    feats = tl.program_id(1) * BLOCK_DO + tl.arange(0, BLOCK_DO)
    col_ok = cols < num_k
    if HAS_LABELS:
        klab = tl.load(klab_ptr + cols, mask=col_ok, other=0)
    acc = tl.zeros((BLOCK_M, BLOCK_DO), dtype=tl.float32)
    for r0 in range(0, num_q, BLOCK_N):
        rows = r0 + tl.arange(0, BLOCK_N)
        row_ok = rows < num_q
        pos = tl.load(pos_ptr + rows, mask=row_ok, other=-1)
        coef = tl.load(coef_ptr + rows, mask=row_ok, other=0.0)[None, :]
        lse_a = tl.load(lse_a_ptr + rows, mask=row_ok, other=0.0)[None, :]
        lse_b = lse_a
        if HARD:
            lse_b = tl.load(lse_b_ptr + rows, mask=row_ok, other=0.0)[None, :]
        logits = (
            similarity_tile(
                k_ptr,
                q_ptr,
                cols,
                rows,
                num_k,
                num_q,
                dim,
                stride_k,
                stride_kd,
                stride_q,
                stride_qd,
                BLOCK_M,
                BLOCK_N,
                BLOCK_D,
                PRECISION,
                UPCAST,
            )
            * inv_temp
        )
        neg = col_ok[:, None] & row_ok[None, :] & (cols[:, None] != pos[None, :])
        if HAS_LABELS:
            qlab = tl.load(qlab_ptr + rows, mask=row_ok, other=0)
            neg = neg & (klab[:, None] != qlab[None, :])
        grad = tl.where(neg, coef * _dlogs_tile(logits, lse_a, lse_b, beta, HARD), 0.0)
        q_tile = tl.load(
            q_ptr + rows.to(tl.int64)[:, None] * stride_q + feats[None, :] * stride_qd,
            mask=row_ok[:, None] & (feats < dim)[None, :],
            other=0.0,
        )
        acc = _mma(grad.to(GRAD_DTYPE), q_tile.to(GRAD_DTYPE), acc, GRAD_PRECISION, UPCAST)
    out = dk_ptr + cols.to(tl.int64)[:, None] * dim + feats[None, :]
    tl.store(out, acc * inv_temp, mask=col_ok[:, None] & (feats < dim)[None, :])


def stats_num_warps(block_rows: int, block_cols: int) -> int:
    """Warps of the forward kernel. From 64 x 64 tiles on, 4 warps need over 255 registers per thread on
    sm_90 and spill with HCL + labels (cuobjdump of the compiled kernel); 8 warps do not."""
    return 8 if block_rows * block_cols >= 64 * 64 else 4


def grads_num_warps(block_d_out: int) -> int:
    """Warps of the backward kernels: a (rows x block_d_out) float32 accumulator per program."""
    return 8 if block_d_out >= 128 else 4


def feature_block(dim: int, block_d: int | None, largest: int = 64) -> int:
    """Feature chunk: a power of two in [16, largest] (tl.dot needs >= 16)."""
    if block_d is not None:
        return block_d
    return max(16, min(largest, triton.next_power_of_2(dim)))


def _labels_or_dummy(
    query_labels: torch.Tensor | None, key_labels: torch.Tensor | None, positive_index: torch.Tensor
) -> tuple[bool, torch.Tensor, torch.Tensor]:
    if query_labels is None or key_labels is None:
        return False, positive_index, positive_index  # never read (HAS_LABELS is False)
    return True, query_labels.contiguous(), key_labels.contiguous()


def info_nce_row_stats(
    query: torch.Tensor,
    key: torch.Tensor,
    positive_index: torch.Tensor,
    query_labels: torch.Tensor | None,
    key_labels: torch.Tensor | None,
    inv_temp: float,
    beta: float,
    *,
    block_rows: int = 64,
    block_cols: int = 64,
    block_d: int | None = None,
) -> RowStats:
    """Triton twin of chunked.info_nce_row_stats (float32 statistics)."""
    num_q, dim = query.shape
    num_k = key.shape[0]
    hard = beta > 0
    out = torch.empty(4 if hard else 3, num_q, dtype=torch.float32, device=query.device)
    has_labels, qlab, klab = _labels_or_dummy(query_labels, key_labels, positive_index)
    grid = (triton.cdiv(num_q, block_rows),)
    _row_stats_kernel[grid](
        query,
        key,
        positive_index.contiguous(),
        qlab,
        klab,
        out,
        num_q,
        num_k,
        dim,
        query.stride(0),
        query.stride(1),
        key.stride(0),
        key.stride(1),
        float(inv_temp),
        float(beta),
        HAS_LABELS=has_labels,
        HARD=hard,
        BLOCK_N=block_rows,
        BLOCK_M=block_cols,
        BLOCK_D=feature_block(dim, block_d),
        PRECISION=dot_precision(query.dtype),
        UPCAST=interpreter_upcast(query.dtype),
        num_warps=stats_num_warps(block_rows, block_cols),
    )
    return RowStats(lse_a=out[0], lse_b=out[3] if hard else None, pos_logit=out[1], num_negatives=out[2])


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
    block_rows: int = 64,
    block_cols: int = 64,
    block_d: int | None = None,
    block_d_out: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Triton twin of chunked.info_nce_negative_grads (float32 gradients).

    A program owns block_d_out gradient features of its rows and recomputes the full similarity tiles, so
    the tile work grows with dim / block_d_out; the default covers dim <= 256 in one pass.
    """
    num_q, dim = query.shape
    num_k = key.shape[0]
    hard = beta > 0
    bd_out = feature_block(dim, block_d_out, largest=256)
    grad_dtype, grad_precision = grad_dot(query.dtype)
    has_labels, qlab, klab = _labels_or_dummy(query_labels, key_labels, positive_index)
    lse_a = lse_a.float().contiguous()
    lse_b = lse_b.float().contiguous() if lse_b is not None else lse_a
    neg_coef = neg_coef.float().contiguous()
    common_args = (
        query,
        key,
        positive_index.contiguous(),
        qlab,
        klab,
        lse_a,
        lse_b,
        neg_coef,
    )
    sizes = (num_q, num_k, dim, query.stride(0), query.stride(1), key.stride(0), key.stride(1))
    meta = dict(
        HAS_LABELS=has_labels,
        HARD=hard,
        BLOCK_N=block_rows,
        BLOCK_M=block_cols,
        BLOCK_D=feature_block(dim, block_d),
        BLOCK_DO=bd_out,
        PRECISION=dot_precision(query.dtype),
        UPCAST=interpreter_upcast(query.dtype),
        GRAD_DTYPE=grad_dtype,
        GRAD_PRECISION=grad_precision,
        num_warps=grads_num_warps(bd_out),
    )
    grad_query = grad_key = None
    if need_query:
        grad_query = torch.empty(num_q, dim, dtype=torch.float32, device=query.device)
        grid = (triton.cdiv(num_q, block_rows), triton.cdiv(dim, bd_out))
        _grad_query_kernel[grid](*common_args, grad_query, *sizes, float(inv_temp), float(beta), **meta)
    if need_key:
        grad_key = torch.empty(num_k, dim, dtype=torch.float32, device=key.device)
        grid = (triton.cdiv(num_k, block_cols), triton.cdiv(dim, bd_out))
        _grad_key_kernel[grid](*common_args, grad_key, *sizes, float(inv_temp), float(beta), **meta)
    return grad_query, grad_key
