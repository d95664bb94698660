"""Revisiting Discriminative vs. Generative Classifiers (Zheng et al., ICML 2023): naive Bayes with a shared
variance vs logistic regression, on a Gaussian simulation and on frozen features."""

from papers.disc_vs_gen.classifiers import SharedVarianceGaussianNB, make_classifier
from papers.disc_vs_gen.pipeline import LogisticRegressionPipeline, NaiveBayesPipeline
from papers.disc_vs_gen.simulation import (
    GaussianClasses,
    GaussianSimulationDataModule,
    fit_scaling,
    learning_curve,
    official_gaussian_classes,
)

__all__ = [
    "GaussianClasses",
    "GaussianSimulationDataModule",
    "LogisticRegressionPipeline",
    "NaiveBayesPipeline",
    "SharedVarianceGaussianNB",
    "fit_scaling",
    "learning_curve",
    "make_classifier",
    "official_gaussian_classes",
]
