"""The HOC (higher-order compatibility) loss of d-Simplex-HOC (Biondi et al., CVPR 2024, Eqs. 3-4).

    L = lam * CE(W^T phi_t(x), y) + (1 - lam) * L_iNCE(phi_t, phi_{t-1})

with W the fixed d-Simplex classifier and, over a batch of L2-normalised features (new model f_i, old
model g_i = phi_{t-1}(x_i), no gradient),

    L_iNCE = mean_i [ -mu <g_i, f_i> + log sum_j exp(s_ij) ],   s_ij = mu <g_i, f_j> if y_j != y_i else 0.

Behaviour follows the official code, miccunifi/iamcl2r @ 18495ac:
  methods/hoc.py lines 32-65  similarities of old (rows) against new (columns) features times mu; the
                              positive is the diagonal; same-class entries (the diagonal included) are
                              *multiplied by zero*, not removed, so each adds exp(0) = 1 inside the
                              log-sum-exp;
  train.py lines 49-53        both features are L2-normalised and the loss is lam * CE + (1 - lam) * L_iNCE
                              (lam = 0.1, mu = 10: methods/hoc.py lines 10-11).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hoc_contrastive_loss(
    new_features: torch.Tensor, old_features: torch.Tensor, labels: torch.Tensor, mu: float = 10.0
) -> torch.Tensor:
    """L_iNCE between L2-normalised new and old features of the same batch (official `HocLoss`)."""
    if new_features.shape != old_features.shape or new_features.ndim != 2:
        raise ValueError(
            f"new and old features must both be (batch, dim); got {tuple(new_features.shape)} and "
            f"{tuple(old_features.shape)}"
        )
    if labels.shape != (new_features.shape[0],):
        raise ValueError(f"labels must have shape ({new_features.shape[0]},); got {tuple(labels.shape)}")
    similarity = mu * old_features @ new_features.T
    positive = -similarity.diagonal()
    different_class = labels.unsqueeze(1) != labels.unsqueeze(0)
    negative = torch.logsumexp(similarity * different_class, dim=1)
    return (positive + negative).mean()


def hoc_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    new_features: torch.Tensor,
    old_features: torch.Tensor,
    lam: float = 0.1,
    mu: float = 10.0,
) -> torch.Tensor:
    """lam * CE(logits, targets) + (1 - lam) * L_iNCE(normalise(new), normalise(old)); targets are the
    classifier outputs (vertex ids), whose equality also defines the same-class mask."""
    cross_entropy = F.cross_entropy(logits, targets)
    contrastive = hoc_contrastive_loss(
        F.normalize(new_features, dim=1), F.normalize(old_features, dim=1), targets, mu
    )
    return lam * cross_entropy + (1.0 - lam) * contrastive
