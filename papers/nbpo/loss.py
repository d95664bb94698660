"""Objectives of the NBPO paper (Yu & Qin, SIGIR 2020) over one batch of voted pairs (u, i), each with
``S`` sampled unvoted items j of the same user. All are sums over the batch (the official code sums the
gradients of a batch and takes one step), to be minimised.

Notation: R = U_u . V_i is the preference logit, r = sigmoid(R) = p(z = 1) the probability that the user
truly likes the item; G = P_u . Q_j is the flip logit, phi = sigmoid(G) the probability that a liked item
is left unvoted (a positive mislabelled as negative).

* BPR: -sum log sigmoid(R_i - R_j) over the (i, j) pairs.
* BPO (Bayesian point-wise optimisation): -sum [log r_i + log(1 - r_j)] over the (i, j) pairs, so each voted
  pair counts once per sampled unvoted item, as in the official `_BPO.py`.
* NBPO likelihood: voted y = 1 has p(y=1) = r (1 - phi), unvoted y = 0 has p(y=0) = (1 - r) + r phi.
* NBPO surrogate (what the paper optimises, official `_NBPO.py`): its gradients are
    voted:   dJ/dR = (1 - phi)(1 - r),       dJ/dG = -phi r,
    unvoted: dJ/dR = phi (1 - r) - r,        dJ/dG = (1 - phi) r,
  (J the objective to maximise). That field has no potential (its mixed partials differ), so the loss
  below reproduces it with stop-gradients: each factor taken from the other branch is detached,
    J = sum_voted [ sg(1 - phi) log r + sg(r) log(1 - phi) ]
      + sum_unvoted [ sg(phi) log r + log(1 - r) + sg(r) log phi ].
  With phi = 0 the R-part is BPO's; an unvoted item that is probably flipped (phi -> 1) is pulled towards
  r = 1/2 instead of 0, which is how NBPO stops pushing down unvoted items the user may like.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common.losses import bpr_loss as common_bpr_loss

__all__ = ["bpo_loss", "bpr_loss", "nbpo_negative_log_likelihood", "nbpo_surrogate_loss"]


def _check(pos: torch.Tensor, neg: torch.Tensor) -> None:
    if pos.ndim != 1 or neg.ndim != 2 or neg.shape[0] != pos.shape[0]:
        raise ValueError(
            f"need voted logits (B,) and unvoted logits (B, S); got {tuple(pos.shape)} and {tuple(neg.shape)}"
        )


def bpr_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
    """-sum log sigmoid(R_ui - R_uj) over every (voted, sampled unvoted) pair (common's BPR, summed)."""
    _check(pos_logits, neg_logits)
    return common_bpr_loss(pos_logits.unsqueeze(1).expand_as(neg_logits), neg_logits, reduction="sum")


def bpo_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
    """-sum [log sigmoid(R_ui) + log sigmoid(-R_uj)] over every (voted, sampled unvoted) pair."""
    _check(pos_logits, neg_logits)
    samples = neg_logits.shape[1]
    return -(samples * F.logsigmoid(pos_logits).sum() + F.logsigmoid(-neg_logits).sum())


def nbpo_surrogate_loss(
    pos_logits: torch.Tensor, pos_flip: torch.Tensor, neg_logits: torch.Tensor, neg_flip: torch.Tensor
) -> torch.Tensor:
    """Minus the surrogate objective J of the module docstring; its autograd gradients with respect to R and
    G are the official surrogate gradients (voted terms counted once per sampled unvoted item)."""
    _check(pos_logits, neg_logits)
    if pos_flip.shape != pos_logits.shape or neg_flip.shape != neg_logits.shape:
        raise ValueError("flip logits must have the shapes of the preference logits")
    samples = neg_logits.shape[1]
    pos_r, pos_phi = torch.sigmoid(pos_logits).detach(), torch.sigmoid(pos_flip).detach()
    neg_r, neg_phi = torch.sigmoid(neg_logits).detach(), torch.sigmoid(neg_flip).detach()
    voted = (1.0 - pos_phi) * F.logsigmoid(pos_logits) + pos_r * F.logsigmoid(-pos_flip)
    unvoted = neg_phi * F.logsigmoid(neg_logits) + F.logsigmoid(-neg_logits) + neg_r * F.logsigmoid(neg_flip)
    return -(samples * voted.sum() + unvoted.sum())


def nbpo_negative_log_likelihood(
    pos_logits: torch.Tensor, pos_flip: torch.Tensor, neg_logits: torch.Tensor, neg_flip: torch.Tensor
) -> torch.Tensor:
    """-sum log p(observed label) under the NBPO noise model (voted terms counted once per sample)."""
    _check(pos_logits, neg_logits)
    samples = neg_logits.shape[1]
    voted = F.logsigmoid(pos_logits) + F.logsigmoid(-pos_flip)
    # log(1 - r (1 - phi)) = log(1 - sigmoid(R) sigmoid(-G)), computed from the logits for stability.
    unvoted = torch.log1p(-torch.sigmoid(neg_logits) * torch.sigmoid(-neg_flip))
    return -(samples * voted.sum() + unvoted.sum())
