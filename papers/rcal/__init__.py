"""RCAL: When Noisy Labels Meet Long Tail Dilemmas: A Representation Calibration Method (Zhang et al.,
ICCV 2023): contrastive representations, distributional and individual representation calibration."""

from papers.rcal.calibration import (
    ClassGaussians,
    calibrate_tail,
    class_balanced_weights,
    class_gaussians,
    lof_inliers,
    sample_to_balance,
)
from papers.rcal.data import RCALMultiViewDataModule
from papers.rcal.module import IndividualCalibrationModule, mixup_cross_entropy, representation_distance
from papers.rcal.pipeline import RCALPipeline, train_linear_head

__all__ = [
    "ClassGaussians",
    "IndividualCalibrationModule",
    "RCALMultiViewDataModule",
    "RCALPipeline",
    "calibrate_tail",
    "class_balanced_weights",
    "class_gaussians",
    "lof_inliers",
    "mixup_cross_entropy",
    "representation_distance",
    "sample_to_balance",
    "train_linear_head",
]
