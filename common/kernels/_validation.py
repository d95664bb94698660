"""Input checks shared by every backend of the contrastive kernels."""

from __future__ import annotations

import math
import numbers
import os

import torch

from common.errors import NonFiniteLossError, UserError

BACKENDS = ("auto", "triton", "chunked", "reference")
REDUCTIONS = ("mean", "sum", "none")


class KernelInputError(UserError, ValueError):
    """Bad arguments to a kernel op; the message says what to pass instead."""


class NonFiniteInputError(NonFiniteLossError, KernelInputError):
    """A kernel input holds NaN or inf: a diverged model, usually. In a run it is recorded as a failed run
    (non-finite loss); a caller of the op gets a KernelInputError naming the tensor."""


#: Inputs are checked for NaN/inf on the CPU always; on an accelerator only with PNU_CHECK_FINITE=1, since
#: the check reads a flag back to the host (a synchronisation per call).
CHECK_FINITE_ON_ACCELERATOR = os.environ.get("PNU_CHECK_FINITE", "0") == "1"


def check_finite(**tensors: torch.Tensor | None) -> None:
    """Raise NonFiniteInputError naming the first tensor that holds NaN or inf (see CHECK_FINITE_ON_...)."""
    for name, x in tensors.items():
        if x is None or not x.is_floating_point():
            continue
        if x.device.type != "cpu" and not CHECK_FINITE_ON_ACCELERATOR:
            continue
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteInputError(
                f"{name} holds NaN or inf values (shape {tuple(x.shape)}); the model producing it diverged: "
                "lower the learning rate or clip gradients"
            )


def check_backend(backend: str) -> None:
    """Raise unless `backend` is one of BACKENDS."""
    if backend not in BACKENDS:
        raise KernelInputError(f"unknown backend {backend!r}; use one of {BACKENDS}")


def check_embeddings(query: torch.Tensor, key: torch.Tensor) -> None:
    """Query (N, d) and key (M, d): floating, same dtype, same device, same width, non-empty."""
    for name, x in (("query", query), ("key", key)):
        if not isinstance(x, torch.Tensor) or x.dim() != 2:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise KernelInputError(f"{name} must be a 2-D tensor (rows, dim), got {shape}")
        if not x.is_floating_point():
            raise KernelInputError(f"{name} must be a floating tensor, got {x.dtype}; cast it with .float()")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise KernelInputError(
                f"{name} is empty (shape {tuple(x.shape)}); pass at least one row and column"
            )
    if query.shape[1] != key.shape[1]:
        raise KernelInputError(
            f"query and key widths differ: query {tuple(query.shape)}, key {tuple(key.shape)}; "
            "project both to the same embedding dimension"
        )
    if query.dtype != key.dtype:
        raise KernelInputError(f"query is {query.dtype} but key is {key.dtype}; cast both to the same dtype")
    if query.device != key.device:
        raise KernelInputError(
            f"query is on {query.device} but key is on {key.device}; move both to one device"
        )
    check_finite(query=query, key=key)


def check_index(name: str, index: torch.Tensor | None, rows: int, bound: int, device: torch.device) -> None:
    """An optional integer tensor of shape (rows,) with values in [0, bound)."""
    if index is None:
        return
    if not isinstance(index, torch.Tensor) or index.shape != (rows,):
        shape = tuple(index.shape) if isinstance(index, torch.Tensor) else type(index).__name__
        raise KernelInputError(
            f"{name} must be a tensor of shape ({rows},) (one key per query row), got {shape}"
        )
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise KernelInputError(f"{name} must hold integer key indices, got {index.dtype}; use .long()")
    if index.device != device:
        raise KernelInputError(f"{name} is on {index.device} but query is on {device}; move it")
    low, high = int(index.min()), int(index.max())
    if low < 0 or high >= bound:
        raise KernelInputError(
            f"{name} holds values in [{low}, {high}] but key has {bound} rows; "
            f"every value must be in [0, {bound})"
        )


