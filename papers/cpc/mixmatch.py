"""The semi-supervised step of DivideMix (Li, Socher & Hoi, ICLR 2020) that CPC trains with.

Follows LiJunnan1992/DivideMix @39740b2, Train_CIFAR.py `train` and `SemiLoss`:
  * label refinement of labeled examples: ``sharpen(w * onehot(y) + (1 - w) * mean_views softmax)``;
  * label guessing of unlabeled examples: ``sharpen(mean over views and networks of softmax)``;
  * sharpening ``p^(1/T)`` renormalised (T = 0.5);
  * MixMatch: mixup of all inputs and targets with ``lam ~ Beta(alpha, alpha)``, ``lam = max(lam, 1 - lam)``;
  * loss ``Lx + lambda_u * ramp * Lu + prior penalty`` with ``Lx`` the soft cross entropy of the mixed
    labeled part, ``Lu`` the mean squared error of the mixed unlabeled part's softmax, the ramp linear over
    16 epochs after warm-up, and the penalty ``sum_c pi_c log(pi_c / mean_batch p_c)`` with a uniform prior.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "linear_rampup",
    "mixmatch_losses",
    "negative_entropy",
    "prior_penalty",
    "refine_labels",
    "sharpen",
]


def sharpen(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``p^(1/T) / sum_c p_c^(1/T)`` row-wise."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    powered = probs ** (1.0 / temperature)
    return powered / powered.sum(dim=1, keepdim=True)


def refine_labels(
    probs: torch.Tensor, labels: torch.Tensor, clean_prob: torch.Tensor, temperature: float
) -> torch.Tensor:
    """DivideMix's label refinement: the observed one-hot label and the model's prediction mixed by the
    clean probability ``w``, then sharpened."""
    onehot = F.one_hot(labels, probs.shape[1]).to(probs.dtype)
    w = clean_prob.to(probs.dtype).view(-1, 1)
    return sharpen(w * onehot + (1.0 - w) * probs, temperature)


def linear_rampup(current: float, warmup: float, length: float = 16.0) -> float:
    """``clip((current - warmup) / length, 0, 1)``: the weight ramp of the unlabeled loss."""
    return float(min(max((current - warmup) / length, 0.0), 1.0))


def prior_penalty(logits: torch.Tensor) -> torch.Tensor:
    """``KL(uniform || mean softmax)``: keeps the batch's mean prediction from collapsing onto few classes."""
    num_classes = logits.shape[1]
    prior = torch.full((num_classes,), 1.0 / num_classes, device=logits.device, dtype=torch.float32)
    mean_pred = F.softmax(logits.float(), dim=1).mean(0)
    return torch.sum(prior * torch.log(prior / mean_pred))


def negative_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``mean sum_c p_c log p_c``: DivideMix's confidence penalty during warm-up under asymmetric noise."""
    probs = F.softmax(logits.float(), dim=1)
    return torch.mean(torch.sum(probs * torch.log(probs.clamp_min(1e-12)), dim=1))


def mixmatch_losses(
    logits: torch.Tensor, mixed_targets: torch.Tensor, num_labeled: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Lx, Lu)`` of mixed inputs whose first ``num_labeled`` rows come from labeled examples.

    An empty part contributes a zero loss (a batch may hold no example of one side of the partition)."""
    logits = logits.float()
    zero = logits.sum() * 0.0
    logits_x, logits_u = logits[:num_labeled], logits[num_labeled:]
    targets_x, targets_u = mixed_targets[:num_labeled], mixed_targets[num_labeled:]
    lx = -torch.mean(torch.sum(F.log_softmax(logits_x, dim=1) * targets_x, dim=1)) if num_labeled else zero
    lu = torch.mean((F.softmax(logits_u, dim=1) - targets_u) ** 2) if len(logits_u) else zero
    return lx, lu
