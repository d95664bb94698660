"""Positive-unlabeled risks and pairwise ranking loss shared by the PU and implicit-feedback papers.

* uPU (du Plessis et al., ICML 2015) and nnPU (Kiryo et al., NeurIPS 2017): with class prior pi, the
  unbiased risk is  pi R_p^+ + (R_u^- - pi R_p^-),  R_p^+ = E_P[l(g)], R_p^- = E_P[l(-g)], R_u^- = E_U[l(-g)].
  nnPU keeps the negative part from going below -beta: when it does, the reported risk is
  pi R_p^+ - beta and the step instead descends -gamma (R_u^- - pi R_p^-), i.e. it pushes the negative risk
  back up (the "defitting" step of Algorithm 1).
* VPU (Chen et al., NeurIPS 2020): with Phi(x) in (0, 1) the classifier's positive probability,
  L_var = log E_all[Phi] - E_P[log Phi]; the MixUp regulariser is E[(log target - log Phi(x_mix))^2] with
  target = lam Phi(x_u) + (1 - lam) for x_mix = lam x_u + (1 - lam) x_p.
* BPR (Rendle et al., UAI 2009): -log sigmoid(s_pos - s_neg) per (user, positive, negative) triple.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common.registry import register_loss

SURROGATES = ("sigmoid", "logistic")


@dataclass(frozen=True)
class PURisk:
    """``loss`` is what to back-propagate; ``risk`` (detached) is the risk estimate to log."""

    loss: torch.Tensor
    risk: torch.Tensor
    positive_risk: torch.Tensor
    negative_risk: torch.Tensor


def _surrogate(name: str, margin: torch.Tensor) -> torch.Tensor:
    if name == "sigmoid":  # l(z) = sigmoid(-z), the loss of the nnPU paper's experiments
        return torch.sigmoid(-margin)
    if name == "logistic":  # l(z) = log(1 + exp(-z))
        return F.softplus(-margin)
    raise ValueError(f"unknown surrogate loss {name!r}; choose from {SURROGATES}.")


def _pu_parts(scores: torch.Tensor, is_labeled: torch.Tensor, prior: float, surrogate: str):
    if scores.ndim != 1 or is_labeled.shape != scores.shape:
        raise ValueError(
            f"scores and is_labeled must be 1-D of the same length; got {tuple(scores.shape)} and "
            f"{tuple(is_labeled.shape)}."
        )
    if not 0.0 < float(prior) < 1.0:
        raise ValueError(f"the class prior must lie in (0, 1), got {prior}.")
    labeled = is_labeled.to(torch.bool)
    # As in the reference implementation, an empty side of the batch counts as one example of loss 0.
    n_pos = labeled.sum().clamp_min(1)
    n_unl = (~labeled).sum().clamp_min(1)
    as_positive = _surrogate(surrogate, scores)
    as_negative = _surrogate(surrogate, -scores)
    positive_risk = prior * (as_positive * labeled).sum() / n_pos
    negative_risk = (as_negative * ~labeled).sum() / n_unl - prior * (as_negative * labeled).sum() / n_pos
    return positive_risk, negative_risk


@register_loss("upu")
def upu_risk(
    scores: torch.Tensor, is_labeled: torch.Tensor, prior: float, *, surrogate: str = "sigmoid"
) -> PURisk:
    """Unbiased PU risk of real-valued ``scores`` (N,); ``is_labeled`` marks the labeled positives, the
    rest of the batch is unlabeled."""
    positive_risk, negative_risk = _pu_parts(scores, is_labeled, prior, surrogate)
    risk = positive_risk + negative_risk
    return PURisk(risk, risk.detach(), positive_risk.detach(), negative_risk.detach())


@register_loss("nnpu")
def nnpu_risk(
    scores: torch.Tensor,
    is_labeled: torch.Tensor,
    prior: float,
    *,
    beta: float = 0.0,
    gamma: float = 1.0,
    surrogate: str = "sigmoid",
) -> PURisk:
    """Non-negative PU risk; ``loss`` is the defitting objective -gamma * negative risk whenever the
    negative risk is below -beta, else the unbiased risk."""
    if beta < 0 or not 0.0 < gamma <= 1.0:
        raise ValueError(f"nnPU needs beta >= 0 and 0 < gamma <= 1, got beta={beta}, gamma={gamma}.")
    positive_risk, negative_risk = _pu_parts(scores, is_labeled, prior, surrogate)
    if bool(negative_risk.detach() < -beta):
        loss = -gamma * negative_risk
        risk = positive_risk.detach() - beta
    else:
        loss = positive_risk + negative_risk
        risk = loss.detach()
    return PURisk(loss, risk, positive_risk.detach(), negative_risk.detach())


@register_loss("vpu")
def vpu_loss(log_phi_all: torch.Tensor, log_phi_positive: torch.Tensor) -> torch.Tensor:
    """Variational PU loss log mean(Phi(all)) - mean(log Phi(positives)), from log-probabilities of the
    positive class (use ``F.logsigmoid`` or a log-softmax column for stability). "All" is every example of
    the batch (labeled and unlabeled), as in the paper."""
    if (
        log_phi_all.ndim != 1
        or log_phi_positive.ndim != 1
        or not len(log_phi_all)
        or not len(log_phi_positive)
    ):
        raise ValueError("vpu_loss takes non-empty 1-D log-probabilities of the positive class.")
    log_mean_all = torch.logsumexp(log_phi_all, 0) - math.log(len(log_phi_all))
    return log_mean_all - log_phi_positive.mean()


def vpu_mixup_regularizer(
    log_phi_mixed: torch.Tensor, phi_unlabeled: torch.Tensor, lam: float | torch.Tensor
) -> torch.Tensor:
    """Mean squared log-gap between Phi at mixed inputs lam x_u + (1 - lam) x_p and the mixed target
    lam Phi(x_u) + (1 - lam) (a positive's Phi is 1); ``phi_unlabeled`` is usually detached."""
    if log_phi_mixed.shape != phi_unlabeled.shape:
        raise ValueError("log_phi_mixed and phi_unlabeled must have the same shape (one per mixed pair).")
    target = lam * phi_unlabeled + (1.0 - lam)
    return ((torch.log(target) - log_phi_mixed) ** 2).mean()


@register_loss("bpr")
def bpr_loss(
    positive_scores: torch.Tensor, negative_scores: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Bayesian personalised ranking: -log sigmoid(s_pos - s_neg) (= softplus(s_neg - s_pos)), per triple."""
    if positive_scores.shape != negative_scores.shape:
        raise ValueError(
            f"positive and negative scores must pair up; got {tuple(positive_scores.shape)} and "
            f"{tuple(negative_scores.shape)}."
        )
    losses = -F.logsigmoid(positive_scores - negative_scores)
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    if reduction == "none":
        return losses
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
