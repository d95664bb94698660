"""Runs kernel calls with backend="triton" on CPU under TRITON_INTERPRET=1; driven by test_kernels_triton.py.

Usage: TRITON_INTERPRET=1 python triton_interpret_worker.py CASES.pt RESULTS.pt
Triton reads TRITON_INTERPRET when a kernel is decorated, so it must be set before common.kernels'
Triton modules are imported; a fresh process guarantees that without leaking into other tests.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import torch

from common.kernels import info_nce, topk_similar


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Outputs of one case: loss and gradients for info_nce, (values, indices) for topk."""
    block_options = case["block_options"]
    if case["op"] == "topk":
        values, indices = topk_similar(
            case["query"],
            case["key"],
            case["k"],
            backend="triton",
            block_options=block_options,
            **case["kwargs"],
        )
        return {"values": values, "indices": indices}
    query = case["query"].clone().requires_grad_()
    key = case["key"].clone().requires_grad_()
    temperature = case["temperature"].clone().requires_grad_()
    loss = info_nce(query, key, temperature, backend="triton", block_options=block_options, **case["kwargs"])
    total = (loss * case["row_weights"].to(loss.dtype)).sum() if loss.dim() else loss
    total.backward()
    return {"loss": loss.detach(), "query": query.grad, "key": key.grad, "temperature": temperature.grad}


def main(cases_path: str, results_path: str) -> None:
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("set TRITON_INTERPRET=1 (this worker runs Triton kernels on CPU)")
    from common.kernels import triton_info_nce

    assert triton_info_nce.INTERPRETED, "Triton kernels were not built in interpreter mode"
    results: dict[str, Any] = {}
    for name, case in torch.load(cases_path).items():
        try:
            results[name] = run_case(case)
        except Exception:  # report per case; one failure must not hide the others
            results[name] = {"error": traceback.format_exc()}
    torch.save(results, results_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
