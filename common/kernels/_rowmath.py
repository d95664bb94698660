"""Per-row InfoNCE algebra shared by the chunked and Triton backends.

Each backend reduces row i of the similarity matrix to a few statistics (all in log space):
  lse_a[i] = LSE_{j in neg(i)} (1 + beta) s_ij,
  lse_b[i] = LSE_{j in neg(i)} beta s_ij        (only for beta > 0),
  pos_logit[i] = s_{i, p_i},  num_negatives[i] = |neg(i)|.
Then log S_i = log n_i + lse_a - lse_b (HCL), which is lse_a when beta = 0, and everything else is O(N).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class RowStats(NamedTuple):
    """Streaming statistics of the negatives of every query row."""

    lse_a: torch.Tensor
    lse_b: torch.Tensor | None
    pos_logit: torch.Tensor
    num_negatives: torch.Tensor


class RowLoss(NamedTuple):
    """Per-row loss and the derivatives the backward pass needs.

    neg_coef:  dloss/dlog S_i; the tile gradient is neg_coef_i * dlog S_i / ds_ij.
    pos_coef:  dloss/ds_{i,p_i}, all paths included.
    inv_temp_coef: dloss/d(1/temperature) through the DCL floor n_i exp(-1/temperature) only.
    """

    loss: torch.Tensor
    neg_coef: torch.Tensor
    pos_coef: torch.Tensor
    inv_temp_coef: torch.Tensor
    lse_a: torch.Tensor
    lse_b: torch.Tensor | None


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate near 0 and for very negative x."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def combine_rows(stats: RowStats, inv_temp: float, beta: float, tau_plus: float) -> RowLoss:
    """Loss per row from the streamed statistics, plus the coefficients for the backward pass."""
    n = stats.num_negatives
    has_neg = n > 0
    log_n = torch.log(torch.where(has_neg, n, torch.ones_like(n)))
    # Rows without negatives get finite placeholders so no inf/nan reaches the tiles in backward.
    lse_a = torch.where(has_neg, stats.lse_a, torch.zeros_like(stats.lse_a))
    lse_b = None
    if beta > 0:
        assert stats.lse_b is not None
        lse_b = torch.where(has_neg, stats.lse_b, torch.zeros_like(stats.lse_b))
        log_s = log_n + lse_a - lse_b
    else:
        log_s = lse_a
    s_pos = stats.pos_logit

    dlogg_dlogs = torch.ones_like(log_s)
    dlogg_dpos = torch.zeros_like(log_s)
    dlogg_dinv = torch.zeros_like(log_s)
    if tau_plus > 0:
        # DCL: G = max((S - tau+ n pos) / (1 - tau+), n exp(-1/temperature)), in log space.
        floor = log_n - inv_temp
        x = math.log(tau_plus) + log_n + s_pos - log_s  # log(tau+ n pos / S)
        below = x < 0
        x_safe = torch.where(below, x, torch.full_like(x, -1.0))
        debiased = torch.where(below, log_s + _log1mexp(x_safe) - math.log1p(-tau_plus), -torch.inf)
        use_floor = floor >= debiased
        log_g = torch.maximum(debiased, floor)
        ratio = torch.exp(x_safe) / -torch.expm1(x_safe)  # tau+ n pos / (S - tau+ n pos)
        dlogg_dlogs = torch.where(use_floor, 0.0, 1.0 + ratio)
        dlogg_dpos = torch.where(use_floor, 0.0, -ratio)
        dlogg_dinv = torch.where(use_floor, -1.0, 0.0)
    else:
        log_g = log_s

    margin = log_g - s_pos
    zero = torch.zeros_like(margin)
    loss = torch.where(has_neg, torch.logaddexp(zero, margin), zero)  # log(pos + G) - s_pos
    dloss_dlogg = torch.where(has_neg, torch.sigmoid(margin), zero)
    return RowLoss(
        loss=loss,
        neg_coef=dloss_dlogg * dlogg_dlogs,
        pos_coef=dloss_dlogg * dlogg_dpos - dloss_dlogg,
        inv_temp_coef=dloss_dlogg * dlogg_dinv,
        lse_a=lse_a,
        lse_b=lse_b,
    )
