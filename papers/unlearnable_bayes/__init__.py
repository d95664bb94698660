"""Towards Provably Unlearnable Examples via Bayes Error Optimisation (Zhang, Sun, Lim, Zhang;
arXiv 2511.08191, AAAI 2026): protective perturbations that maximise a kernel estimate of the Bayes error
(BEO), against random and error-minimising noise, with fully and partly protected training sets."""

from papers.unlearnable_bayes.bayes_error import (
    bayes_error_from_posteriors,
    kernel_bayes_error,
    kernel_posterior,
    knn_posterior,
    two_gaussians_bayes_error,
    two_gaussians_distance,
)
from papers.unlearnable_bayes.estimator_check import BayesErrorEstimate, TwoGaussiansDataModule
from papers.unlearnable_bayes.perturbations import ErrorMinimisingNoise, bayes_error_pga, random_noise
from papers.unlearnable_bayes.pipeline import (
    BayesErrorProtection,
    CleanOnly,
    ErrorMinimisingProtection,
    NoProtection,
    ProtectionPipeline,
    RandomNoiseProtection,
)

__all__ = [
    "BayesErrorEstimate",
    "BayesErrorProtection",
    "CleanOnly",
    "ErrorMinimisingNoise",
    "ErrorMinimisingProtection",
    "NoProtection",
    "ProtectionPipeline",
    "RandomNoiseProtection",
    "TwoGaussiansDataModule",
    "bayes_error_from_posteriors",
    "bayes_error_pga",
    "kernel_bayes_error",
    "kernel_posterior",
    "knn_posterior",
    "random_noise",
    "two_gaussians_bayes_error",
    "two_gaussians_distance",
]
