"""Learning from Label Proportions: Bootstrapping Supervised Learners via Belief Propagation (Havaldar,
Sharma, Sareen, Shanmugam, Raghuveer; ICLR 2024): LLP-BP against DLLP, EasyLLP and the bag prior."""

from papers.llp_bp.bp import (
    BinaryPairwiseMRF,
    BPResult,
    brute_force_marginals,
    log_score,
    loopy_bp,
    loopy_bp_marginals,
)
from papers.llp_bp.data import LLPTabularDataModule
from papers.llp_bp.gibbs import (
    SimilarityGraph,
    bag_pairs,
    gibbs_log_score,
    knn_similarity_graph,
    llp_bp_mrf,
    matern_half,
)
from papers.llp_bp.learners import ClassifierFit, TabularMLP, dllp_loss, easyllp_loss
from papers.llp_bp.pipeline import (
    BagPriorPipeline,
    DLLPPipeline,
    EasyLLPPipeline,
    LLPBPPipeline,
    OraclePipeline,
)

__all__ = [
    "BagPriorPipeline",
    "BPResult",
    "BinaryPairwiseMRF",
    "ClassifierFit",
    "DLLPPipeline",
    "EasyLLPPipeline",
    "LLPBPPipeline",
    "LLPTabularDataModule",
    "OraclePipeline",
    "SimilarityGraph",
    "TabularMLP",
    "bag_pairs",
    "brute_force_marginals",
    "dllp_loss",
    "easyllp_loss",
    "gibbs_log_score",
    "knn_similarity_graph",
    "llp_bp_mrf",
    "log_score",
    "loopy_bp",
    "loopy_bp_marginals",
    "matern_half",
]
