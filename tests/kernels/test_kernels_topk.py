"""topk_similar, chunked PyTorch backend: against torch.topk on the full masked similarity matrix."""

from __future__ import annotations

import pytest
import torch

from common.kernels import topk_similar
from common.kernels.reference import topk_similar_reference
from tests.kernels.kernels_testlib import check_topk, make_embeddings


@pytest.mark.parametrize("k", [1, 5, 17])
@pytest.mark.parametrize("masking", ["none", "exclude", "labels", "both"])
@pytest.mark.parametrize("dim", [16, 130])
def test_chunked_topk_matches_torch_topk(dim: int, masking: str, k: int) -> None:
    query, key = make_embeddings(37, 71, dim, seed=k + dim)
    query, key = query.float(), key.float()
    kwargs = {}
    if masking in ("exclude", "both"):
        kwargs["exclude_index"] = torch.randint(0, 71, (37,))
    if masking in ("labels", "both"):
        kwargs["query_labels"] = torch.randint(0, 3, (37,))
        kwargs["key_labels"] = torch.randint(0, 3, (71,))
    values, indices = topk_similar(
        query, key, k, backend="chunked", block_options={"block_rows": 16, "block_cols": 10}, **kwargs
    )
    check_topk(values, indices, query, key, k, **kwargs)
    ref_values, _ = topk_similar_reference(query, key, k, **kwargs)
    torch.testing.assert_close(values, ref_values)


def test_topk_ties_and_k_equal_to_available() -> None:
    # Duplicate keys create exact ties; k takes every allowed key.
    query, key = make_embeddings(9, 6, 16, seed=1)
    key = torch.cat([key, key])
    exclude = torch.arange(9) % 12
    values, indices = topk_similar(
        query, key, 11, exclude_index=exclude, block_options={"block_rows": 4, "block_cols": 5}
    )
    check_topk(values, indices, query, key, 11, exclude_index=exclude, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_topk_dtypes(dtype: torch.dtype) -> None:
    query, key = make_embeddings(20, 40, 64, seed=2)
    query, key = query.to(dtype), key.to(dtype)
    values, indices = topk_similar(query, key, 4, block_options={"block_rows": 8, "block_cols": 16})
    assert values.dtype == dtype
    # Accumulated in float32 (or float64); only the final rounding to dtype differs from float64.
    check_topk(
        values.double(),
        indices,
        query.double(),
        key.double(),
        4,
        rtol=1e-12 if dtype == torch.float64 else 1e-2,
    )
