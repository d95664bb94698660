"""Shared helpers of the kernel tests: seeded inputs, autograd runs of info_nce, tolerant comparisons."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from common.kernels import info_nce
from common.kernels.reference import info_nce_reference

SMALL_BLOCKS = {"block_rows": 16, "block_cols": 24}  # not divisors of the test shapes: ragged tiles


def make_embeddings(
    num_query: int, num_key: int, dim: int, seed: int, noise: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm float64 query/key rows; key i is a noisy copy of query i so positives score high."""
    gen = torch.Generator().manual_seed(seed)
    query = F.normalize(torch.randn(num_query, dim, generator=gen, dtype=torch.float64), dim=1)
    key = F.normalize(torch.randn(num_key, dim, generator=gen, dtype=torch.float64), dim=1)
    paired = min(num_query, num_key)
    key[:paired] = F.normalize(query[:paired] + noise * key[:paired], dim=1)
    return query, key


def make_case(
    num_query: int,
    num_key: int,
    dim: int,
    seed: int,
    *,
    positive_index: bool = False,
    num_classes: int | None = None,
    hard_negative_beta: float = 0.0,
    debias_tau_plus: float = 0.0,
    symmetric: bool = False,
    reduction: str = "mean",
    temperature: float = 0.1,
) -> dict[str, Any]:
    """Inputs and keyword arguments of one info_nce call, plus row weights for reduction='none'."""
    query, key = make_embeddings(num_query, num_key, dim, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    kwargs: dict[str, Any] = {
        "hard_negative_beta": hard_negative_beta,
        "debias_tau_plus": debias_tau_plus,
        "symmetric": symmetric,
        "reduction": reduction,
    }
    if positive_index:
        kwargs["positive_index"] = torch.randint(0, num_key, (num_query,), generator=gen)
    if num_classes is not None:
        kwargs["query_labels"] = torch.randint(0, num_classes, (num_query,), generator=gen)
        kwargs["key_labels"] = torch.randint(0, num_classes, (num_key,), generator=gen)
    return {
        "query": query,
        "key": key,
        "temperature": torch.tensor(temperature, dtype=torch.float64),
        "kwargs": kwargs,
        "row_weights": torch.rand(num_query, generator=gen, dtype=torch.float64),
    }


def run_info_nce(
    case: dict[str, Any], dtype: torch.dtype, backend: str, block_options: dict[str, int] | None = None
) -> dict[str, torch.Tensor]:
    """Loss and gradients w.r.t. query, key and temperature of one case, inputs cast to dtype.

    backend "materialised" runs reference.info_nce_reference directly.
    """
    query = case["query"].to(dtype).requires_grad_()
    key = case["key"].to(dtype).requires_grad_()
    temp_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    temperature = case["temperature"].to(temp_dtype).requires_grad_()
    if backend == "materialised":
        loss = info_nce_reference(query, key, temperature, **case["kwargs"])
    else:
        loss = info_nce(
            query, key, temperature, backend=backend, block_options=block_options, **case["kwargs"]
        )
    # reduction="none": weight rows unequally so the per-row upstream gradient is exercised.
    total = (loss * case["row_weights"].to(loss.dtype)).sum() if loss.dim() else loss
    total.backward()
    return {"loss": loss.detach(), "query": query.grad, "key": key.grad, "temperature": temperature.grad}


def reference_result(case: dict[str, Any], input_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Float64 materialised ground truth on the inputs as rounded to input_dtype."""
    rounded = dict(case)
    rounded["query"] = case["query"].to(input_dtype).double()
    rounded["key"] = case["key"].to(input_dtype).double()
    if input_dtype != torch.float64:
        rounded["temperature"] = case["temperature"].float().double()
    return run_info_nce(rounded, torch.float64, "materialised")


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str) -> None:
    """Elementwise |actual - expected| <= rel * (|expected| + max|expected|), computed in float64."""
    actual, expected = actual.detach().double(), expected.detach().double()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    scale = expected.abs().max().clamp_min(1e-30)
    err = (actual - expected).abs() / (expected.abs() + scale)
    assert float(err.max()) <= rel, f"{what}: relative error {float(err.max()):.3g} > {rel:g}"


def assert_results_close(
    actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], loss_rel: float, grad_rel: float
) -> None:
    """Loss and all three gradients agree within the given relative tolerances."""
    assert_close_rel(actual["loss"], expected["loss"], loss_rel, "loss")
    for name in ("query", "key", "temperature"):
        assert actual[name] is not None, f"no gradient for {name}"
        assert_close_rel(actual[name], expected[name], grad_rel, f"d loss / d {name}")


def masked_topk(
    query: torch.Tensor,
    key: torch.Tensor,
    k: int,
    exclude_index: torch.Tensor | None = None,
    query_labels: torch.Tensor | None = None,
    key_labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Peer: torch.topk over the materialised similarity matrix with excluded keys set to -inf."""
    sims = query.double() @ key.double().T
    if exclude_index is not None:
        sims[torch.arange(query.shape[0]), exclude_index] = -torch.inf
    if query_labels is not None:
        sims[query_labels[:, None] == key_labels[None, :]] = -torch.inf
    return torch.topk(sims, k, dim=1)


def check_topk(
    values: torch.Tensor,
    indices: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    k: int,
    exclude_index: torch.Tensor | None = None,
    query_labels: torch.Tensor | None = None,
    key_labels: torch.Tensor | None = None,
    rtol: float = 1e-6,
) -> None:
    """Values match the peer's (ties may pick other keys) and every index is allowed and scores its value."""
    ref_values, _ = masked_topk(query, key, k, exclude_index, query_labels, key_labels)
    assert values.shape == indices.shape == (query.shape[0], k)
    assert indices.dtype == torch.long
    torch.testing.assert_close(values.double(), ref_values, rtol=rtol, atol=rtol)
    rescored = (query.double()[:, None, :] * key.double()[indices]).sum(-1)
    torch.testing.assert_close(rescored, values.double(), rtol=rtol, atol=rtol)
    assert (indices.sort(1).values.diff(dim=1) > 0).all(), "an index repeats within a row"
    if exclude_index is not None:
        assert (indices != exclude_index[:, None]).all()
    if query_labels is not None:
        assert (key_labels[indices] != query_labels[:, None]).all()
