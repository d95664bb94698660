"""Bad input to the kernel ops stops with one clear ValueError (KernelInputError) saying what to do."""

from __future__ import annotations

import os
import re

import pytest
import torch

from common.errors import UserError
from common.kernels import KernelInputError, info_nce, topk_similar

Q = torch.randn(6, 8)
K = torch.randn(9, 8)
L6 = torch.arange(6)
L9 = torch.arange(9)

INFO_NCE_CASES = {
    "width mismatch": (dict(query=Q, key=torch.randn(9, 5)), "widths differ"),
    "1-D query": (dict(query=torch.randn(8), key=K), "2-D tensor"),
    "integer query": (dict(query=torch.ones(6, 8, dtype=torch.long), key=K), "floating tensor"),
    "dtype mismatch": (dict(query=Q, key=K.double()), "same dtype"),
    "empty key": (dict(query=Q, key=torch.randn(0, 8)), "empty"),
    "N > M without positive_index": (dict(query=K, key=Q), "pass positive_index"),
    "positive_index shape": (dict(positive_index=torch.arange(5)), r"shape \(6,\)"),
    "positive_index range": (dict(positive_index=torch.full((6,), 9)), r"\[0, 9\)"),
    "positive_index float": (dict(positive_index=torch.zeros(6)), "integer key indices"),
    "only query_labels": (dict(query_labels=L6), "both query_labels and key_labels"),
    "key_labels shape": (
        dict(query_labels=L6, key_labels=L6),
        r"key_labels must be a tensor of shape \(9,\)",
    ),
    "float labels": (dict(query_labels=L6.float(), key_labels=L9), "integer class ids"),
    "NaN temperature": (dict(temperature=float("nan")), "finite and > 0"),
    "NaN tensor temperature": (dict(temperature=torch.tensor(float("nan"))), "finite and > 0"),
    "negative temperature": (dict(temperature=-0.1), "finite and > 0"),
    "vector temperature": (dict(temperature=torch.ones(2)), "0-dim tensor"),
    "unknown reduction": (dict(reduction="avg"), "unknown reduction 'avg'"),
    "negative beta": (dict(hard_negative_beta=-1.0), "hard_negative_beta"),
    "tau_plus of 1": (dict(debias_tau_plus=1.0), r"\[0, 1\)"),
    "symmetric with positive_index": (
        dict(key=torch.randn(6, 8), symmetric=True, positive_index=L6),
        "drop positive_index",
    ),
    "symmetric with N != M": (dict(symmetric=True), "as many keys as queries"),
    "unknown backend": (dict(backend="cuda"), "unknown backend"),
    "triton on CPU": (dict(backend="triton"), "needs CUDA tensors|needs the triton package"),
    "triton float64": (dict(query=Q.double(), key=K.double(), backend="triton"), "use backend='chunked'"),
    "unknown block option": (dict(block_options={"block_n": 16}), "unknown block option 'block_n'"),
    "zero block size": (dict(block_options={"block_rows": 0}), "positive int"),
}


@pytest.mark.parametrize("name", list(INFO_NCE_CASES))
def test_info_nce_rejects_bad_input(name: str) -> None:
    overrides, message = INFO_NCE_CASES[name]
    if name == "triton on CPU" and os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("with TRITON_INTERPRET=1 the Triton backend accepts CPU tensors")
    kwargs = {"query": Q, "key": K, "temperature": 0.1, **overrides}
    with pytest.raises(ValueError, match=message) as excinfo:
        info_nce(kwargs.pop("query"), kwargs.pop("key"), kwargs.pop("temperature"), **kwargs)
    assert isinstance(excinfo.value, KernelInputError) and isinstance(excinfo.value, UserError)


TOPK_CASES = {
    "k too large": (dict(k=10), "k=10 but query row 0 has only 9 keys"),
    "k too large after exclusion": (dict(k=9, exclude_index=L6), "only 8 keys left"),
    "k too large after label masking": (
        dict(
            k=7,
            query_labels=torch.zeros(6, dtype=torch.long),
            key_labels=torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1]),
        ),
        "only 6 keys left",
    ),
    "k zero": (dict(k=0), "positive int"),
    "exclude_index shape": (dict(exclude_index=L9), r"shape \(6,\)"),
    "label shapes": (dict(query_labels=L9, key_labels=L9), r"query_labels must be a tensor of shape \(6,\)"),
    "width mismatch": (dict(key=torch.randn(9, 3)), "widths differ"),
}


@pytest.mark.parametrize("name", list(TOPK_CASES))
def test_topk_rejects_bad_input(name: str) -> None:
    overrides, message = TOPK_CASES[name]
    kwargs = {"query": Q, "key": K, "k": 3, **overrides}
    with pytest.raises(ValueError, match=message):
        topk_similar(kwargs.pop("query"), kwargs.pop("key"), kwargs.pop("k"), **kwargs)


def test_label_masking_error_names_the_worst_row() -> None:
    query_labels = torch.tensor([1, 1, 0, 1, 1, 1])
    key_labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1])
    with pytest.raises(ValueError, match=re.escape("query row 2 has only 4 keys left")):
        topk_similar(Q, K, 5, query_labels=query_labels, key_labels=key_labels)