def check_labels(
    query_labels: torch.Tensor | None,
    key_labels: torch.Tensor | None,
    num_query: int,
    num_key: int,
    device: torch.device,
) -> None:
    """Both label tensors or neither; integer, shapes (N,) and (M,), on the query's device."""
    if (query_labels is None) != (key_labels is None):
        raise KernelInputError(
            "pass both query_labels and key_labels (or neither); "
            "masking needs the label of every query and key"
        )
    if query_labels is None or key_labels is None:
        return
    for name, labels, rows in (
        ("query_labels", query_labels, num_query),
        ("key_labels", key_labels, num_key),
    ):
        if not isinstance(labels, torch.Tensor) or labels.shape != (rows,):
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise KernelInputError(f"{name} must be a tensor of shape ({rows},), got {shape}")
        if labels.dtype.is_floating_point or labels.dtype.is_complex:
            raise KernelInputError(f"{name} must be integer class ids, got {labels.dtype}; use .long()")
        if labels.device != device:
            raise KernelInputError(f"{name} is on {labels.device} but query is on {device}; move it")


def temperature_value(temperature: float | torch.Tensor) -> float:
    """The temperature as a Python float, after checking it is one finite positive number."""
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1:
            raise KernelInputError(
                f"temperature must be a float or a 0-dim tensor, got shape {tuple(temperature.shape)}"
            )
        value = float(temperature.detach().reshape(()).item())
    elif isinstance(temperature, numbers.Real) and not isinstance(temperature, bool):
        value = float(temperature)
    else:
        raise KernelInputError(
            f"temperature must be a float or a 0-dim tensor, got {type(temperature).__name__} {temperature!r}"
        )
    if not math.isfinite(value) or value <= 0.0:
        raise KernelInputError(
            f"temperature must be finite and > 0, got {value}; check the learnable temperature "
            "(clamp it, or parametrise it in log space)"
        )
    return value


def check_info_nce_options(
    num_query: int,
    num_key: int,
    positive_index: torch.Tensor | None,
    hard_negative_beta: float,
    debias_tau_plus: float,
    symmetric: bool,
    reduction: str,
) -> None:
    """Scalar options of info_nce and the shape rules they impose."""
    if reduction not in REDUCTIONS:
        raise KernelInputError(f"unknown reduction {reduction!r}; use one of {REDUCTIONS}")
    if not (math.isfinite(hard_negative_beta) and hard_negative_beta >= 0.0):
        raise KernelInputError(f"hard_negative_beta must be finite and >= 0, got {hard_negative_beta}")
    if not (math.isfinite(debias_tau_plus) and 0.0 <= debias_tau_plus < 1.0):
        raise KernelInputError(
            f"debias_tau_plus is a class prior and must be in [0, 1), got {debias_tau_plus}"
        )
    if symmetric:
        if positive_index is not None:
            raise KernelInputError(
                "symmetric=True pairs query i with key i both ways; "
                "drop positive_index (or use symmetric=False)"
            )
        if num_query != num_key:
            raise KernelInputError(
                f"symmetric=True needs as many keys as queries, got N={num_query}, M={num_key}; "
                "pass paired rows or use symmetric=False"
            )
    elif positive_index is None and num_query > num_key:
        raise KernelInputError(
            f"query has {num_query} rows but key only {num_key}: the default positive of row i is key i; "
            "pass positive_index or more keys"
        )


def check_topk(
    k: int,
    num_key: int,
    exclude_index: torch.Tensor | None,
    query_labels: torch.Tensor | None,
    key_labels: torch.Tensor | None,
) -> None:
    """Raise unless every query row has at least k keys left after exclusions."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise KernelInputError(f"k must be a positive int, got {k!r}")
    if query_labels is not None and key_labels is not None:
        # Per-row count of same-label keys, from key label frequencies (no N x M mask).
        uniq, counts = torch.unique(key_labels, return_counts=True)
        slot = torch.searchsorted(uniq, query_labels).clamp_max(uniq.numel() - 1)
        excluded = torch.where(uniq[slot] == query_labels, counts[slot], 0)
        if exclude_index is not None:
            excluded = excluded + (key_labels[exclude_index] != query_labels).long()
        available = num_key - excluded
        row = int(torch.argmin(available))
        fewest = int(available[row])
    else:
        row, fewest = 0, num_key - (1 if exclude_index is not None else 0)
    if k > fewest:
        raise KernelInputError(
            f"k={k} but query row {row} has only {fewest} keys left after exclusions (of {num_key}); "
            "lower k or pass more keys"
        )
