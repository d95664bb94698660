"""Losses shared by several papers (each registered by name)."""

from common.losses import pu, supcon  # noqa: F401  (registration)
from common.losses.pu import PURisk, bpr_loss, nnpu_risk, upu_risk, vpu_loss, vpu_mixup_regularizer
from common.losses.supcon import supcon_loss
from common.losses.swav import sinkhorn_knopp, swapped_prediction_loss

__all__ = [
    "PURisk",
    "bpr_loss",
    "nnpu_risk",
    "sinkhorn_knopp",
    "supcon_loss",
    "swapped_prediction_loss",
    "upu_risk",
    "vpu_loss",
    "vpu_mixup_regularizer",
]
