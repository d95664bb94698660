"""Naive training, CET and the oracle as harness methods (`method=cet_naive|cet|cet_oracle`).

One run trains a ranker on the (query, judged positive, mined negative) pairs of its column's negative
source and reports nDCG@10 (and MAP@10, recall@10) of the ranker on held-out queries against the *full*
relevance (every relevant document counts, judged or not). The mini scale trains bilinear scorers full-batch
on the simulated collection (papers/cet/simulation.py); the paper scale trains BERT-architecture
cross-encoders on MS MARCO (papers/cet/text.py).

Every training is a cached stage (`context.stages.fit`): at the mini scale the stage `ranker`
(papers/cet/module.py, one Lightning epoch per point of the test curve, so a killed run resumes from the
last one and a rerun reads the trained scorers back); the paper scale's stages are in papers/cet/text.py.
The simulated collection and the training pairs are not a stage: the datamodule draws them from the data
config and seed in under a second, about what reading them back would take.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from common.errors import UserError
from common.eval.ranking import ranking_metrics
from common.lit import Pipeline, RunContext
from common.registry import register_method
from papers.cet.coupled import BilinearScorer
from papers.cet.module import BilinearRankers, StepBatches
from papers.cet.simulation import PooledRetrievalDataModule

ESTIMATORS = ("naive", "cet")
LABELS = ("judged", "true")
# Data keys that do not change what the mini rankers train on (training is full-batch on in-memory tensors).
LOADER_KEYS = ("batch_size", "num_workers", "cache_dir")


class RankerTrainingPipeline(Pipeline):
    """`estimator`: "naive" (the pair loss, unweighted) or "cet" (relevance and selection models trained
    jointly, papers/cet/coupled.py); `labels`: "judged" (the pooled labels) or "true" (oracle negatives)."""

    def __init__(
        self,
        *,
        estimator: str = "naive",
        labels: str = "judged",
        debias_ratio: float = 10.0,
        steps: int = 300,
        lr: float = 0.05,
        weight_decay: float = 1.0e-3,
        eval_every: int = 50,
    ) -> None:
        if estimator not in ESTIMATORS or labels not in LABELS:
            raise UserError(f"method.estimator must be in {ESTIMATORS} and method.labels in {LABELS}")
        if debias_ratio <= 0 or steps < 1:
            raise UserError("method.debias_ratio must be > 0 and method.steps >= 1")
        self.estimator, self.labels, self.debias_ratio = estimator, labels, float(debias_ratio)
        self.steps, self.lr, self.weight_decay, self.eval_every = (
            int(steps),
            float(lr),
            float(weight_decay),
            int(eval_every or 0),
        )

    def ranker_config(self, cfg: Any) -> dict[str, Any]:
        """What decides the mini stage `ranker` (the trained scorers and their curve): the data config (the
        collection, the column's retriever, the mining) without its loader keys, the method's parameters
        (T only for CET) and the run's seed (which seeds the collection)."""
        data = OmegaConf.to_container(cfg.data, resolve=True)
        for key in LOADER_KEYS:
            data.pop(key, None)
        method = {
            "estimator": self.estimator,
            "labels": self.labels,
            "steps": self.steps,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "eval_every": self.eval_every,
        }
        if self.estimator == "cet":
            method["debias_ratio"] = self.debias_ratio
        return {"data": data, "method": method, "seed": int(cfg.seed)}

    def run(self, context: RunContext) -> dict[str, float]:
        datamodule = context.datamodule
        if isinstance(datamodule, PooledRetrievalDataModule):
            return self._run_simulation(datamodule, context)
        from papers.cet.text import MsMarcoTriplesDataModule, train_text_rankers

        if isinstance(datamodule, MsMarcoTriplesDataModule):
            return train_text_rankers(self, datamodule, context)
        raise UserError(f"{type(self).__name__} needs data.datamodule cet_pooled_retrieval or cet_msmarco")

    # ---- mini: simulated collection ----------------------------------------------------------------------
    def _run_simulation(self, datamodule: PooledRetrievalDataModule, context: RunContext) -> dict[str, float]:
        datamodule.setup()
        collection = datamodule.collection
        queries = torch.from_numpy(collection.query_features())
        documents = torch.from_numpy(collection.document_features())
        query_ids, positive_ids, negative_ids = datamodule.triples(self.labels)
        q, pos, neg = queries[query_ids], documents[positive_ids], documents[negative_ids]
        n_train = collection.num_train_queries
        test_relevance = torch.from_numpy(collection.relevance[n_train:])

        def test_ndcg(model: BilinearScorer) -> float:
            return self._test_ndcg(model, queries[n_train:], documents, test_relevance)

        def make_module() -> BilinearRankers:
            torch.manual_seed(int(context.cfg.seed))  # as the loop before (the scorers start at zero)
            return BilinearRankers(
                queries.shape[1],
                coupled=self.estimator == "cet",
                debias_ratio=self.debias_ratio,
                lr=self.lr,
                weight_decay=self.weight_decay,
                eval_every=self.eval_every,
                test_ndcg=test_ndcg,
            )

        # One epoch per point of the test curve (a checkpoint each), every step on all pairs.
        training_data = StepBatches(lambda step: (q, pos, neg), self.steps, self.eval_every or self.steps)
        # The method's own full-batch schedule on the CPU tensors above, whatever the trainer config says.
        overrides = {
            "accelerator": "cpu",
            "devices": 1,
            "precision": "32-true",
            "gradient_clip_val": None,
            "accumulate_grad_batches": 1,
            "limit_train_batches": None,
            **training_data.trainer_overrides(),
        }
        if context.stages is None:
            module = make_module()
            context.make_trainer(**overrides).fit(module, datamodule=training_data)
        else:
            module = context.stages.fit(
                "ranker",
                self.ranker_config(context.cfg),
                make_module,
                trainer_overrides=overrides,
                datamodule=training_data,
            )
        relevance_model, selection_model = module.relevance_model, module.selection_model
        context.curves["test/ndcg@10"] = module.curves["test/ndcg@10"]

        with torch.no_grad():
            scores = relevance_model.score_matrix(queries[n_train:], documents)
        metrics = {
            f"test/{k}": 100.0 * float(v)
            for k, v in ranking_metrics(scores, test_relevance, 10, metrics=("ndcg", "map", "recall")).items()
        }
        is_false_negative = collection.relevance[query_ids, negative_ids]
        metrics["train/false_negative_rate"] = 100.0 * float(is_false_negative.mean())
        metrics["train/pairs"] = float(len(query_ids))
        metrics["train/judged_per_query"] = float(collection.judged[:n_train].sum(1).mean())
        if self.estimator == "cet":
            metrics.update(self._weight_diagnostics(selection_model, q, neg, is_false_negative))
        return metrics

    @staticmethod
    def _test_ndcg(
        model: BilinearScorer, queries: torch.Tensor, documents: torch.Tensor, relevance: torch.Tensor
    ) -> float:
        with torch.no_grad():
            scores = model.score_matrix(queries, documents)
        return 100.0 * float(ranking_metrics(scores, relevance, 10, metrics=("ndcg",))["ndcg@10"])

    def _weight_diagnostics(
        self,
        selection_model: BilinearScorer,
        q: torch.Tensor,
        neg: torch.Tensor,
        is_false_negative: np.ndarray,
    ) -> dict[str, float]:
        """Mean CET weight of the relevance loss on false vs true negatives at the end of training (< 1:
        false negatives are down-weighted relative to true ones, as CET intends)."""
        from papers.cet.coupled import inverse_selection_weight

        with torch.no_grad():
            weight = inverse_selection_weight(selection_model(q, neg), self.debias_ratio).numpy()
        false_neg = is_false_negative.astype(bool)
        out = {"train/cet_weight_mean": float(weight.mean())}
        if false_neg.any() and (~false_neg).any():
            out["train/cet_weight_ratio_false_to_true_neg"] = float(
                weight[false_neg].mean() / weight[~false_neg].mean()
            )
        return out


@register_method("cet_naive")
class NaiveRankerTraining(RankerTrainingPipeline):
    """The baseline: the pair loss on pooled labels, unjudged documents taken as negatives."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**{"estimator": "naive", "labels": "judged", **params})


@register_method("cet")
class CoupledEstimationTraining(RankerTrainingPipeline):
    """CET: relevance and selection models trained jointly, each weighting the other's pair losses."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**{"estimator": "cet", "labels": "judged", **params})


@register_method("cet_oracle")
class OracleRankerTraining(RankerTrainingPipeline):
    """The pair loss with negatives that exclude every truly relevant document (simulation only)."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**{"estimator": "naive", "labels": "true", **params})


def method_params(cfg: Any) -> dict[str, Any]:
    """The method config's parameters without its name (helper for tests)."""
    params = OmegaConf.to_container(cfg.method, resolve=True)
    params.pop("name", None)
    return params
