"""SimPLe: Similarity-Aware Propagation Learning for Weakly-Supervised Breast Cancer Segmentation in DCE-MRI
(Zhong & Wang, MICCAI 2023, arXiv 2306.16714), on a synthetic lesion proxy of the private DCE-MRI cohort."""

from papers.simple_seg.data import LesionSegmentationDataModule, LesionSpec, synthesize_lesion_image
from papers.simple_seg.losses import pairwise_contrastive_bce, partial_cross_entropy, similarity_propagation
from papers.simple_seg.pipeline import SimPLePipeline, dice_percent, predict_masks
from papers.simple_seg.unet import SegUNet
from papers.simple_seg.weak_labels import extreme_points, initial_pseudo_mask, random_walker_probability

__all__ = [
    "LesionSegmentationDataModule",
    "LesionSpec",
    "SegUNet",
    "SimPLePipeline",
    "dice_percent",
    "extreme_points",
    "initial_pseudo_mask",
    "pairwise_contrastive_bce",
    "partial_cross_entropy",
    "predict_masks",
    "random_walker_probability",
    "similarity_propagation",
    "synthesize_lesion_image",
]
