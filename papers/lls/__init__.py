"""Unsupervised Learning under Latent Label Shift (Roberts, Mani, Garg, Lipton; NeurIPS 2022): DDFA
(Discriminate-Discretize-Factorize-Adjust) against domain-blind clustering baselines."""

from papers.lls import ddfa
from papers.lls.data import LatentShiftDataModule, make_subcluster_mixture, official_samples_per_domain
from papers.lls.discriminator import DomainDiscriminator
from papers.lls.pipeline import DDFAPipeline, KMeansPipeline, NaivePipeline

__all__ = [
    "DDFAPipeline",
    "DomainDiscriminator",
    "KMeansPipeline",
    "LatentShiftDataModule",
    "NaivePipeline",
    "ddfa",
    "make_subcluster_mixture",
    "official_samples_per_domain",
]
