"""NBPO: Sampler Design for Implicit Feedback Data by Noisy-label Robust Learning (Yu & Qin, SIGIR 2020):
MF trained with BPR, BPO and the noisy-label robust BPO whose flip probabilities of unvoted items are learnt
jointly with the preference model."""

from papers.nbpo.loss import bpo_loss, bpr_loss, nbpo_negative_log_likelihood, nbpo_surrogate_loss
from papers.nbpo.model import FlipFactorization, preference_model
from papers.nbpo.pipeline import (
    FLIP_RATE_BINS,
    OBJECTIVES,
    SAMPLERS,
    BPOPipeline,
    BPRPipeline,
    NBPOPipeline,
    SampledMFPipeline,
    WBPRPipeline,
    evaluate_scores,
    flip_diagnostics,
    train_sampled_mf,
    zero_flip_growth,
)
from papers.nbpo.sampling import popularity_weights, sample_unvoted

__all__ = [
    "FLIP_RATE_BINS",
    "OBJECTIVES",
    "SAMPLERS",
    "BPOPipeline",
    "BPRPipeline",
    "FlipFactorization",
    "NBPOPipeline",
    "SampledMFPipeline",
    "WBPRPipeline",
    "bpo_loss",
    "bpr_loss",
    "evaluate_scores",
    "flip_diagnostics",
    "nbpo_negative_log_likelihood",
    "nbpo_surrogate_loss",
    "popularity_weights",
    "preference_model",
    "sample_unvoted",
    "train_sampled_mf",
    "zero_flip_growth",
]
