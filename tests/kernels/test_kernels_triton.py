"""Triton backend on CPU: the real kernels run under TRITON_INTERPRET=1 in one subprocess, checked here.

Triton reads TRITON_INTERPRET when it decorates a kernel, so setting it inside this pytest process would
depend on import order and leak into other tests; triton_interpret_worker.py runs every case in a fresh
process instead, and each case is compared here with the float64 materialised reference. A second test
compiles the kernels for an sm_90 GPU (no GPU needed) at their launch settings, to catch what the
interpreter does not check: lowering errors, register spills and shared-memory overflow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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


def _compile_for_sm90(
    kernel: Any, signature: dict[str, str], constants: dict[str, Any], **launch: int
) -> Any:
    """Lower a kernel to an sm_90 binary as the JIT would for contiguous inputs and 16-aligned sizes.

    Like a real launch: unit feature strides become constants and pointers, sizes and row strides carry
    16-divisibility hints, so loads vectorise and register use matches what the GPU would run.
    """
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    signature = {name: kind for name, kind in signature.items() if name not in ("stride_qd", "stride_kd")}
    constants = {**constants, "stride_qd": 1, "stride_kd": 1}
    missing = [name for name in names if name not in signature and name not in constants]
    assert not missing, f"{kernel.__name__}: no type for {missing}"
    aligned = [
        n for n in names if signature.get(n, "").startswith("*") or n in ALIGNED_SIZES and n in signature
    ]
    source = ASTSource(
        fn=kernel,
        signature={name: signature.get(name, "constexpr") for name in names},
        constexprs=constants,
        attrs={(names.index(name),): [["tt.divisibility", 16]] for name in aligned},
    )
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=launch)


ALIGNED_SIZES = ("num_q", "num_k", "dim", "stride_q", "stride_k")
H100_SHARED_PER_BLOCK = 227 * 1024


def _resource_usage(compiled: Any) -> dict[str, int]:
    """Registers and spill stack per thread of a compiled kernel, read with Triton's bundled cuobjdump."""
    import re

    import triton

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        pytest.skip("Triton's bundled cuobjdump is missing")
    cubin = compiled.asm["cubin"]
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        report = subprocess.run(
            [str(cuobjdump), "--dump-resource-usage", handle.name], capture_output=True, text=True, check=True
        ).stdout
    match = re.search(r"REG:(\d+) STACK:(\d+)", report)
    assert match, report
    return {"registers": int(match[1]), "spill_stack_bytes": int(match[2])}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_triton_kernels_compile_for_gpu_without_spills(dtype: torch.dtype) -> None:
    """Every kernel, at the tiles and warps its launcher uses, lowers to an sm_90 binary (Triton's bundled
    ptxas, no GPU needed) that keeps all values in registers (no spill stack) and fits in shared memory."""
    triton = pytest.importorskip("triton")
    from common.kernels import triton_info_nce, triton_topk

    if triton_info_nce.INTERPRETED:
        pytest.skip("TRITON_INTERPRET=1 is set in this process")
    if "nvidia" not in triton.backends.backends:
        pytest.skip("Triton has no NVIDIA backend here")
    ints = dict.fromkeys(("num_q", "num_k", "dim", "stride_q", "stride_qd", "stride_k", "stride_kd"), "i32")
    pointer = {torch.bfloat16: "*bf16", torch.float16: "*fp16"}[dtype]
    inputs = {"q_ptr": pointer, "k_ptr": pointer, "qlab_ptr": "*i64", "klab_ptr": "*i64"}
    scalars = {"inv_temp": "fp32", "beta": "fp32"}
    stats = {"pos_ptr": "*i64", "out_ptr": "*fp32", **scalars}
    grads = {"pos_ptr": "*i64", "lse_a_ptr": "*fp32", "lse_b_ptr": "*fp32", "coef_ptr": "*fp32", **scalars}
    # The launchers' defaults at d = 256 (the CUDA goal size): 64 x 64 tiles, 64-wide feature chunks.
    rows = cols = 64
    block_d, block_do = (
        triton_info_nce.feature_block(256, None),
        triton_info_nce.feature_block(256, None, 256),
    )
    grad_dtype, grad_precision = triton_info_nce.grad_dot(dtype)
    tiles = dict(BLOCK_N=rows, BLOCK_M=cols, BLOCK_D=block_d, PRECISION="ieee", UPCAST=False)
    grad_meta = dict(BLOCK_DO=block_do, GRAD_DTYPE=grad_dtype, GRAD_PRECISION=grad_precision)
    stats_launch = {"num_warps": triton_info_nce.stats_num_warps(rows, cols)}
    grads_launch = {"num_warps": triton_info_nce.grads_num_warps(block_do)}
    # bf16 checks each loss kernel plain and with every option; fp16 (other gradient dtype) the heaviest.
    options = [(False, False), (True, True)] if dtype == torch.bfloat16 else [(True, True)]
    kernels = []
    for hard, labels in options:
        flags = dict(HAS_LABELS=labels, HARD=hard, **tiles)
        kernels += [
            (triton_info_nce._row_stats_kernel, {**inputs, **stats, **ints}, flags, stats_launch),
            (
                triton_info_nce._grad_query_kernel,
                {**inputs, **grads, "dq_ptr": "*fp32", **ints},
                {**flags, **grad_meta},
                grads_launch,
            ),
            (
                triton_info_nce._grad_key_kernel,
                {**inputs, **grads, "dk_ptr": "*fp32", **ints},
                {**flags, **grad_meta},
                grads_launch,
            ),
        ]
    topk = {"excl_ptr": "*i64", "val_ptr": "*fp32", "idx_ptr": "*i32", "k": "i32"}
    for k_pad in [16, 256] if dtype == torch.bfloat16 else []:
        constants = dict(
            HAS_EXCLUDE=True,
            HAS_LABELS=True,
            K_PAD=k_pad,
            **{**tiles, "BLOCK_N": triton_topk.topk_rows(k_pad)},
        )
        constants["BLOCK_M"] = max(cols, k_pad)
        kernels.append(
            (triton_topk._topk_kernel, {**inputs, **topk, **ints}, constants, triton_topk.topk_launch(k_pad))
        )
    for kernel, signature, constants, launch in kernels:
        compiled = _compile_for_sm90(kernel, signature, constants, **launch)
        usage = _resource_usage(compiled)
        what = f"{kernel.__name__} {constants} {launch}"
        assert usage["spill_stack_bytes"] == 0, f"{what} spills: {usage}"
        assert compiled.metadata.shared <= H100_SHARED_PER_BLOCK, (
            f"{what}: {compiled.metadata.shared} B shared"
        )
