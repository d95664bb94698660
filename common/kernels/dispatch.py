"""Public contrastive ops: argument checks, backend choice, and the autograd wrapper around the backends."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from types import ModuleType
from typing import Any

import torch

from common.kernels import chunked, reference
from common.kernels._rowmath import combine_rows
from common.kernels._validation import (
    KernelInputError,
    check_backend,
    check_embeddings,
    check_index,
    check_info_nce_options,
    check_labels,
    check_topk,
    temperature_value,
)

_TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None
# The Triton top-k keeps its running list in registers; larger k goes to the chunked backend.
TRITON_TOPK_MAX_K = 256


def _triton_module(name: str) -> ModuleType:
    """Import a Triton backend module on first use (importing triton is slow and GPU-specific)."""
    return importlib.import_module(f"common.kernels.{name}")


def _resolve_backend(backend: str, query: torch.Tensor, op_limit_ok: bool = True) -> str:
    """'auto' -> 'triton' for CUDA tensors of a supported dtype, else 'chunked'; checks explicit 'triton'."""
    check_backend(backend)
    supported = query.dtype in (torch.float16, torch.bfloat16, torch.float32)
    if backend == "auto":
        return "triton" if (query.is_cuda and _TRITON_AVAILABLE and supported and op_limit_ok) else "chunked"
    if backend == "triton":
        if not _TRITON_AVAILABLE:
            raise KernelInputError(
                "backend='triton' needs the triton package; install it or use backend='auto'"
            )
        if not supported:
            raise KernelInputError(
                f"backend='triton' supports float16/bfloat16/float32, got {query.dtype}; "
                "use backend='chunked'"
            )
        if not query.is_cuda and not _triton_module("triton_info_nce").INTERPRETED:
            raise KernelInputError(
                "backend='triton' needs CUDA tensors; for CPU debugging set TRITON_INTERPRET=1 before "
                "importing triton, or use backend='chunked'"
            )
    return backend


# Tile-size knobs each (op, backend) understands; the others are dropped so one dict works for any backend.
_BLOCK_KEYS = {
    ("info_nce", "chunked"): ("block_rows", "block_cols"),
    ("info_nce", "triton"): ("block_rows", "block_cols", "block_d", "block_d_out"),
    ("topk", "chunked"): ("block_rows", "block_cols"),
    ("topk", "triton"): ("block_rows", "block_cols", "block_d"),
}


def _block_options(op: str, backend: str, options: dict[str, int] | None) -> dict[str, int]:
    """The tile sizes of `options` that `backend` uses, after checking names and values."""
    options = dict(options or {})
    known = {key for keys in _BLOCK_KEYS.values() for key in keys}
    for name, value in options.items():
        if name not in known:
            raise KernelInputError(f"unknown block option {name!r}; use some of {sorted(known)}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise KernelInputError(f"block option {name} must be a positive int, got {value!r}")
        if backend == "triton" and (value < 16 or value & (value - 1)):
            raise KernelInputError(f"Triton block option {name} must be a power of two >= 16, got {value}")
    return {name: value for name, value in options.items() if name in _BLOCK_KEYS.get((op, backend), ())}


def _device_scope(tensor: torch.Tensor) -> contextlib.AbstractContextManager[Any]:
    """Make the tensor's GPU current: Triton launches on the current CUDA device."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def _backend_module(name: str) -> Any:
    return chunked if name == "chunked" else _triton_module("triton_info_nce")


def _rowwise_dot_sum(a: torch.Tensor, b: torch.Tensor, rows_per_chunk: int = 4096) -> torch.Tensor:
    """sum_ij a_ij b_ij in b's dtype, a few thousand rows at a time (no full-size temporary)."""
    total = b.new_zeros(())
    for start in range(0, a.shape[0], rows_per_chunk):
        total += (a[start : start + rows_per_chunk] * b[start : start + rows_per_chunk]).sum()
    return total


