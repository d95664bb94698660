"""Robust self-supervised (RSS) training losses (Saberi et al., ICLR 2024, arXiv 2310.00027).

The RSS estimator minimises (1/m) sum_i phi_gamma(X_i, y_i; theta) + (lambda/n) sum_j phi_gamma'(X'_j,
h_theta(X'_j); theta) with the robust (Wasserstein-DRO dual) loss phi_gamma(X, y; theta) = sup_Z l(Z, y;
theta) - gamma c(Z, X) (poster/boxes/framework.tex, deepmancer/rss-training-iclr2024). Two instantiations of
the official code:

- Simulation (code/Simulation/SVM_Robustness.ipynb, `RobustTrainer.loss_fn`): a linear score f(x) = w^T x and
  the clipped hinge l = clamp(1 - gamma y f, 0, 1); the pseudo-label is h(x') = sign(f(x')), so the unlabeled
  term is clamp(1 - gamma' |f(x')|, 0, 1). There gamma and gamma' act as margin scales, no inner maximisation
  is run.
- Histopathology (Experiments/Histopathology/MainPart/TrainingFlow.py, `optimize_x_adv`): cross entropy, cost
  c(Z, X) = ||Z - X||^2, the sup approximated by `steps` gradient-ascent steps of size alpha / (t + 1) from Z
  = X, losses summed over the batch and divided by its size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def clipped_hinge(margins: torch.Tensor, scale: float) -> torch.Tensor:
    """Mean of clamp(1 - scale * margins, 0, 1) (margins = y f(x))."""
    return torch.clamp(1 - scale * margins, min=0, max=1).mean()


def rss_linear_loss(
    labeled_scores: torch.Tensor,
    labels: torch.Tensor,
    unlabeled_scores: torch.Tensor | None,
    gamma: float,
    gamma_unlabeled: float,
    lam: float,
) -> torch.Tensor:
    """The simulation's RSS objective: clipped hinge on labelled margins y f(x) (labels in {-1, +1}) plus
    `lam` times the clipped hinge on the self-labelled margins sign(f(x')) f(x') = |f(x')|."""
    loss = clipped_hinge(labels * labeled_scores, gamma)
    if unlabeled_scores is not None and unlabeled_scores.numel() and lam:
        loss = loss + lam * clipped_hinge(unlabeled_scores.abs(), gamma_unlabeled)
    return loss


def sum_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross entropy summed over the batch (the official criterion uses reduction="sum")."""
    return F.cross_entropy(logits, targets, reduction="sum")


def dro_perturb(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    *,
    steps: int,
    step_size: float,
    gamma: float,
    loss_fn: LossFn = sum_cross_entropy,
) -> torch.Tensor:
    """Approximate argmax_Z loss_fn(model(Z), targets) - gamma ||Z - x||^2 by `steps` gradient-ascent steps of
    size step_size / (t + 1) from Z = x. Returns Z detached; the model's parameters get no gradient."""
    z = x.detach().clone()
    for t in range(steps):
        z.requires_grad_(True)
        objective = loss_fn(model(z), targets) - gamma * torch.sum((z - x.detach()) ** 2)
        (grad,) = torch.autograd.grad(objective, z)
        z = (z + step_size / (t + 1) * grad).detach()
    return z


def robust_loss(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    *,
    steps: int,
    step_size: float,
    gamma: float,
    loss_fn: LossFn = sum_cross_entropy,
) -> torch.Tensor:
    """phi_gamma averaged over the batch: [loss_fn(model(Z*), targets) - gamma ||Z* - x||^2] / len(x), with Z*
    from `dro_perturb` (held fixed, as in the official code: the gradient flows through the model only)."""
    z = dro_perturb(model, x, targets, steps=steps, step_size=step_size, gamma=gamma, loss_fn=loss_fn)
    cost = torch.sum((z - x.detach()) ** 2)
    return (loss_fn(model(z), targets) - gamma * cost) / len(x)


def rss_loss(
    model: nn.Module,
    labeled_x: torch.Tensor,
    labels: torch.Tensor,
    unlabeled_x: torch.Tensor | None,
    *,
    gamma: float,
    gamma_unlabeled: float,
    lam: float,
    steps: int,
    step_size: float,
) -> torch.Tensor:
    """RSS objective with cross entropy: robust loss on the labelled batch plus `lam` times the robust loss
    on the unlabeled batch against the model's own hard predictions h_theta(X') on the clean inputs
    (detached)."""
    loss = robust_loss(model, labeled_x, labels, steps=steps, step_size=step_size, gamma=gamma)
    if unlabeled_x is not None and len(unlabeled_x) and lam:
        with torch.no_grad():
            pseudo = model(unlabeled_x).argmax(dim=1)
        loss = loss + lam * robust_loss(
            model, unlabeled_x, pseudo, steps=steps, step_size=step_size, gamma=gamma_unlabeled
        )
    return loss
