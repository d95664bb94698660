"""Label-noise cleaners: which training examples a DivideMix-style method treats as labeled (clean).

Three cleaners on the same per-example evidence (the cross entropy of the observed label, and features):
  * ``global_gmm``  DivideMix (Li, Socher & Hoi, ICLR 2020): one two-component GMM on all losses, so one
    class-agnostic loss threshold (``common.data.partition.gmm_clean_probability``);
  * ``per_class_gmm``  class-aware loss modelling: one GMM per observed label, i.e. one threshold per class
    (``common.data.partition.per_class_gmm_clean_probability``);
  * ``cpc``  Class Prototype-based Cleaner (Huang, Chen, Feng & Wu, arXiv 2212.10766), as read from its
    abstract (the paper body and code were not retrievable, see README.md): per-class loss modelling on a
    score that adds to the classifier's cross entropy the negative log-likelihood of the observed label
    under a prototype classifier (cosine similarity to per-class prototypes, temperature ``tau``):

        score_i = CE(f(x_i), y_i) - log softmax_k(<z_i, c_k> / tau)[y_i],   z_i = normalise(features_i),

    with prototypes ``c_k`` the normalised, clean-probability-weighted mean feature of the examples labeled
    ``k`` (an EMA over divisions). The same prototype likelihood is the intra-class consistency regulariser
    applied to the labeled set during training (``prototype_nll``): E-step = per-class posterior of
    "clean", M-step = network and prototypes.

All functions are pure; inputs are tensors (the GMMs run on the CPU through scikit-learn).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from common.data.partition import gmm_clean_probability, per_class_gmm_clean_probability

CLEANERS = ("global_gmm", "per_class_gmm", "cpc")

__all__ = [
    "CLEANERS",
    "class_prototypes",
    "clean_probability",
    "ema_prototypes",
    "partition_quality",
    "prototype_logits",
    "prototype_nll",
]


def class_prototypes(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class prototypes: the normalised weighted mean of the L2-normalised features of each label.

    Returns ``(prototypes, mass)``: ``(C, D)`` unit vectors (a zero row for a class with no mass) and the
    ``(C,)`` total weight per class."""
    if features.ndim != 2 or labels.shape != (len(features),):
        raise ValueError(
            f"features must be (N, D) and labels (N,); got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    w = torch.ones(len(features), device=features.device) if weights is None else weights.to(features.device)
    unit = F.normalize(features.float(), dim=1)
    sums = torch.zeros(num_classes, unit.shape[1], device=unit.device).index_add_(
        0, labels, unit * w[:, None]
    )
    mass = torch.zeros(num_classes, device=unit.device).index_add_(0, labels, w.float())
    return F.normalize(sums, dim=1), mass


def ema_prototypes(
    previous: torch.Tensor, current: torch.Tensor, momentum: float, present: torch.Tensor
) -> torch.Tensor:
    """``normalise(m * previous + (1 - m) * current)`` for the classes ``present`` in ``current``; a class
    without a previous prototype (zero row) takes the current one, an absent class keeps its old one."""
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    fresh = previous.norm(dim=1) == 0
    mixed = F.normalize(momentum * previous + (1.0 - momentum) * current, dim=1)
    mixed = torch.where(fresh[:, None], current, mixed)
    return torch.where(present[:, None], mixed, previous)


def prototype_logits(features: torch.Tensor, prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine similarity of each (normalised) feature to each prototype, divided by ``temperature``."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return F.normalize(features, dim=1) @ prototypes.to(features.dtype).T / temperature


def prototype_nll(
    features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Per-example ``-log softmax_k(<z, c_k> / tau)[y]``: the prototype classifier's loss of the label."""
    return F.cross_entropy(prototype_logits(features, prototypes, temperature), labels, reduction="none")


def clean_probability(
    cleaner: str,
    losses: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    prototype_losses: torch.Tensor | None = None,
    seed: int = 0,
    max_iter: int = 10,
) -> np.ndarray:
    """Posterior probability that each label is clean, under ``cleaner`` (one of ``CLEANERS``)."""
    loss = losses.detach().double().cpu().numpy()
    lab = labels.detach().cpu().numpy().astype(np.int64)
    if cleaner == "global_gmm":
        return gmm_clean_probability(loss, max_iter=max_iter, seed=seed)
    if cleaner == "per_class_gmm":
        return per_class_gmm_clean_probability(loss, lab, num_classes, max_iter=max_iter, seed=seed)
    if cleaner == "cpc":
        if prototype_losses is None:
            raise ValueError("the cpc cleaner needs prototype_losses")
        score = loss + prototype_losses.detach().double().cpu().numpy()
        return per_class_gmm_clean_probability(score, lab, num_classes, max_iter=max_iter, seed=seed)
    raise ValueError(f"unknown cleaner {cleaner!r}; use one of {CLEANERS}")


def _f1(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def partition_quality(
    selected: np.ndarray, truly_clean: np.ndarray, labels: np.ndarray, num_classes: int
) -> dict[str, float]:
    """Precision, recall and F1 (%) of the selected (labeled) set against the truly clean examples, the
    selected fraction, and the worst F1 over observed classes (the class a class-agnostic split fails)."""
    selected, truly_clean = np.asarray(selected, bool), np.asarray(truly_clean, bool)
    hits = float(np.sum(selected & truly_clean))
    precision = hits / max(float(selected.sum()), 1.0)
    recall = hits / max(float(truly_clean.sum()), 1.0)
    per_class = []
    for cls in range(num_classes):
        members = labels == cls
        if not members.any() or not truly_clean[members].any():
            continue
        sel, tru = selected[members], truly_clean[members]
        hit = float(np.sum(sel & tru))
        per_class.append(_f1(hit / max(float(sel.sum()), 1.0), hit / float(tru.sum())))
    return {
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * _f1(precision, recall),
        "selected": 100.0 * float(selected.mean()),
        "f1_worst_class": 100.0 * min(per_class) if per_class else 0.0,
    }
