"""On the Provable Advantage of Unsupervised Pretraining (Ge, Tang, Fan, Jin; ICLR 2024): MLE pretraining
then downstream ERM vs supervised-only ERM, simulated excess risk against m unlabeled and n labelled
samples in the paper's factor-model and Gaussian-mixture instantiations."""

from papers.provable_pretrain.models import (
    FactorModel,
    MixtureModel,
    make_factor_model,
    make_mixture_model,
)
from papers.provable_pretrain.pipeline import (
    MLEThenERM,
    OracleRepresentationERM,
    SupervisedOnly,
    factor_posterior_map,
    least_squares_on,
    majority_label_map,
    population_label_map,
)
from papers.provable_pretrain.simulation import FactorDataModule, MixtureDataModule

__all__ = [
    "FactorDataModule",
    "FactorModel",
    "MLEThenERM",
    "MixtureDataModule",
    "MixtureModel",
    "OracleRepresentationERM",
    "SupervisedOnly",
    "factor_posterior_map",
    "least_squares_on",
    "majority_label_map",
    "make_factor_model",
    "make_mixture_model",
    "population_label_map",
]
