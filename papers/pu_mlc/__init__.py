"""PU-MLC: Positive Label Is All You Need for Multi-Label Classification (Yuan, Zhang & Huang, ICME 2024)."""

from papers.pu_mlc.data import PartialMultiLabelDataModule, flip_missed_positives, make_synthetic_multilabel
from papers.pu_mlc.loss import (
    adaptive_temperature,
    assume_negative_bce,
    known_label_bce,
    mixup_targets,
    pu_mlc_mixup_regularizer,
    pu_mlc_variational_loss,
    rebalance_factor,
)
from papers.pu_mlc.module import AssumeNegativeBCEModule, KnownLabelBCEModule, MultiLabelModule, PUMLCModule
from papers.pu_mlc.single_label import PUMLCSingleLabelModule, single_label_observed

__all__ = [
    "AssumeNegativeBCEModule",
    "KnownLabelBCEModule",
    "MultiLabelModule",
    "PUMLCModule",
    "PUMLCSingleLabelModule",
    "PartialMultiLabelDataModule",
    "adaptive_temperature",
    "assume_negative_bce",
    "flip_missed_positives",
    "known_label_bce",
    "make_synthetic_multilabel",
    "mixup_targets",
    "pu_mlc_mixup_regularizer",
    "pu_mlc_variational_loss",
    "rebalance_factor",
    "single_label_observed",
]
