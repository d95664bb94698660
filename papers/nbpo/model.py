"""The two factorisations of NBPO: the preference model R = U V^T (common `MatrixFactorization`, no biases)
and the flip model G = P Q^T, phi = sigmoid(G) the probability that a liked item is left unvoted. Both use the
official initialisation (`_NBPO.py`): U, V ~ Uniform(0, 1) / sqrt(K0); P ~ 5 Uniform(0, 1) / sqrt(K1) and
Q ~ -5 Uniform(0, 1) / sqrt(K1), so that G starts near -25/4 and every flip probability starts near 0."""

from __future__ import annotations

import math

import torch
from torch import nn

from common.lit.recommender import MatrixFactorization

__all__ = ["FlipFactorization", "preference_model"]


def _uniform_(weight: torch.Tensor, scale: float, generator: torch.Generator) -> None:
    with torch.no_grad():
        weight.copy_(scale * torch.rand(weight.shape, generator=generator) / math.sqrt(weight.shape[1]))


def preference_model(
    num_users: int, num_items: int, dim: int, generator: torch.Generator
) -> MatrixFactorization:
    """MF without biases, U and V drawn from Uniform(0, 1/sqrt(dim)) as in the official code."""
    model = MatrixFactorization(num_users, num_items, dim, bias=False)
    _uniform_(model.users.weight, 1.0, generator)
    _uniform_(model.items.weight, 1.0, generator)
    return model


class FlipFactorization(nn.Module):
    """Low-rank flip logits G_uj = P_u . Q_j (one parameter per pair would be far too many, Section 4.2)."""

    def __init__(self, num_users: int, num_items: int, dim: int, generator: torch.Generator):
        super().__init__()
        self.users, self.items = nn.Embedding(num_users, dim), nn.Embedding(num_items, dim)
        _uniform_(self.users.weight, 5.0, generator)
        _uniform_(self.items.weight, -5.0, generator)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Flip logits of (users[b], items[b, ...]) pairs; items may carry extra dimensions (samples)."""
        user_factors = self.users(users)
        item_factors = self.items(items)
        while user_factors.ndim < item_factors.ndim:
            user_factors = user_factors.unsqueeze(-2)
        return (user_factors * item_factors).sum(-1)

    def probability_all(self) -> torch.Tensor:
        """(users, items) flip probabilities phi."""
        return torch.sigmoid(self.users.weight @ self.items.weight.T)
