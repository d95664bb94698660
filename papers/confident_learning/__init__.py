"""Confident learning (Northcutt et al., JAIR 2021): confident joint, noise estimates, label-issue pruning."""

from papers.confident_learning.confident_learning import (
    FILTER_METHODS,
    calibrate_confident_joint,
    class_weights_from_noise_matrix,
    confident_joint,
    confident_thresholds,
    cross_val_pred_probs,
    estimate_joint,
    estimate_noise_matrices,
    find_label_issues,
    label_issue_metrics,
)
from papers.confident_learning.pipeline import ClassWeightedCEModule, ConfidentLearningPipeline

__all__ = [
    "FILTER_METHODS",
    "ClassWeightedCEModule",
    "ConfidentLearningPipeline",
    "calibrate_confident_joint",
    "class_weights_from_noise_matrix",
    "confident_joint",
    "confident_thresholds",
    "cross_val_pred_probs",
    "estimate_joint",
    "estimate_noise_matrices",
    "find_label_issues",
    "label_issue_metrics",
]
