"""The Z-loss and the other losses it is compared with (de Brébisson & Vincent, arXiv 1604.08859).

Notation of the paper: pre-activations (logits) ``o`` in R^D for D classes, target class ``c``. A loss belongs
to the *spherical family* (Vincent et al., NIPS 2015, arXiv 1412.7091) when it depends on ``o`` only through

    o_c,    S1 = sum_k o_k,    S2 = sum_k o_k^2 ,

which is what makes the exact gradient of a D x d output layer computable in O(d^2) instead of O(D d).
Every spherical loss here is written as a function of ``(o_c, S1, S2, D)`` (the ``*_from_statistics``
functions), and the logits-level functions only compute those statistics, so membership in the family holds
by construction.

Z-loss (arXiv 1604.08859, the paper's definition of the Z-loss; equation numbers not checked against the PDF):

    mu = S1 / D,    sigma = sqrt(S2 / D - mu^2),    z_c = (o_c - mu) / sigma,
    L_Z(o, c) = (1 / a) * softplus(a * (b - z_c)) = (1 / a) * log(1 + exp(a * (b - z_c))),

with a > 0 (sharpness) and b (location). ``z_c`` is unchanged by o -> alpha * o + beta (alpha > 0), so the
loss is shift and scale invariant, like rank-based metrics such as top-k accuracy. Its gradient w.r.t. o_k is

    dL/do_k = -sigmoid(a (b - z_c)) / sigma * (delta_kc - 1/D - z_c z_k / D).

Baselines (spherical ones from de Brébisson & Vincent, ICLR 2016, arXiv 1511.05042):
  * log-softmax (cross entropy), the usual loss; not spherical (it needs every exp(o_k));
  * MSE to the one-hot target, sum_k (o_k - 1[k = c])^2 = S2 - 2 o_c + 1 (Vincent et al. 2015);
  * log-Taylor-softmax: f(o) = 1 + o + o^2 / 2 (second-order Taylor expansion of exp, always >= 1/2),
    p_c = f(o_c) / sum_k f(o_k) and sum_k f(o_k) = D + S1 + S2 / 2;
  * log-spherical-softmax: p_c = (o_c^2 + eps) / (S2 + D eps) (Vincent et al. 2015).
Every loss returns the batch mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Floor on the variance of the logits in the Z-loss, so that equal logits give a finite loss.
Z_LOSS_VARIANCE_FLOOR: float = 1e-12


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (batch, num_classes); got {tuple(logits.shape)}")
    if target.shape != (logits.shape[0],):
        raise ValueError(f"target must have shape ({logits.shape[0]},); got {tuple(target.shape)}")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices; got dtype {target.dtype}")


def spherical_statistics(
    logits: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per example ``(o_c, S1, S2)``: the target's logit, the sum and the sum of squares of the logits."""
    _check(logits, target)
    o_c = logits.gather(1, target.long().unsqueeze(1)).squeeze(1)
    return o_c, logits.sum(dim=1), logits.square().sum(dim=1)


def z_score_from_statistics(
    o_c: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """``z_c = (o_c - mu) / sigma`` with mu and sigma the mean and (population) std of the D logits."""
    mean = s1 / num_classes
    # S2/D - mu^2 can round below zero for nearly equal logits; the floor keeps sigma > 0.
    variance = (s2 / num_classes - mean.square()).clamp_min(Z_LOSS_VARIANCE_FLOOR)
    return (o_c - mean) / variance.sqrt()


def z_loss_from_statistics(
    o_c: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, num_classes: int, a: float, b: float
) -> torch.Tensor:
    """Per-example Z-loss ``softplus(a (b - z_c)) / a`` from the spherical statistics."""
    z_c = z_score_from_statistics(o_c, s1, s2, num_classes)
    return F.softplus(a * (b - z_c)) / a


def z_loss(logits: torch.Tensor, target: torch.Tensor, a: float = 1.0, b: float = 0.0) -> torch.Tensor:
    """Batch mean of the Z-loss; shift and scale invariant in the logits."""
    if a <= 0:
        raise ValueError(f"the Z-loss needs a > 0, got a={a}")
    # S2/D - mu^2 cancels badly in float16/bfloat16 (e.g. under autocast): take the statistics in float32.
    work = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    o_c, s1, s2 = spherical_statistics(work, target)
    return z_loss_from_statistics(o_c, s1, s2, logits.shape[1], a, b).mean()


def mse_from_statistics(
    o_c: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Per-example squared error to the one-hot target: ``S2 - 2 o_c + 1``."""
    del s1, num_classes  # spherical signature; MSE to a one-hot target needs only S2 and o_c
    return s2 - 2.0 * o_c + 1.0


def mse_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batch mean of ``sum_k (o_k - 1[k = c])^2``."""
    o_c, s1, s2 = spherical_statistics(logits, target)
    return mse_from_statistics(o_c, s1, s2, logits.shape[1]).mean()


def log_taylor_softmax_from_statistics(
    o_c: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Per-example ``-log(f(o_c) / sum_k f(o_k))``, ``f(o) = 1 + o + o^2/2``, ``sum_k f = D + S1 + S2/2``."""
    numerator = 1.0 + o_c + 0.5 * o_c.square()
    return torch.log(num_classes + s1 + 0.5 * s2) - torch.log(numerator)


def log_taylor_softmax_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batch mean of the log-Taylor-softmax loss (negative log of the second-order Taylor softmax)."""
    o_c, s1, s2 = spherical_statistics(logits, target)
    return log_taylor_softmax_from_statistics(o_c, s1, s2, logits.shape[1]).mean()


def log_spherical_softmax_from_statistics(
    o_c: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, num_classes: int, eps: float
) -> torch.Tensor:
    """Per-example ``-log((o_c^2 + eps) / (S2 + D eps))``."""
    del s1  # spherical signature; the spherical softmax needs only S2 and o_c
    return torch.log(s2 + num_classes * eps) - torch.log(o_c.square() + eps)


def log_spherical_softmax_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-2) -> torch.Tensor:
    """Batch mean of the log-spherical-softmax loss; ``eps > 0`` keeps it finite when ``o_c = 0``."""
    if eps <= 0:
        raise ValueError(f"the log-spherical-softmax needs eps > 0, got eps={eps}")
    o_c, s1, s2 = spherical_statistics(logits, target)
    return log_spherical_softmax_from_statistics(o_c, s1, s2, logits.shape[1], eps).mean()


def log_softmax_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batch mean of the log-softmax (cross-entropy) loss; the usual, non-spherical baseline."""
    _check(logits, target)
    return F.cross_entropy(logits, target.long())


LOSSES = {
    "z_loss": z_loss,
    "log_softmax": log_softmax_loss,
    "mse": mse_loss,
    "log_taylor_softmax": log_taylor_softmax_loss,
    "log_spherical_softmax": log_spherical_softmax_loss,
}
