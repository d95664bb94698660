"""SimPLe's losses (Abner228/SmileCode @52b1944): the unlabeled-ignoring cross entropy, the pairwise
contrastive BCE of stage 1 and the similarity-aware label propagation of stage 2.

Pixels are flattened from ``features`` (B, D, *spatial) and ``targets`` (B, *spatial) with values 1
(positive), 0 (negative) or ``UNKNOWN`` (unlabeled; the official code stores 2 and uses ignore_index=2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common.data.weak_labels import UNKNOWN

__all__ = ["pairwise_contrastive_bce", "partial_cross_entropy", "similarity_propagation"]


def partial_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy over labelled pixels, ignoring ``UNKNOWN`` (a PU-style mask); 0 when none is
    labelled (torch would return NaN; the official code never meets that case)."""
    if not (targets != UNKNOWN).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), targets, ignore_index=UNKNOWN)


def _pixels(features: torch.Tensor) -> torch.Tensor:
    """(B, D, *spatial) -> (B * prod(spatial), D), in the order of ``targets.reshape(-1)``."""
    return features.movedim(1, -1).reshape(-1, features.shape[1])


def pairwise_contrastive_bce(
    features: torch.Tensor,
    targets: torch.Tensor,
    *,
    num_samples: int = 100,
    temperature: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Stage 1's contrastive loss (stage1/train.py).

    Up to ``num_samples`` positive and ``num_samples`` negative pixel features are drawn at random; for every
    pair (i < j) except negative-negative pairs, ``sigmoid(cos(f_i, f_j) / T)`` is fit by binary cross
    entropy to 1 for positive-positive and 0 for positive-negative pairs. Computed with logits (the same
    value as the official BCE of the sigmoid, without its overflow). 0 without a positive or a negative."""
    flat = _pixels(features)
    labels = targets.reshape(-1)
    pos_index = torch.nonzero(labels == 1).squeeze(1)
    neg_index = torch.nonzero(labels == 0).squeeze(1)
    if len(pos_index) == 0 or len(neg_index) == 0:
        return features.sum() * 0.0
    device = features.device
    pos_index = pos_index[torch.randperm(len(pos_index), generator=generator).to(device)[:num_samples]]
    neg_index = neg_index[torch.randperm(len(neg_index), generator=generator).to(device)[:num_samples]]
    samples = F.normalize(flat[torch.cat([pos_index, neg_index])].float(), dim=1)
    num_pos = len(pos_index)
    logits = samples @ samples.T / temperature
    is_pos = torch.arange(len(samples), device=device) < num_pos
    upper = torch.triu(torch.ones_like(logits, dtype=torch.bool), diagonal=1)
    valid = upper & (is_pos[:, None] | is_pos[None, :])  # negative-negative pairs are not used
    target = (is_pos[:, None] & is_pos[None, :]).float()
    return F.binary_cross_entropy_with_logits(logits[valid], target[valid])


@torch.no_grad()
def similarity_propagation(
    features: torch.Tensor,
    targets: torch.Tensor,
    *,
    num_anchors: int = 100,
    similarity_threshold: float = 0.96,
    vote_fraction: float = 0.96,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SimPLe's pseudo-labels (stage2/train.py): an unlabeled pixel becomes positive when its (detached)
    feature has cosine similarity > ``similarity_threshold`` (lambda) with more than ``vote_fraction * N``
    (alpha * N) of ``N = num_anchors`` randomly drawn positive pixels. Returns targets of the shape of
    ``targets``: 1 for propagated pixels, ``UNKNOWN`` everywhere else (labels only ever grow positive).
    As in the official code the vote threshold uses the configured N even when fewer positives exist."""
    flat = F.normalize(_pixels(features.detach()).float(), dim=1)
    labels = targets.reshape(-1)
    pseudo = torch.full_like(labels, UNKNOWN)
    unlabeled = torch.nonzero(labels == UNKNOWN).squeeze(1)
    positives = torch.nonzero(labels == 1).squeeze(1)
    if len(unlabeled) == 0 or len(positives) == 0:
        return pseudo.reshape(targets.shape)
    anchors = positives[
        torch.randperm(len(positives), generator=generator).to(positives.device)[:num_anchors]
    ]
    similarity = flat[unlabeled] @ flat[anchors].T
    votes = (similarity > similarity_threshold).sum(dim=1)
    pseudo[unlabeled[votes > vote_fraction * num_anchors]] = 1
    return pseudo.reshape(targets.shape)
