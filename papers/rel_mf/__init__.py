"""Rel-MF: Unbiased Recommender Learning from Missing-Not-At-Random Implicit Feedback (Saito et al., WSDM
2020): the inverse-propensity (and clipped) pointwise estimator of the ideal relevance loss vs naive MF."""

from papers.rel_mf.loss import POINTWISE_LOSSES, pointwise_parts, rel_mf_loss
from papers.rel_mf.module import NaiveMF, OracleMF, PointwiseMF, RelMF, WeightedMF
from papers.rel_mf.pipeline import (
    NaiveMFPipeline,
    OracleMFPipeline,
    PairBatchSampler,
    RelMFPipeline,
    WeightedMFPipeline,
    relevance_log_loss,
)

__all__ = [
    "POINTWISE_LOSSES",
    "NaiveMF",
    "NaiveMFPipeline",
    "OracleMF",
    "OracleMFPipeline",
    "PairBatchSampler",
    "PointwiseMF",
    "RelMF",
    "RelMFPipeline",
    "WeightedMF",
    "WeightedMFPipeline",
    "pointwise_parts",
    "rel_mf_loss",
    "relevance_log_loss",
]
