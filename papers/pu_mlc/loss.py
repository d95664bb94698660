"""PU-MLC loss (Yuan, Zhang & Huang, ICME 2024; arXiv 2306.16016): one variational PU problem per class.

For logits f (N, C) of a batch and observed labels y in {1, 0, -1} (only y = 1 is used: known negatives and
unknown entries are all "unlabeled", every example is in the "all" set of VPU):

    tau_c   = min(1, alpha * std_batch(f_c))                      (adaptive temperature, no gradient)
    Phi_c   = sigmoid(f_c / tau_c)
    w_c     = (1 - mean_all(1 - Phi_c)) ** gamma                  (adaptive re-balance factor, no gradient)
    L_var   = sum_c [ w_c * log mean_all(Phi_c) - mean_{y_c = 1} log Phi_c ]

and the MixUp regulariser over two half-batches (x1 permuted, one lam ~ Beta(mix_alpha, mix_alpha)):

    t       = 1 where y = 1 else sigmoid(f)                       (no temperature here)
    L_reg   = sum_c mean_pairs ( log(lam t1 + (1 - lam) t2) - log sigmoid(f(lam x1 + (1 - lam) x2)) )^2

Total loss L_var + L_reg. Behaviour follows the official code, TAKELAMAG/PU-MLC @ 5c54d37,
src/loss_functions/vpu_loss.py: population std over the batch, clamp at 1 only from above, detached (vpuLoss
lines 18-21); "unlabeled" is every example (line 25); 1/#positives set to 0 for a class without positives in
the batch (lines 28-31); w_c computed under no_grad on the tempered probabilities (lines 39-41); losses
summed over classes (lines 43-44); mixup halves, permutation of the first half, targets not detached, sum
over classes of the mean over pairs (mixup.forward). Numerics: log-sigmoid and log-mean-exp instead of
log(. + 1e-10), which agree wherever sigmoid > 1e-8; a zero batch std is floored at 1e-6 (no division by 0).

``common.losses.vpu_loss`` / ``vpu_mixup_regularizer`` are the binary forms: ``vpu_loss`` has no weight on
the log-mean term and takes one class at a time (a class needs a positive), and ``vpu_mixup_regularizer``
mixes an unlabeled example with a positive (other target fixed at 1). The versions here are the per-class,
weighted and two-sided generalisations; with gamma = 0 and tau = 1 they reduce to the shared ones class by
class (tests/papers/test_pu_mlc.py checks that).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from common.data.weak_labels import UNKNOWN

#: Floor of the temperature: the official code divides by the batch std, which is 0 for a constant column.
MIN_TEMPERATURE = 1e-6
#: Added inside the log of the mixed target, as in the official mixup (log(output_mix + 1e-10)).
LOG_EPS = 1e-10

__all__ = [
    "adaptive_temperature",
    "assume_negative_bce",
    "known_label_bce",
    "mixup_targets",
    "pu_mlc_mixup_regularizer",
    "pu_mlc_variational_loss",
    "rebalance_factor",
]


def _check(logits: torch.Tensor, observed: torch.Tensor) -> None:
    if logits.ndim != 2 or observed.shape != logits.shape:
        raise ValueError(
            f"logits and observed labels must both be (N, C); got {tuple(logits.shape)} and "
            f"{tuple(observed.shape)}."
        )


def adaptive_temperature(logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-class temperature min(1, alpha * std_batch(f_c)) (population std), detached; shape (C,)."""
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}.")
    std = logits.detach().std(dim=0, unbiased=False)
    return (alpha * std).clamp(min=MIN_TEMPERATURE, max=1.0)


def rebalance_factor(probs: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-class factor (1 - mean_all(1 - Phi_c)) ** gamma = mean_all(Phi_c) ** gamma, detached; (C,)."""
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}.")
    with torch.no_grad():
        return (1.0 - (1.0 - probs.detach()).mean(dim=0)).pow(gamma)


def pu_mlc_variational_loss(
    logits: torch.Tensor,
    observed: torch.Tensor,
    *,
    alpha: float = 1.0,
    gamma: float = 0.55,
    temperature: bool = True,
    rebalance: bool = True,
) -> torch.Tensor:
    """Sum over classes of the (re-balanced, tempered) variational PU loss; ``observed`` (N, C) in {1, 0, -1}.

    ``temperature=False`` uses tau = 1 and ``rebalance=False`` uses w = 1 (the ablations of the paper)."""
    _check(logits, observed)
    logits = logits.float()
    scaled = logits / adaptive_temperature(logits, alpha) if temperature else logits
    log_phi = F.logsigmoid(scaled)
    positive = (observed == 1).to(log_phi.dtype)
    n_pos = positive.sum(dim=0)
    log_mean_all = torch.logsumexp(log_phi, dim=0) - math.log(len(logits))
    # A class without a positive in the batch keeps only its unlabeled term (official: 1/0 -> 0).
    mean_log_pos = (log_phi * positive).sum(dim=0) / n_pos.clamp_min(1.0)
    weight = rebalance_factor(log_phi.exp(), gamma) if rebalance else torch.ones_like(log_mean_all)
    return (weight * log_mean_all - mean_log_pos).sum()


def mixup_targets(logits: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """MixUp targets of the unmixed batch: 1 for an observed positive, else sigmoid(f) (not detached)."""
    _check(logits, observed)
    probs = torch.sigmoid(logits.float())
    return torch.where(observed == 1, torch.ones_like(probs), probs)


def pu_mlc_mixup_regularizer(
    log_phi_mixed: torch.Tensor,
    targets_first: torch.Tensor,
    targets_second: torch.Tensor,
    lam: float | torch.Tensor,
) -> torch.Tensor:
    """Sum over classes of the mean over pairs of (log(lam t1 + (1 - lam) t2) - log Phi(x_mix))^2, (M, C)."""
    if not log_phi_mixed.shape == targets_first.shape == targets_second.shape or log_phi_mixed.ndim != 2:
        raise ValueError("mixed log-probabilities and both targets must be (pairs, classes) of one shape.")
    target = lam * targets_first + (1.0 - lam) * targets_second
    return ((torch.log(target + LOG_EPS) - log_phi_mixed) ** 2).mean(dim=0).sum()


def assume_negative_bce(logits: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Binary cross entropy with every entry that is not an observed positive taken as negative (mean)."""
    _check(logits, observed)
    return F.binary_cross_entropy_with_logits(logits.float(), (observed == 1).float())


def known_label_bce(logits: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Binary cross entropy over the annotated entries only (observed 1 or 0), mean over them; unknown
    entries (``UNKNOWN``) are ignored. 0 (with gradient) when nothing in the batch is annotated."""
    _check(logits, observed)
    known = (observed != UNKNOWN).float()
    per_entry = F.binary_cross_entropy_with_logits(logits.float(), (observed == 1).float(), reduction="none")
    return (per_entry * known).sum() / known.sum().clamp_min(1.0)
