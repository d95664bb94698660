"""Triton backend compiled for a real GPU: the same checks as on the CPU, run on CUDA tensors.

Skipped without CUDA (CI has none). On a GPU machine: `pytest tests/kernels/test_kernels_cuda.py`, or
`benchmarks/gpu_check.sh`, which also writes the CUDA benchmark table. Each check compares with the float64
materialised reference; TF32 stays off (torch's default), so float32 must match to 1e-5.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from common.kernels import info_nce, topk_similar
from common.kernels.dispatch import _resolve_backend
from common.kernels.reference import info_nce_reference
from tests.kernels.kernels_testlib import (
    assert_close_rel,
    assert_results_close,
    check_topk,
    make_case,
    make_embeddings,
    reference_result,
)
from tests.kernels.test_kernels_info_nce import OPTION_SETS
from tests.kernels.test_kernels_triton import INFO_NCE_CASES, TOPK_CASES, build_info_nce_case, build_topk_case

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TRITON_SMALL_BLOCKS = {"block_rows": 16, "block_cols": 16, "block_d": 32, "block_d_out": 32}
HALF_TOLERANCES = (1e-4, 2e-2)  # float32 accumulation; tile gradients multiplied in the input dtype
FLOAT16_SMALLEST_NORMAL = 2.0**-14  # gradients returned in float16 lose their digits below it


def run_case(
    case: dict[str, Any],
    dtype: torch.dtype,
    device: str = "cuda",
    backend: str = "triton",
    block_options: dict[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Loss and gradients (query, key, temperature) of one make_case case on `device`, returned on the CPU."""

    def moved(value: Any) -> Any:
        return value.to(device) if isinstance(value, torch.Tensor) else value

    query = case["query"].to(device, dtype).requires_grad_()
    key = case["key"].to(device, dtype).requires_grad_()
    temperature = case["temperature"].to(device, torch.float32).requires_grad_()
    kwargs = {name: moved(value) for name, value in case["kwargs"].items()}
    loss = info_nce(query, key, temperature, backend=backend, block_options=block_options, **kwargs)
    total = (loss * case["row_weights"].to(device, loss.dtype)).sum() if loss.dim() else loss
    total.backward()
    grads = {"query": query.grad, "key": key.grad, "temperature": temperature.grad}
    return {"loss": loss.detach().cpu(), **{name: g.cpu() for name, g in grads.items()}}


@pytest.mark.parametrize("blocks", ["default", "small"])
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"]
)
@pytest.mark.parametrize("dim", [16, 64, 130])
@pytest.mark.parametrize("option_set", list(OPTION_SETS))
def test_cuda_info_nce_matches_reference(option_set: str, dim: int, dtype: torch.dtype, blocks: str) -> None:
    num_query, num_key, options = OPTION_SETS[option_set]
    case = make_case(num_query, num_key, dim, seed=dim, **options)
    expected = reference_result(case, dtype)
    if dtype == torch.float16 and float(expected["query"].abs().max()) < FLOAT16_SMALLEST_NORMAL:
        pytest.skip("the gradients lie below float16's normal range (DCL floor: loss ~3e-7)")
    actual = run_case(case, dtype, block_options=TRITON_SMALL_BLOCKS if blocks == "small" else None)
    assert actual["query"].dtype == dtype
    tolerances = (1e-5, 1e-5) if dtype == torch.float32 else HALF_TOLERANCES
    assert_results_close(actual, expected, *tolerances)


@pytest.mark.parametrize("name", list(INFO_NCE_CASES))
def test_cuda_runs_the_interpreter_cases(name: str) -> None:
    """The CPU interpreter's cases (DCL floor, strides, reduction='none', ...), compiled."""
    dtype = INFO_NCE_CASES[name][0]
    case = build_info_nce_case(name)
    actual = run_case(case, dtype, block_options=TRITON_SMALL_BLOCKS)
    tolerances = (1e-5, 1e-5) if dtype == torch.float32 else HALF_TOLERANCES
    assert_results_close(actual, reference_result(case, dtype), *tolerances)


def test_cuda_edge_cases_rows_without_negatives_and_low_temperature() -> None:
    query, key = make_embeddings(6, 6, 16, seed=6)
    labels_q, labels_k = torch.tensor([0, 1, 0, 1, 0, 1]), torch.zeros(6, dtype=torch.long)
    case = {
        "query": query,
        "key": key,
        "temperature": torch.tensor(0.01, dtype=torch.float64),
        "kwargs": {"query_labels": labels_q, "key_labels": labels_k, "hard_negative_beta": 0.5},
        "row_weights": torch.ones(6, dtype=torch.float64),
    }
    actual = run_case(case, torch.float32)
    assert_results_close(actual, reference_result(case, torch.float32), 1e-5, 1e-5)
    assert torch.equal(actual["query"][labels_q == 0], torch.zeros(3, 16))


def test_cuda_hcl_at_beta_zero_is_plain_info_nce() -> None:
    case = make_case(50, 70, 64, seed=3)
    plain = run_case(case, torch.float32)
    case["kwargs"]["hard_negative_beta"] = 0.0
    again = run_case(case, torch.float32, block_options=TRITON_SMALL_BLOCKS)
    assert_results_close(again, plain, 1e-6, 1e-6)


