"""Diffusion Models Beat GANs on Image Classification (Mukhopadhyay et al., arXiv 2307.08702): frozen
diffusion U-Net features at step t and block b, classified by a light head."""

from papers.diffusion_cls.ddpm import DDPMModule
from papers.diffusion_cls.heads import AttentionHead, HeadFit, build_head, head_loader
from papers.diffusion_cls.pipeline import DiffusionFeatureProbe
from papers.diffusion_cls.unet import build_unet, noised_block_features, resolve_block

__all__ = [
    "AttentionHead",
    "DDPMModule",
    "DiffusionFeatureProbe",
    "HeadFit",
    "build_head",
    "build_unet",
    "noised_block_features",
    "resolve_block",
    "head_loader",
]
