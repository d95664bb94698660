"""Naive training, CET and the oracle as harness methods (`method=cet_naive|cet|cet_oracle`).

One run trains a ranker on the (query, judged positive, mined negative) pairs of its column's negative
source and reports nDCG@10 (and MAP@10, recall@10) of the ranker on held-out queries against the *full*
relevance (every relevant document counts, judged or not). The mini scale trains bilinear scorers full-batch
on the simulated collection (papers/cet/simulation.py); the paper scale trains BERT-architecture
cross-encoders on MS MARCO (papers/cet/text.py).
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
from papers.cet.coupled import BilinearScorer, coupled_losses, pairwise_softmax_loss
from papers.cet.simulation import PooledRetrievalDataModule

ESTIMATORS = ("naive", "cet")
LABELS = ("judged", "true")


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
            eval_every,
        )

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

        torch.manual_seed(int(context.cfg.seed))
        relevance_model = BilinearScorer(queries.shape[1])
        selection_model = BilinearScorer(queries.shape[1])
        params = list(relevance_model.parameters())
        if self.estimator == "cet":
            params += list(selection_model.parameters())
        # Adam's decoupled per-parameter state: the two models' updates do not interact.
        optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        curve: list[float] = []
        running_loss = torch.zeros(())
        for step in range(self.steps):
            relevance_pos, relevance_neg = relevance_model(q, pos), relevance_model(q, neg)
            if self.estimator == "cet":
                relevance_loss, selection_loss = coupled_losses(
                    relevance_pos,
                    relevance_neg,
                    selection_model(q, pos),
                    selection_model(q, neg),
                    self.debias_ratio,
                )
                loss = relevance_loss + selection_loss
            else:
                loss = pairwise_softmax_loss(relevance_pos, relevance_neg).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running_loss = running_loss + loss.detach()
            # Checked every 50 steps and at the end, not per step (a host sync each time).
            if ((step + 1) % 50 == 0 or step + 1 == self.steps) and not torch.isfinite(running_loss):
                raise FloatingPointError(f"non-finite loss by step {step}")
            if self.eval_every and (step + 1) % self.eval_every == 0:
                curve.append(self._test_ndcg(relevance_model, queries[n_train:], documents, test_relevance))
        context.curves["test/ndcg@10"] = curve

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
