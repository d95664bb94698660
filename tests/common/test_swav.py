"""Sinkhorn-Knopp codes and SwAV's swapped-prediction loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.losses import sinkhorn_knopp, swapped_prediction_loss


def _swav_reference(out: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """facebookresearch/swav main_swav.py `distributed_sinkhorn` with one process, re-typed."""
    q = torch.exp(out / epsilon).t()
    b, k = q.shape[1], q.shape[0]
    q /= torch.sum(q)
    for _ in range(iterations):
        q /= torch.sum(q, dim=1, keepdim=True)
        q /= k
        q /= torch.sum(q, dim=0, keepdim=True)
        q /= b
    q *= b
    return q.t()


def test_codes_match_the_swav_code_and_balance_the_prototypes():
    torch.manual_seed(0)
    scores = F.normalize(torch.randn(64, 16), dim=1) @ F.normalize(torch.randn(10, 16), dim=1).t()
    codes = sinkhorn_knopp(scores, epsilon=0.05, iterations=3)
    assert torch.allclose(codes, _swav_reference(scores.double(), 0.05, 3).float(), atol=1e-5)
    assert torch.allclose(codes.sum(dim=1), torch.ones(64), atol=1e-5)
    # Prototype usage: near 64 / 10 each after many rounds, although the raw argmax is unbalanced.
    balanced = sinkhorn_knopp(scores, epsilon=0.05, iterations=200).sum(dim=0)
    assert torch.allclose(balanced, torch.full((10,), 6.4), atol=1e-3)
    # Large scores / small epsilon stay finite (the shift before exp()).
    assert torch.isfinite(sinkhorn_knopp(scores * 100, epsilon=0.01)).all()


def test_swapped_prediction_loss_by_formula_and_gradient():
    torch.manual_seed(1)
    a = torch.randn(8, 5, requires_grad=True)
    b = torch.randn(8, 5, requires_grad=True)
    loss = swapped_prediction_loss(a, b, temperature=0.1)
    qa, qb = sinkhorn_knopp(a), sinkhorn_knopp(b)
    by_hand = -0.5 * (
        (qb * torch.log_softmax(a / 0.1, 1)).sum(1).mean()
        + (qa * torch.log_softmax(b / 0.1, 1)).sum(1).mean()
    )
    assert torch.allclose(loss, by_hand)
    (grad_a,) = torch.autograd.grad(loss, a)
    # The codes are targets: d loss / d a = -0.5 * (qb - softmax(a / T)) / (T * B).
    assert torch.allclose(grad_a, -0.5 * (qb - torch.softmax(a / 0.1, 1)) / (0.1 * 8), atol=1e-6)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="batch, prototypes"):
        sinkhorn_knopp(torch.randn(4))
    with pytest.raises(ValueError, match="one shape"):
        swapped_prediction_loss(torch.randn(4, 3), torch.randn(4, 2))