def test_cuda_auto_backend_is_triton() -> None:
    query = torch.zeros(4, 16, device="cuda")
    assert _resolve_backend("auto", query) == "triton"
    assert _resolve_backend("auto", query.double()) == "chunked"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_large_batch_matches_materialised_reference(dtype: torch.dtype) -> None:
    """N = M = 4096, d = 256 with labels, HCL and DCL: many full tiles plus a ragged edge (4096 + 37)."""
    n, d = 4096 + 37, 256
    gen = torch.Generator(device="cuda").manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(n, d, device="cuda", generator=gen), dim=1)
    key = torch.nn.functional.normalize(query + 0.5 * torch.randn(n, d, device="cuda", generator=gen), dim=1)
    labels = torch.randint(0, 100, (n,), device="cuda", generator=gen)
    options = dict(query_labels=labels, key_labels=labels, hard_negative_beta=0.5, debias_tau_plus=0.05)
    outputs = []
    for backend, inputs in (("triton", (query.to(dtype), key.to(dtype))), ("reference", None)):
        if inputs is None:  # float64 on the rounded inputs
            inputs = (query.to(dtype).double(), key.to(dtype).double())
        q, k = (x.detach().clone().requires_grad_() for x in inputs)
        loss = info_nce(q, k, 0.07, symmetric=True, backend=backend, **options)
        loss.backward()
        outputs.append({"loss": loss.detach(), "query": q.grad, "key": k.grad})
    # Sums over ~8k terms per entry: float32 rounding grows to ~5e-5 (measured on the chunked CPU path).
    (actual, expected), tolerance = outputs, (2e-4 if dtype == torch.float32 else 2e-2)
    for name in ("loss", "query", "key"):
        assert_close_rel(actual[name], expected[name], tolerance, name)


def test_cuda_memory_stays_far_below_the_similarity_matrix() -> None:
    """N = 32768, d = 256, bf16 CLIP forward+backward: O(N d) extra memory, not O(N^2).

    The issue's 128 MB goal is judged by the benchmark's goal table (benchmarks/gpu_check.sh), not here.
    """
    n, d = 32768, 256
    query = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    key = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    info_nce(query, key, 0.07, symmetric=True).backward()  # compile outside the measurement
    query.grad = key.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    info_nce(query, key, 0.07, symmetric=True).backward()
    torch.cuda.synchronize()
    extra_mb = (torch.cuda.max_memory_allocated() - baseline) / 2**20
    matrix_mb = n * n * 4 / 2**20
    assert extra_mb < matrix_mb / 16, (
        f"{extra_mb:.0f} MB extra; one N x N float32 matrix is {matrix_mb:.0f} MB"
    )


@pytest.mark.parametrize("name", list(TOPK_CASES))
def test_cuda_topk_runs_the_interpreter_cases(name: str) -> None:
    case = build_topk_case(name)
    kwargs = {key: value.cuda() for key, value in case["kwargs"].items()}
    values, indices = topk_similar(
        case["query"].cuda(), case["key"].cuda(), case["k"], backend="triton", **kwargs
    )
    half = case["query"].dtype != torch.float32
    assert values.dtype == case["query"].dtype
    check_topk(
        values.cpu().double(),
        indices.cpu(),
        case["query"].double(),
        case["key"].double(),
        case["k"],
        rtol=1e-2 if half else 1e-6,
        **case["kwargs"],
    )


@pytest.mark.parametrize("k", [1, 16, 64, 256])
@pytest.mark.parametrize("masking", ["none", "exclude", "labels", "both"])
def test_cuda_topk_matches_torch_topk(masking: str, k: int) -> None:
    n, m, d = 300, 1000, 130
    query, key = (x.float() for x in make_embeddings(n, m, d, seed=k))
    gen = torch.Generator().manual_seed(k)
    kwargs: dict[str, torch.Tensor] = {}
    if masking in ("exclude", "both"):
        kwargs["exclude_index"] = torch.randint(0, m, (n,), generator=gen)
    if masking in ("labels", "both"):
        kwargs["query_labels"] = torch.randint(0, 3, (n,), generator=gen)
        kwargs["key_labels"] = torch.randint(0, 3, (m,), generator=gen)
    values, indices = topk_similar(
        query.cuda(), key.cuda(), k, backend="triton", **{name: v.cuda() for name, v in kwargs.items()}
    )
    check_topk(values.cpu(), indices.cpu(), query, key, k, rtol=1e-5, **kwargs)


def test_cuda_symmetric_clip_matches_reference_with_learnable_temperature() -> None:
    query, key = (x.float().cuda() for x in make_embeddings(512, 512, 128, seed=5))
    outputs = []
    for backend, dtype in (("triton", torch.float32), ("reference", torch.float64)):
        q, k = (x.detach().to(dtype).clone().requires_grad_() for x in (query, key))
        temperature = torch.tensor(0.07, device="cuda", dtype=dtype, requires_grad=True)
        loss = (
            info_nce(q, k, temperature, symmetric=True, backend=backend)
            if backend == "triton"
            else info_nce_reference(q, k, temperature, symmetric=True)
        )
        loss.backward()
        outputs.append(
            {"loss": loss.detach(), "query": q.grad, "key": k.grad, "temperature": temperature.grad}
        )
    assert_results_close(outputs[0], outputs[1], 1e-5, 1e-5)
