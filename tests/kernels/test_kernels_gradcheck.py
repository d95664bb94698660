"""float64 gradcheck of the chunked path at tiny sizes, and edge cases named by the kernel's spec."""

from __future__ import annotations

import pytest
import torch

from common.kernels import info_nce
from common.kernels.reference import info_nce_reference

OPTIONS = [
    {},
    {"hard_negative_beta": 0.7},
    {"debias_tau_plus": 0.1},
    {"symmetric": True},
    {"masked": True},
]


def _inputs(n: int = 5, m: int = 7, d: int = 3, seed: int = 0, symmetric: bool = False):
    g = torch.Generator().manual_seed(seed)
    m = n if symmetric else m
    q = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    k = torch.nn.functional.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=1)
    return q.requires_grad_(), k.requires_grad_()


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(o) or "plain")
def test_chunked_gradcheck_float64(options: dict):
    options = dict(options)
    masked = options.pop("masked", False)
    q, k = _inputs(symmetric=options.get("symmetric", False))
    temperature = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    labels = {}
    if masked:
        labels = {
            "query_labels": torch.tensor([0, 1, 0, 2, 1]),
            "key_labels": torch.tensor([0, 1, 2, 2, 1, 0, 3]),
        }

    def loss(q, k, t):
        return info_nce(
            q, k, t, backend="chunked", block_options={"block_rows": 2, "block_cols": 3}, **labels, **options
        )

    assert torch.autograd.gradcheck(loss, (q, k, temperature), eps=1e-6, atol=1e-7)


def test_low_temperature_matches_reference():
    q, k = _inputs(n=33, m=40, d=16, seed=1)
    ours = info_nce(q, k, 0.01, backend="chunked")
    reference = info_nce_reference(q, k, 0.01)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)
    assert torch.isfinite(ours)


def test_hcl_with_beta_zero_is_plain_info_nce():
    q, k = _inputs(n=17, m=23, d=8, seed=2)
    torch.testing.assert_close(
        info_nce(q, k, 0.1, hard_negative_beta=0.0, backend="chunked"), info_nce(q, k, 0.1, backend="chunked")
    )
