"""Balanced soft cluster assignments by Sinkhorn-Knopp, and the swapped-prediction loss, as in SwAV (Caron
et al., NeurIPS 2020, Alg. 1 and `distributed_sinkhorn` of facebookresearch/swav, one process): the assignment
of a batch to K prototypes is pushed toward equal use of every prototype, which keeps online clustering from
collapsing onto one cluster."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """(B, K) prototype scores -> (B, K) soft assignments, each row summing to 1, every prototype taking
    about B / K of the mass after enough iterations. `epsilon` is the entropy weight (SwAV: 0.05), 3 rounds of
    alternate normalisation as in SwAV. Computed in float32 without gradient (the codes are targets)."""
    if scores.ndim != 2 or scores.shape[0] < 1 or scores.shape[1] < 1:
        raise ValueError(f"scores must be (batch, prototypes), got shape {tuple(scores.shape)}")
    if epsilon <= 0 or iterations < 1:
        raise ValueError(f"epsilon must be > 0 and iterations >= 1, got {epsilon}, {iterations}")
    batch, prototypes = scores.shape
    # The official alternate normalisation, done on logarithms: equal to it, and finite where exp() of the
    # scores would overflow or a whole row underflow (small epsilon, large scores).
    log_q = (scores.float() / epsilon).t()  # (K, B)
    log_q = log_q - torch.logsumexp(log_q.flatten(), dim=0)
    for _ in range(iterations):
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(prototypes)  # prototype: 1/K
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(batch)  # example: 1/B
    return (log_q + math.log(batch)).exp().t()


def swapped_prediction_loss(
    scores_a: torch.Tensor,
    scores_b: torch.Tensor,
    temperature: float = 0.1,
    epsilon: float = 0.05,
    iterations: int = 3,
) -> torch.Tensor:
    """SwAV's loss for two views' (B, K) prototype scores: each view predicts the other's Sinkhorn codes,
    cross entropy of softmax(scores / temperature), averaged over the two directions and the batch."""
    if scores_a.shape != scores_b.shape:
        raise ValueError(
            f"both views need scores of one shape, got {tuple(scores_a.shape)} and {tuple(scores_b.shape)}"
        )
    codes_a, codes_b = (
        sinkhorn_knopp(scores_a, epsilon, iterations),
        sinkhorn_knopp(scores_b, epsilon, iterations),
    )
    log_p_a, log_p_b = (
        F.log_softmax(scores_a / temperature, dim=1),
        F.log_softmax(scores_b / temperature, dim=1),
    )
    return -0.5 * ((codes_b * log_p_a).sum(dim=1).mean() + (codes_a * log_p_b).sum(dim=1).mean())
