"""Rethinking the Value of Labels for Improving Class-Imbalanced Learning (Yang & Xu, NeurIPS 2020)."""

from papers.rethinking_labels.data import (
    SemiSupervisedLongTailDataModule,
    select_per_class,
    unlabeled_class_counts,
)
from papers.rethinking_labels.module import (
    LongTailCEModule,
    RotationPretrainModule,
    balanced_rotations,
    rank_shot_thresholds,
)
from papers.rethinking_labels.pipeline import (
    SelfSupervisedPretrainPipeline,
    SemiSupervisedPipeline,
    transfer_backbone,
)

__all__ = [
    "LongTailCEModule",
    "RotationPretrainModule",
    "SelfSupervisedPretrainPipeline",
    "SemiSupervisedLongTailDataModule",
    "SemiSupervisedPipeline",
    "balanced_rotations",
    "rank_shot_thresholds",
    "select_per_class",
    "transfer_backbone",
    "unlabeled_class_counts",
]
