"""Triton backend on CPU: the real kernels run under TRITON_INTERPRET=1 in one subprocess, checked here.

Triton reads TRITON_INTERPRET when it decorates a kernel, so setting it inside this pytest process would
depend on import order and leak into other tests; triton_interpret_worker.py runs every case in a fresh
process instead, and each case is compared here with the float64 materialised reference. A second test
compiles the kernels for an sm_90 GPU (no GPU needed) to catch what the interpreter does not check.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.kernels.kernels_testlib import (
    assert_results_close,
    check_topk,
    make_case,
    make_embeddings,
    reference_result,
)

pytest.importorskip("triton")

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("triton_interpret_worker.py")
BLOCKS = {"block_rows": 16, "block_cols": 16, "block_d": 32, "block_d_out": 32}

# name -> (input dtype, make_case arguments); tolerances as for the chunked path.
INFO_NCE_CASES: dict[str, tuple[torch.dtype, dict[str, Any]]] = {
    "plain_fp32_d130": (torch.float32, dict(num_query=21, num_key=35, dim=130, seed=0)),
    "index_labels_hcl_dcl_fp32": (
        torch.float32,
        dict(
            num_query=19,
            num_key=40,
            dim=64,
            seed=1,
            positive_index=True,
            num_classes=3,
            hard_negative_beta=1.0,
            debias_tau_plus=0.1,
        ),
    ),
    "dcl_floor_fp32": (
        torch.float32,
        dict(num_query=40, num_key=40, dim=16, seed=0, debias_tau_plus=0.2, temperature=0.5),
    ),
    "symmetric_labels_hcl_bf16": (
        torch.bfloat16,
        dict(
            num_query=24, num_key=24, dim=130, seed=2, symmetric=True, num_classes=3, hard_negative_beta=0.5
        ),
    ),
    "noncontiguous_labels_fp32": (
        torch.float32,
        dict(num_query=17, num_key=20, dim=16, seed=4, num_classes=3),
    ),
    "symmetric_none_fp16": (
        torch.float16,
        dict(num_query=18, num_key=18, dim=16, seed=3, symmetric=True, reduction="none"),
    ),
}
TOPK_CASES: dict[str, tuple[torch.dtype, dict[str, Any]]] = {
    "topk_k1_fp32": (torch.float32, dict(n=17, m=33, dim=16, k=1)),
    "topk_masked_fp32_d130": (torch.float32, dict(n=21, m=50, dim=130, k=5, exclude=True, classes=3)),
    "topk_k17_fp32": (torch.float32, dict(n=20, m=45, dim=16, k=17, exclude=True)),  # K_PAD 32 > 16 cols
    "topk_labels_bf16": (torch.bfloat16, dict(n=20, m=40, dim=64, k=3, classes=4)),
}


def build_info_nce_case(name: str) -> dict[str, Any]:
    dtype, arguments = INFO_NCE_CASES[name]
    case = make_case(**arguments)
    if name == "dcl_floor_fp32":  # the setting of test_kernels_info_nce's floor test: both DCL branches
        case["query"], case["key"] = make_embeddings(40, 40, 16, seed=0, noise=0.8)
    if name == "noncontiguous_labels_fp32":  # column-major rows: the kernels must honour strides
        case["query"], case["key"] = case["query"].T.contiguous().T, case["key"].T.contiguous().T
    return case


def build_topk_case(name: str) -> dict[str, Any]:
    dtype, spec = TOPK_CASES[name]
    query, key = make_embeddings(spec["n"], spec["m"], spec["dim"], seed=spec["k"])
    gen = torch.Generator().manual_seed(spec["k"])
    kwargs: dict[str, Any] = {}
    if spec.get("exclude"):
        kwargs["exclude_index"] = torch.randint(0, spec["m"], (spec["n"],), generator=gen)
    if spec.get("classes"):
        kwargs["query_labels"] = torch.randint(0, spec["classes"], (spec["n"],), generator=gen)
        kwargs["key_labels"] = torch.randint(0, spec["classes"], (spec["m"],), generator=gen)
    return {"op": "topk", "query": query.to(dtype), "key": key.to(dtype), "k": spec["k"], "kwargs": kwargs}


@pytest.fixture(scope="module")
def interpreted_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Outputs of every case from the Triton kernels run by the interpreter in a subprocess."""
    cases: dict[str, Any] = {}
    for name, (dtype, _) in INFO_NCE_CASES.items():
        case = build_info_nce_case(name)
        temp_dtype = torch.float32
        cases[name] = {
            "op": "info_nce",
            "query": case["query"].to(dtype),
            "key": case["key"].to(dtype),
            "temperature": case["temperature"].to(temp_dtype),
            "kwargs": case["kwargs"],
            "row_weights": case["row_weights"],
            "block_options": BLOCKS,
        }
    for name in TOPK_CASES:
        cases[name] = {**build_topk_case(name), "block_options": BLOCKS}
    folder = tmp_path_factory.mktemp("triton_interpret")
    cases_path, results_path = folder / "cases.pt", folder / "results.pt"
    torch.save(cases, cases_path)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(cases_path), str(results_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"interpreter worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return torch.load(results_path)


def _result(results: dict[str, Any], name: str) -> dict[str, Any]:
    result = results[name]
    assert "error" not in result, result.get("error")
    return result


@pytest.mark.parametrize("name", list(INFO_NCE_CASES))
def test_triton_info_nce_matches_reference(interpreted_results: dict[str, Any], name: str) -> None:
    dtype = INFO_NCE_CASES[name][0]
    actual = _result(interpreted_results, name)
    expected = reference_result(build_info_nce_case(name), dtype)
    if dtype == torch.float32:
        assert_results_close(actual, expected, 1e-5, 1e-5)
    else:  # half inputs: float32 accumulation, tile gradients multiplied in the input dtype (as on GPU)
        assert actual["query"].dtype == dtype
        assert_results_close(actual, expected, 1e-4, 2e-2)


@pytest.mark.parametrize("name", list(TOPK_CASES))
def test_triton_topk_matches_torch_topk(interpreted_results: dict[str, Any], name: str) -> None:
    case = build_topk_case(name)
    actual = _result(interpreted_results, name)
    half = case["query"].dtype != torch.float32
    assert actual["values"].dtype == case["query"].dtype
    check_topk(
        actual["values"].double(),
        actual["indices"],
        case["query"].double(),
        case["key"].double(),
        case["k"],
        rtol=1e-2 if half else 1e-6,
        **case["kwargs"],
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_triton_kernels_compile_for_gpu(dtype: torch.dtype) -> None:
    """Lower every kernel (one variant each) to an sm_90 binary; needs Triton's bundled ptxas, not a GPU."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from common.kernels import triton_info_nce, triton_topk

    if triton_info_nce.INTERPRETED:
        pytest.skip("TRITON_INTERPRET=1 is set in this process")
    if "nvidia" not in triton.backends.backends:
        pytest.skip("Triton has no NVIDIA backend here")
    ints = dict.fromkeys(("num_q", "num_k", "dim", "stride_q", "stride_qd", "stride_k", "stride_kd"), "i32")
    pointer = {torch.bfloat16: "*bf16", torch.float16: "*fp16"}[dtype]
    inputs = {"q_ptr": pointer, "k_ptr": pointer, "qlab_ptr": "*i64", "klab_ptr": "*i64"}
    grad_dtype, grad_precision = triton_info_nce.grad_dot(dtype)
    grad_meta = dict(BLOCK_DO=128, GRAD_DTYPE=grad_dtype, GRAD_PRECISION=grad_precision)
    tiles = dict(BLOCK_N=64, BLOCK_M=64, BLOCK_D=64, PRECISION="ieee", UPCAST=False)
    loss_meta = dict(HAS_LABELS=True, HARD=True, **tiles)
    stats = {"pos_ptr": "*i64", "out_ptr": "*fp32", "inv_temp": "fp32", "beta": "fp32"}
    grads = {
        "pos_ptr": "*i64",
        "lse_a_ptr": "*fp32",
        "lse_b_ptr": "*fp32",
        "coef_ptr": "*fp32",
        "inv_temp": "fp32",
        "beta": "fp32",
    }
    topk = {"excl_ptr": "*i64", "val_ptr": "*fp32", "idx_ptr": "*i32", "k": "i32"}
    kernels = [
        (triton_info_nce._row_stats_kernel, {**inputs, **stats, **ints}, loss_meta),
        (
            triton_info_nce._grad_query_kernel,
            {**inputs, **grads, "dq_ptr": "*fp32", **ints},
            {**loss_meta, **grad_meta},
        ),
        (
            triton_info_nce._grad_key_kernel,
            {**inputs, **grads, "dk_ptr": "*fp32", **ints},
            {**loss_meta, **grad_meta},
        ),
        (
            triton_topk._topk_kernel,
            {**inputs, **topk, **ints},
            dict(HAS_EXCLUDE=True, HAS_LABELS=True, K_PAD=16, **{**tiles, "BLOCK_N": 32}),
        ),
    ]
    for kernel, signature, constants in kernels:
        names = kernel.arg_names
        full_signature = {name: signature.get(name, "constexpr") for name in names}
        missing = [name for name in names if name not in signature and name not in constants]
        assert not missing, f"{kernel.__name__}: no type for {missing}"
        source = ASTSource(fn=kernel, signature=full_signature, constexprs=constants)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
        assert compiled.asm.get("cubin"), f"{kernel.__name__} produced no binary"
