"""Peak memory of info_nce's autograd layer around the Triton launchers, measured on the CPU.

The CUDA goal caps the extra memory of a forward+backward (bf16, N = 32768, d = 256) at 128 MB, 4 N d float32
units; the tiles live in the kernels' registers, so what counts is the O(N d) work of the autograd layer
around them. Here the launchers are replaced by stubs that allocate exactly what the real ones return
(float32 gradients, O(N) statistics), and a dispatch mode records the peak of live tensor storage, the CPU
stand-in for CUDA's max_memory_allocated.
"""

from __future__ import annotations

import weakref
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from common.kernels import dispatch, info_nce
from common.kernels._rowmath import RowStats

triton_info_nce = pytest.importorskip("common.kernels.triton_info_nce")  # the launchers' contract


class PeakLiveStorage(TorchDispatchMode):
    """Peak bytes of tensor storage allocated inside the region and still alive."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            address, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or address in self._seen or address in inputs:
                continue  # a view or an in-place result: no new memory
            self._seen.add(address)
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, address, size)
        return out

    def _free(self, address: int, size: int) -> None:
        self.live -= size
        self._seen.discard(address)


class TritonLauncherStub:
    """What the Triton launchers allocate, without kernels: O(N) float32 statistics, float32 gradients."""

    SHARES_TILES_BETWEEN_GRADIENTS = triton_info_nce.SHARES_TILES_BETWEEN_GRADIENTS

    @staticmethod
    def info_nce_row_stats(query: torch.Tensor, key: torch.Tensor, *args: Any, **blocks: Any) -> RowStats:
        rows = query.shape[0]
        out = torch.zeros(3, rows)
        out[2] = key.shape[0] - 1  # negatives per row
        return RowStats(lse_a=out[0], lse_b=None, pos_logit=out[1], num_negatives=out[2])

    @staticmethod
    def info_nce_negative_grads(
        query: torch.Tensor, key: torch.Tensor, *args: Any, need_query: bool, need_key: bool, **blocks: Any
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        grad_query = torch.zeros(query.shape) if need_query else None
        grad_key = torch.zeros(key.shape) if need_key else None
        return grad_query, grad_key


@pytest.mark.parametrize(("symmetric", "limit_units"), [(False, 2.25), (True, 3.25)], ids=["plain", "clip"])
def test_triton_path_peak_memory_is_a_few_n_d_floats(
    symmetric: bool, limit_units: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16 forward+backward holds at most one float32 N x d gradient at a time, plus the bf16 results.

    Expected peak, in units of one N x d float32 buffer: the first gradient's bf16 result (0.5), then the
    second kernel's float32 output (1) and its bf16 cast (0.5) = 2.0 for plain; CLIP also holds the first
    direction's two gradients (1) during the second = 3.0. At the CUDA goal size a unit is 32 MB, so 64 and
    96 MB. Before the query gradient was finished ahead of the key kernel and the positive term was added in
    place, the same measurement gave 4.0 and 5.0. The temperature is a float, as in the goal; a learnable one
    adds a product of a few thousand rows at a time.
    """
    monkeypatch.setattr(dispatch, "_resolve_backend", lambda backend, query, op_limit_ok=True: "triton")
    monkeypatch.setattr(dispatch, "_backend_module", lambda name: TritonLauncherStub)
    n, d = 2048, 256
    query = torch.randn(n, d, dtype=torch.bfloat16, requires_grad=True)
    key = torch.randn(n, d, dtype=torch.bfloat16, requires_grad=True)
    tracker = PeakLiveStorage()
    with tracker:
        info_nce(query, key, 0.07, symmetric=symmetric).backward()
    assert query.grad is not None and key.grad is not None
    units = tracker.peak / (n * d * 4)
    assert units <= limit_units, f"peak {units:.2f} N d float32 units > {limit_units}"