class _InfoNCERows(torch.autograd.Function):
    """Per-row query -> key loss; saves O(N) statistics and recomputes tiles in backward."""

    @staticmethod
    def forward(
        ctx: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        temperature: torch.Tensor,
        positive_index: torch.Tensor,
        query_labels: torch.Tensor | None,
        key_labels: torch.Tensor | None,
        inv_temp: float,
        beta: float,
        tau_plus: float,
        backend: str,
        block_options: dict[str, int],
        identity_positive: bool,
    ) -> torch.Tensor:
        impl = _backend_module(backend)
        stats_blocks = dict(block_options)
        stats_blocks.pop("block_d_out", None)  # a backward-only knob
        with _device_scope(query):
            stats = impl.info_nce_row_stats(
                query, key, positive_index, query_labels, key_labels, inv_temp, beta, **stats_blocks
            )
        rows = combine_rows(stats, inv_temp, beta, tau_plus)
        ctx.save_for_backward(
            query,
            key,
            temperature,
            positive_index,
            query_labels,
            key_labels,
            rows.lse_a,
            rows.lse_b,
            rows.neg_coef,
            rows.pos_coef,
            rows.inv_temp_coef,
        )
        ctx.options = (inv_temp, beta, backend, block_options, identity_positive)
        return rows.loss

    @staticmethod
    def backward(ctx: Any, grad_rows: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (
            query,
            key,
            temperature,
            positive_index,
            query_labels,
            key_labels,
            lse_a,
            lse_b,
            neg_coef,
            pos_coef,
            inv_temp_coef,
        ) = ctx.saved_tensors
        inv_temp, beta, backend, block_options, identity_positive = ctx.options
        need_query, need_key, need_temp = ctx.needs_input_grad[:3]
        grad_rows = grad_rows.to(neg_coef.dtype)
        ct = neg_coef.dtype
        # Positive logit s_{i,p_i}: a gather, so its gradient is O(N d) and handled here for every backend,
        # in place on the backends' float32 gradients (a full-size temporary would add N d floats of peak
        # memory); the identity positive (the default) needs no gather at all.
        pos_scale = (inv_temp * pos_coef * grad_rows)[:, None]
        num_q = query.shape[0]  # identity positive: row i's positive is key i (M >= N)

        def negative_grads(want_query: bool, want_key: bool) -> tuple[torch.Tensor | None, ...]:
            with _device_scope(query):
                return _backend_module(backend).info_nce_negative_grads(
                    query,
                    key,
                    positive_index,
                    query_labels,
                    key_labels,
                    inv_temp,
                    beta,
                    lse_a,
                    lse_b,
                    neg_coef * grad_rows,
                    need_query=want_query,
                    need_key=want_key,
                    **block_options,
                )

        def finish_query(grad_query: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
            grad_query = grad_query.to(ct)
            grad_query.addcmul_(key[:num_q] if identity_positive else key[positive_index], pos_scale)
            grad_temp = None
            if need_temp:
                # dloss/d(1/T) = sum_ij dloss/ds_ij <q_i, k_j> = sum_i <q_i, dq_i> / (1/T), + the DCL floor.
                grad_inv = _rowwise_dot_sum(query, grad_query) / inv_temp + (inv_temp_coef * grad_rows).sum()
                grad_temp = (-grad_inv * inv_temp**2).to(temperature.device, temperature.dtype)
                grad_temp = grad_temp.reshape(temperature.shape)
            return (grad_query.to(query.dtype) if need_query else None), grad_temp

        def finish_key(grad_key: torch.Tensor) -> torch.Tensor:
            grad_key = grad_key.to(ct)
            if identity_positive:
                grad_key[:num_q].addcmul_(query, pos_scale)
            else:
                grad_key.index_add_(0, positive_index, query * pos_scale)
            return grad_key.to(key.dtype)

        want_query = need_query or need_temp
        grad_query = grad_key = grad_temp = None
        if not _backend_module(backend).SHARES_TILES_BETWEEN_GRADIENTS:
            # Separate passes anyway: finishing (and casting) one gradient before the next pass runs keeps one
            # float32 N x d buffer alive at a time instead of two.
            if want_query:
                grad_query, grad_temp = finish_query(negative_grads(True, False)[0])
            if need_key:
                grad_key = finish_key(negative_grads(False, True)[1])
        else:  # one pass computes each similarity tile once for both gradients
            raw_query, raw_key = negative_grads(want_query, need_key)
            if raw_query is not None:
                grad_query, grad_temp = finish_query(raw_query)
            if raw_key is not None:
                grad_key = finish_key(raw_key)
        return (grad_query, grad_key, grad_temp, *([None] * 9))


def info_nce(
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
    backend: str = "auto",
    block_options: dict[str, int] | None = None,
) -> torch.Tensor:
    """InfoNCE of query (N, d) against key (M, d) with s_ij = <q_i, k_j> / temperature.

    Row i's positive is key positive_index[i] (default i); its negatives are all other keys, minus keys
    sharing its label when both label tensors are given. hard_negative_beta > 0 reweights negatives as in
    HCL (Robinson et al., 2021); debias_tau_plus > 0 applies the DCL correction (Chuang et al., 2020).
    symmetric=True averages query->key and key->query (CLIP). Rows without negatives have loss 0; "mean"
    divides by N. The loss is float32 for half inputs. Gradients flow to query, key and a tensor
    temperature. backend: "auto" (Triton on CUDA, chunked PyTorch elsewhere), "triton", "chunked" or
    "reference" (materialised, for checks). block_options tunes tiles: block_rows, block_cols (all backends),
    block_d, block_d_out (Triton: feature chunks of the similarity and of the backward output).
    """
    check_embeddings(query, key)
    num_q, num_k = query.shape[0], key.shape[0]
    check_info_nce_options(
        num_q, num_k, positive_index, hard_negative_beta, debias_tau_plus, symmetric, reduction
    )
    check_index("positive_index", positive_index, num_q, num_k, query.device)
    check_labels(query_labels, key_labels, num_q, num_k, query.device)
    inv_temp = 1.0 / temperature_value(temperature)
    backend = _resolve_backend(backend, query)
    if backend == "reference":
        return reference.info_nce_reference(
            query,
            key,
            temperature,
            positive_index=positive_index,
            query_labels=query_labels,
            key_labels=key_labels,
            hard_negative_beta=hard_negative_beta,
            debias_tau_plus=debias_tau_plus,
            symmetric=symmetric,
            reduction=reduction,
        )

    if not isinstance(temperature, torch.Tensor):
        temperature = torch.tensor(float(temperature), dtype=torch.float64)
    arange = torch.arange(num_q, device=query.device)
    identity_positive = positive_index is None
    positive_index = arange if positive_index is None else positive_index.long()
    if query_labels is not None and key_labels is not None:
        query_labels, key_labels = query_labels.long(), key_labels.long()
    blocks = _block_options("info_nce", backend, block_options)
    options = (float(hard_negative_beta), float(debias_tau_plus), backend, blocks)

    rows = _InfoNCERows.apply(
        query,
        key,
        temperature,
        positive_index,
        query_labels,
        key_labels,
        inv_temp,
        *options,
        identity_positive,
    )
    if symmetric:
        backward_rows = _InfoNCERows.apply(
            key, query, temperature, arange, key_labels, query_labels, inv_temp, *options, True
        )
        rows = 0.5 * (rows + backward_rows)
    if reduction == "mean":
        return rows.mean()
    if reduction == "sum":
        return rows.sum()
    return rows


def topk_similar(
    query: torch.Tensor,
    key: torch.Tensor,
    k: int,
    *,
    exclude_index: torch.Tensor | None = None,
    query_labels: torch.Tensor | None = None,
    key_labels: torch.Tensor | None = None,
    backend: str = "auto",
    block_options: dict[str, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest <q_i, k_j> per query row and their key indices, each (N, k), largest first.

    Skips key exclude_index[i] for row i and, when both label tensors are given, keys with row i's label.
    Exact (ties in any order); streams over key tiles. Values have the query's dtype (accumulated in
    float32 or better); no gradient. backend as in info_nce.
    """
    check_embeddings(query, key)
    num_q, num_k = query.shape[0], key.shape[0]
    check_index("exclude_index", exclude_index, num_q, num_k, query.device)
    check_labels(query_labels, key_labels, num_q, num_k, query.device)
    if query_labels is not None and key_labels is not None:
        query_labels, key_labels = query_labels.long(), key_labels.long()
    if exclude_index is not None:
        exclude_index = exclude_index.long()
    check_topk(k, num_k, exclude_index, query_labels, key_labels)
    triton_topk_ok = k <= TRITON_TOPK_MAX_K
    backend = _resolve_backend(backend, query, op_limit_ok=triton_topk_ok)
    blocks = _block_options("topk", backend, block_options)
    with torch.no_grad():
        if backend == "reference":
            return reference.topk_similar_reference(
                query, key, k, exclude_index=exclude_index, query_labels=query_labels, key_labels=key_labels
            )
        if backend == "triton":
            if not triton_topk_ok:
                raise KernelInputError(
                    f"backend='triton' supports k <= {TRITON_TOPK_MAX_K}, got k={k}; use backend='chunked'"
                )
            impl: Any = _triton_module("triton_topk")
        else:
            impl = chunked
        with _device_scope(query):
            values, indices = impl.topk_similar(
                query, key, k, exclude_index, query_labels, key_labels, **blocks
            )
    return values.to(query.dtype), indices
