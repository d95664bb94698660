"""The Coupled Estimation Technique's losses (official caiyinqiong/Coupled_Estimation_Technique @8ed7f1e,
train.py and modeling.py; facts and formulas only).

Both the relevance model R (the ranker) and the selection model S (the "observer", same architecture and
inputs) are trained on (query, labelled positive, sampled negative) pairs with the 2-way softmax
cross-entropy of the pair, -log softmax([s(q, d+), s(q, d-)])_0 = softplus(s(q, d-) - s(q, d+)). The pair
loss of each model is weighted by the *other* model's estimate for the negative, detached:

    w_R = 1 / (1 - sigmoid(S(q, d-) / T)),   w_S = 1 / (1 - sigmoid(R(q, d-) / T)),

with T the official `debias_ratio` (10 in ranker.sh), and each weighted loss is sum_i w_i l_i / num_pairs (no
normalisation of the weights). Only R ranks at test time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MatchScorer", "coupled_losses", "inverse_selection_weight", "pairwise_softmax_loss"]


def pairwise_softmax_loss(positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> torch.Tensor:
    """Per-pair cross-entropy of picking the positive among (positive, negative)."""
    return F.softplus(negative_scores - positive_scores)


def inverse_selection_weight(negative_scores: torch.Tensor, debias_ratio: float) -> torch.Tensor:
    """1 / (1 - sigmoid(score / T)) per pair, without gradient (>= 1; large where the other model scores the
    negative high)."""
    if debias_ratio <= 0:
        raise ValueError(f"debias_ratio must be > 0, got {debias_ratio}")
    # 1 / (1 - sigmoid(x)) = 1 + exp(x), computed without the cancellation of 1 - sigmoid for large x.
    return 1.0 + torch.exp(negative_scores.detach() / debias_ratio)


def coupled_losses(
    relevance_positive: torch.Tensor,
    relevance_negative: torch.Tensor,
    selection_positive: torch.Tensor,
    selection_negative: torch.Tensor,
    debias_ratio: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(relevance model loss, selection model loss), each weighted by the other model's detached estimate."""
    num_pairs = relevance_positive.shape[0]
    relevance_weight = inverse_selection_weight(selection_negative, debias_ratio)
    selection_weight = inverse_selection_weight(relevance_negative, debias_ratio)
    relevance_loss = (
        relevance_weight @ pairwise_softmax_loss(relevance_positive, relevance_negative) / num_pairs
    )
    selection_loss = (
        selection_weight @ pairwise_softmax_loss(selection_positive, selection_negative) / num_pairs
    )
    return relevance_loss, selection_loss


class MatchScorer(nn.Module):
    """s(q, d) = scale * sum_k w_k q_k d_k: one learned match weight per feature dimension (a diagonal
    bilinear form on the concatenated views; the mini stand-in for a cross-encoder's linear head on its
    interaction features). w starts at N(0, init_std^2), as the official linear head's BERT initialisation
    (std 0.02); each model draws its own, so the relevance and selection models start apart, as in the
    official code. `scale` sets the score scale the weights 1/(1 - sigmoid(s / T)) see (see the README)."""

    def __init__(self, dim: int, *, init_std: float = 0.02, scale: float = 1.0, generator=None) -> None:
        super().__init__()
        self.scale = float(scale)
        self.match = nn.Parameter(torch.randn(dim, generator=generator) * float(init_std))

    def forward(self, queries: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
        """Scores of aligned (query, document) rows: (B, dim), (B, dim) -> (B,)."""
        return self.scale * (queries * self.match * documents).sum(-1)

    def score_matrix(self, queries: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
        """(Q, N) scores of every query against every document."""
        return self.scale * (queries * self.match) @ documents.T
