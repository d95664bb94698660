"""Hard Negatives or False Negatives: Correcting Pooling Bias in Training Neural Ranking Models (Cai et al.,
CIKM 2022): naive ranker training vs the Coupled Estimation Technique, with negatives from retrievers of
growing strength."""

from papers.cet.coupled import (
    MatchScorer,
    coupled_losses,
    inverse_selection_weight,
    pairwise_softmax_loss,
)
from papers.cet.pipeline import CoupledEstimationTraining, NaiveRankerTraining, OracleRankerTraining
from papers.cet.simulation import (
    PooledRetrievalDataModule,
    make_lexical_view,
    make_pooled_collection,
    training_triples,
)
from papers.cet.text import CrossEncoder, MsMarcoTriplesDataModule, build_cross_encoder

__all__ = [
    "CrossEncoder",
    "MatchScorer",
    "CoupledEstimationTraining",
    "MsMarcoTriplesDataModule",
    "NaiveRankerTraining",
    "OracleRankerTraining",
    "PooledRetrievalDataModule",
    "build_cross_encoder",
    "coupled_losses",
    "inverse_selection_weight",
    "make_lexical_view",
    "make_pooled_collection",
    "pairwise_softmax_loss",
    "training_triples",
]
