"""Out-Of-Domain Unlabeled Data Improves Generalization (Saberi et al., ICLR 2024): robust self-supervised
(RSS) training, i.e. a DRO loss on labelled data plus a self-labelled DRO loss on (possibly out-of-domain)
unlabeled data, against ERM."""

from papers.ood_unlabeled_dro.histopathology import FeatureHead, HistoDataModule, HistoERM, HistoRSS
from papers.ood_unlabeled_dro.losses import (
    clipped_hinge,
    dro_perturb,
    robust_loss,
    rss_linear_loss,
    rss_loss,
)
from papers.ood_unlabeled_dro.simulation import LinearERM, LinearRSS, TwoGaussianDataModule, fit_linear

__all__ = [
    "FeatureHead",
    "HistoDataModule",
    "HistoERM",
    "HistoRSS",
    "LinearERM",
    "LinearRSS",
    "TwoGaussianDataModule",
    "clipped_hinge",
    "dro_perturb",
    "fit_linear",
    "robust_loss",
    "rss_linear_loss",
    "rss_loss",
]
