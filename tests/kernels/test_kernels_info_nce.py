"""info_nce, chunked PyTorch backend: loss and gradients against the materialised float64 reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from common.kernels import info_nce
from common.kernels.reference import info_nce_reference
from tests.kernels.kernels_testlib import (
    SMALL_BLOCKS,
    assert_close_rel,
    assert_results_close,
    make_case,
    make_embeddings,
    reference_result,
    run_info_nce,
)

# name -> (num_query, num_key, make_case options)
OPTION_SETS = {
    "plain": (37, 53, {}),
    "positive_index": (29, 45, {"positive_index": True}),
    "more_queries_than_keys": (45, 29, {"positive_index": True}),
    "labels": (37, 53, {"num_classes": 3}),
    "hcl": (37, 53, {"hard_negative_beta": 1.0}),
    "dcl": (37, 53, {"debias_tau_plus": 0.1}),
    "hcl_dcl_labels_index": (
        29,
        45,
        {"positive_index": True, "num_classes": 4, "hard_negative_beta": 0.5, "debias_tau_plus": 0.05},
    ),
    "symmetric": (41, 41, {"symmetric": True}),
    "symmetric_hcl_dcl_labels": (
        41,
        41,
        {"symmetric": True, "num_classes": 4, "hard_negative_beta": 0.5, "debias_tau_plus": 0.05},
    ),
}
TOLERANCES = {torch.float64: (1e-10, 1e-9), torch.float32: (1e-5, 1e-5)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("dim", [16, 64, 130])
@pytest.mark.parametrize("option_set", list(OPTION_SETS))
def test_chunked_matches_reference(option_set: str, dim: int, dtype: torch.dtype) -> None:
    num_query, num_key, options = OPTION_SETS[option_set]
    case = make_case(num_query, num_key, dim, seed=dim, **options)
    actual = run_info_nce(case, dtype, "chunked", SMALL_BLOCKS)
    assert actual["loss"].dtype == dtype
    assert_results_close(actual, reference_result(case, dtype), *TOLERANCES[dtype])


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions(reduction: str, symmetric: bool) -> None:
    case = make_case(
        33, 33, 16, seed=3, num_classes=5, hard_negative_beta=0.3, symmetric=symmetric, reduction=reduction
    )
    actual = run_info_nce(case, torch.float32, "chunked", SMALL_BLOCKS)
    assert actual["loss"].shape == ((33,) if reduction == "none" else ())
    assert_results_close(actual, reference_result(case, torch.float32), 1e-5, 1e-5)


def test_symmetric_none_is_rowwise_average_of_both_directions() -> None:
    query, key = make_embeddings(20, 20, 16, seed=4)
    both = info_nce(query, key, 0.1, symmetric=True, reduction="none")
    forward = info_nce(query, key, 0.1, reduction="none")
    backward = info_nce(key, query, 0.1, reduction="none")
    torch.testing.assert_close(both, 0.5 * (forward + backward))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("option_set", ["plain", "hcl_dcl_labels_index", "symmetric"])
def test_chunked_half_precision(option_set: str, dtype: torch.dtype) -> None:
    num_query, num_key, options = OPTION_SETS[option_set]
    case = make_case(num_query, num_key, 64, seed=5, **options)
    actual = run_info_nce(case, dtype, "chunked", SMALL_BLOCKS)
    assert actual["loss"].dtype == torch.float32  # accumulated and returned in float32
    assert actual["query"].dtype == dtype
    # Inputs are exact in the reference; only float32 accumulation and the dtype of the gradients differ.
    assert_results_close(actual, reference_result(case, dtype), 1e-4, 1e-2)


def test_rows_without_negatives_have_zero_loss_and_gradient() -> None:
    query, key = make_embeddings(6, 6, 16, seed=6)
    key_labels = torch.zeros(6, dtype=torch.long)
    query_labels = torch.tensor([0, 1, 0, 1, 0, 1])  # label-0 rows: every other key shares their label
    q = query.clone().requires_grad_()
    rows = info_nce(q, key, 0.1, query_labels=query_labels, key_labels=key_labels, reduction="none")
    assert torch.equal(rows[query_labels == 0], torch.zeros(3, dtype=torch.float64))
    assert (rows[query_labels == 1] > 0).all()
    rows.sum().backward()
    assert torch.equal(q.grad[query_labels == 0], torch.zeros(3, 16, dtype=torch.float64))
    case = {
        "query": query,
        "key": key,
        "temperature": torch.tensor(0.1, dtype=torch.float64),
        "kwargs": {
            "query_labels": query_labels,
            "key_labels": key_labels,
            "hard_negative_beta": 0.5,
            "debias_tau_plus": 0.1,
        },
        "row_weights": torch.ones(6, dtype=torch.float64),
    }
    assert_results_close(
        run_info_nce(case, torch.float32, "chunked", SMALL_BLOCKS),
        reference_result(case, torch.float32),
        1e-5,
        1e-5,
    )


@pytest.mark.parametrize("num_rows", [1, 4])
def test_no_negatives_at_all_gives_zero_not_nan(num_rows: int) -> None:
    query, key = make_embeddings(num_rows, num_rows, 16, seed=7)
    q = query.clone().requires_grad_()
    temperature = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    labels = torch.zeros(num_rows, dtype=torch.long)
    loss = info_nce(
        q,
        key,
        temperature,
        query_labels=labels,
        key_labels=labels,
        hard_negative_beta=1.0,
        debias_tau_plus=0.1,
    )
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.equal(q.grad, torch.zeros_like(q)) and float(temperature.grad) == 0.0


def test_dcl_both_branches_of_the_floor() -> None:
    temperature, tau_plus = 0.5, 0.2
    case = make_case(40, 40, 16, seed=0, debias_tau_plus=tau_plus, temperature=temperature)
    case["query"], case["key"] = make_embeddings(40, 40, 16, seed=0, noise=0.8)
    # Check the setting exercises both sides of max(debiased, floor) (else the test proves less).
    logits = case["query"] @ case["key"].T / temperature
    pos = logits.diag().exp()
    neg_sum = logits.exp().sum(1) - pos
    debiased = (neg_sum - tau_plus * 39 * pos) / (1 - tau_plus)
    floored = debiased < 39 * math.exp(-1 / temperature)
    assert 0 < int(floored.sum()) < 40
    assert_results_close(
        run_info_nce(case, torch.float32, "chunked", SMALL_BLOCKS),
        reference_result(case, torch.float32),
        1e-5,
        1e-5,
    )


def test_large_inverse_temperature_is_stable() -> None:
    """1/temperature = 1000 overflows exp() in any precision; log space must not. Truth: cross entropy."""
    query, key = make_embeddings(30, 50, 16, seed=8)
    labels_q, labels_k = torch.arange(30) % 4, torch.arange(50) % 4
    q = query.clone().requires_grad_()
    ref_q = query.clone().requires_grad_()
    loss = info_nce(q.float(), key.float(), 1e-3, query_labels=labels_q, key_labels=labels_k)
    loss.backward()
    logits = ref_q @ key.T / 1e-3
    keep = (labels_q[:, None] != labels_k[None, :]) | torch.eye(30, 50, dtype=torch.bool)
    ref = F.cross_entropy(logits.masked_fill(~keep, -torch.inf), torch.arange(30))
    ref.backward()
    assert torch.isfinite(loss) and torch.isfinite(q.grad).all()
    assert_close_rel(loss, ref, 1e-4, "loss")
    assert_close_rel(q.grad, ref_q.grad, 1e-4, "d loss / d query")


def test_float_and_tensor_temperature_agree_and_gradient_is_optional() -> None:
    query, key = make_embeddings(12, 20, 16, seed=9)
    as_float = info_nce(query, key, 0.2)
    as_tensor = info_nce(query, key, torch.tensor(0.2, dtype=torch.float64))
    torch.testing.assert_close(as_float, as_tensor)
    temperature = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    info_nce(query, key, temperature, debias_tau_plus=0.1).backward()  # only temperature needs a gradient
    assert temperature.grad is not None and torch.isfinite(temperature.grad)


def test_non_contiguous_inputs_and_shared_query_key() -> None:
    query, key = make_embeddings(24, 24, 16, seed=10)
    query_t = query.T.contiguous().T  # same values, column-major strides
    assert not query_t.is_contiguous()
    torch.testing.assert_close(info_nce(query_t, key, 0.1), info_nce_reference(query, key, 0.1))
    # SimCLR-style: one tensor as both query and key; autograd sums both gradient paths.
    emb = query.clone().requires_grad_()
    ref_emb = query.clone().requires_grad_()
    pair = torch.arange(24) ^ 1
    labels = torch.arange(24) // 2
    info_nce(emb, emb, 0.1, positive_index=pair, query_labels=labels, key_labels=labels).backward()
    info_nce_reference(
        ref_emb, ref_emb, 0.1, positive_index=pair, query_labels=labels, key_labels=labels
    ).backward()
    assert_close_rel(emb.grad, ref_emb.grad, 1e-10, "d loss / d embeddings")


def test_backend_reference_and_auto_agree() -> None:
    case = make_case(20, 30, 16, seed=11, num_classes=3, hard_negative_beta=0.5)
    args = (case["query"], case["key"], case["temperature"])
    torch.testing.assert_close(
        info_nce(*args, backend="reference", **case["kwargs"]),
        info_nce(*args, backend="auto", **case["kwargs"]),
    )


def test_chunked_never_materialises_the_similarity_matrix() -> None:
    """Largest single allocation (CPU profiler) stays far below one N x M float32 matrix."""
    from torch.profiler import ProfilerActivity, profile

    num_query, num_key = 150, 200
    query, key = make_embeddings(num_query, num_key, 16, seed=12)

    def peak_allocation(backend: str) -> int:
        q, k = query.float().requires_grad_(), key.float().requires_grad_()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            info_nce(
                q,
                k,
                0.1,
                hard_negative_beta=0.5,
                symmetric=False,
                backend=backend,
                block_options={"block_rows": 32, "block_cols": 48} if backend == "chunked" else None,
            ).backward()
        return max(event.cpu_memory_usage for event in prof.events())

    matrix_bytes = num_query * num_key * 4
    assert peak_allocation("reference") >= matrix_bytes  # the probe does see an N x M matrix
    assert peak_allocation("chunked") < matrix_bytes // 4
