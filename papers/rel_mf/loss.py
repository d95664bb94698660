"""The Rel-MF pointwise loss: an inverse-propensity-weighted estimate of the ideal (relevance) loss.

Saito, Yaginuma, Nishino, Sakata & Nakata, WSDM 2020, Eq. (9) and the clipped estimator of Section 4:

    L(r_hat) = sum_ui [ (Y_ui / theta_ui) * l+(r_hat_ui) + w * (1 - Y_ui / theta_ui) * l-(r_hat_ui) ]
               / sum_ui [ Y_ui + w * (1 - Y_ui) ],      theta_ui clipped to [M, 1],

with clicks ``Y``, exposure propensities ``theta`` (all ones: naive MF), clipping threshold ``M`` (0: the
unbiased estimator) and ``w`` the weight of unclicked pairs (1 for Rel-MF; the official WMF baseline uses
the same loss with theta = 1 and w < 1, i.e. positives up-weighted by 1 / w). The normaliser is the
official one (`src/models/recommenders.py` of usaito/unbiased-implicit-rec-real); it is the batch size
when w = 1. Two per-pair losses, as in the two official code bases:
  * ``squared`` (real-world code): l+(p) = (1 - p)^2, l-(p) = p^2 with p = sigmoid(r_hat);
  * ``log`` (semi-synthetic code, usaito/unbiased-implicit-rec `src/utils/models.py`): l+ = -log p,
    l- = -log(1 - p).
Both estimate the ideal loss sum_ui [gamma_ui l+ + (1 - gamma_ui) l-] without bias when theta is the true
exposure probability and M = 0, since E[Y / theta] = gamma.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POINTWISE_LOSSES = ("squared", "log")

__all__ = ["POINTWISE_LOSSES", "pointwise_parts", "rel_mf_loss"]


def pointwise_parts(logits: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(l+, l-) per pair: the loss of calling the pair relevant and irrelevant."""
    if kind == "squared":
        p = torch.sigmoid(logits)
        return (1.0 - p) ** 2, p**2
    if kind == "log":
        # logsigmoid keeps log p and log(1 - p) finite for saturated logits.
        return -F.logsigmoid(logits), -F.logsigmoid(-logits)
    raise ValueError(f"unknown pointwise loss {kind!r}; use one of {POINTWISE_LOSSES}")


def rel_mf_loss(
    logits: torch.Tensor,
    clicks: torch.Tensor,
    propensity: torch.Tensor | None = None,
    *,
    clip: float = 0.0,
    negative_weight: float = 1.0,
    kind: str = "squared",
) -> torch.Tensor:
    """The (clipped) inverse-propensity pointwise loss of a batch; ``propensity=None`` is theta = 1."""
    if logits.shape != clicks.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and clicks {tuple(clicks.shape)} differ in shape")
    if not 0.0 <= clip <= 1.0:
        raise ValueError(f"clip must be in [0, 1], got {clip}")
    if negative_weight <= 0:
        raise ValueError(f"negative_weight must be > 0, got {negative_weight}")
    clicks = clicks.to(logits.dtype)
    if propensity is None:
        weight = clicks
    else:
        theta = propensity.to(logits.dtype).clamp(min=clip, max=1.0)
        if clip == 0.0 and bool((theta[clicks > 0] <= 0).any()):
            raise ValueError("a clicked pair has propensity 0: its inverse weight is infinite (set clip > 0)")
        weight = torch.where(clicks > 0, clicks / theta, torch.zeros_like(clicks))
    positive, negative = pointwise_parts(logits, kind)
    total = weight * positive + negative_weight * (1.0 - weight) * negative
    return total.sum() / (clicks + negative_weight * (1.0 - clicks)).sum()
