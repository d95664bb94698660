"""Naive training, CET and the oracle as harness methods (`method=cet_naive|cet|cet_oracle`).

One run trains a ranker on the (query, judged positive, mined negative) pairs of its column's negative
source and reports nDCG@10 (and MAP@10, recall@10) of the ranker on held-out queries against the *full*
relevance (every relevant document counts, judged or not). The mini scale trains match scorers on
mini-batches of pairs with the official optimiser on the simulated collection (papers/cet/simulation.py);
the paper scale trains BERT-architecture
cross-encoders on MS MARCO (papers/cet/text.py).

Every training is a cached stage (`context.stages.fit`): at the mini scale the stage `ranker`
(papers/cet/module.py, one Lightning epoch per pass over the pairs and per point of the test curve, so a
killed run resumes from the last one and a rerun reads the trained scorers back); the paper scale's
stages are in papers/cet/text.py.
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
from papers.cet.coupled import MatchScorer, inverse_selection_weight
from papers.cet.module import MatchRankers, StepBatches
from papers.cet.simulation import PooledRetrievalDataModule

ESTIMATORS = ("naive", "cet")
LABELS = ("judged", "true")
# Data keys that do not change what the mini rankers train on (the mini's batches are `method.batch_pairs`).
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
        epochs: int = 5,
        batch_pairs: int = 32,
        lr: float = 0.05,
        weight_decay: float = 0.01,
        warmup_fraction: float = 0.1,
        init_std: float = 0.02,
        score_scale: float = 1.0,
    ) -> None:
        if estimator not in ESTIMATORS or labels not in LABELS:
            raise UserError(f"method.estimator must be in {ESTIMATORS} and method.labels in {LABELS}")
        if debias_ratio <= 0 or epochs < 1 or batch_pairs < 1 or not 0 <= warmup_fraction <= 1:
            raise UserError(
                "method.debias_ratio must be > 0, method.epochs and method.batch_pairs >= 1 and "
                "method.warmup_fraction in [0, 1]"
            )
        self.estimator, self.labels, self.debias_ratio = estimator, labels, float(debias_ratio)
        self.epochs, self.batch_pairs = int(epochs), int(batch_pairs)
        self.lr, self.weight_decay, self.warmup_fraction = (
            float(lr),
            float(weight_decay),
            float(warmup_fraction),
        )
        self.init_std, self.score_scale = float(init_std), float(score_scale)

    def ranker_config(self, cfg: Any) -> dict[str, Any]:
        """What decides the mini stage `ranker` (the trained scorers and their curve): the data config (the
        collection, the column's retriever, the mining) without its loader keys, the method's parameters
        (T only for CET) and the run's seed (the collection, the scorers' initialisation, the batch order)."""
        data = OmegaConf.to_container(cfg.data, resolve=True)
        for key in LOADER_KEYS:
            data.pop(key, None)
        method = {
            "estimator": self.estimator,
            "labels": self.labels,
            "epochs": self.epochs,
            "batch_pairs": self.batch_pairs,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "warmup_fraction": self.warmup_fraction,
            "init_std": self.init_std,
            "score_scale": self.score_scale,
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

        def test_ndcg(model: MatchScorer) -> float:
            return self._test_ndcg(model, queries[n_train:], documents, test_relevance)

        is_false_negative = collection.relevance[query_ids, negative_ids]
        false_neg = torch.from_numpy(is_false_negative)
        seed = int(context.cfg.seed)
        # The batch order: a fresh permutation of the pairs every pass, drawn from the run's seed.
        order = torch.Generator().manual_seed(seed + 5)
        num_pairs = len(query_ids)
        steps_per_epoch = -(-num_pairs // self.batch_pairs)
        total_steps = steps_per_epoch * self.epochs
        batches = [
            permutation[i : i + self.batch_pairs]
            for permutation in (torch.randperm(num_pairs, generator=order) for _ in range(self.epochs))
            for i in range(0, num_pairs, self.batch_pairs)
        ]

        def make_module() -> MatchRankers:
            return MatchRankers(
                queries.shape[1],
                coupled=self.estimator == "cet",
                debias_ratio=self.debias_ratio,
                lr=self.lr,
                weight_decay=self.weight_decay,
                warmup_steps=int(round(self.warmup_fraction * total_steps)),
                total_steps=total_steps,
                init_std=self.init_std,
                score_scale=self.score_scale,
                seed=seed,
                test_ndcg=test_ndcg,
            )

        def one_pass(epoch: int) -> list[tuple[torch.Tensor, ...]]:
            return [
                (q[index], pos[index], neg[index], false_neg[index])
                for index in batches[epoch * steps_per_epoch : (epoch + 1) * steps_per_epoch]
            ]

        # One Lightning step per pass over the pairs (its mini-batches looped inside the module), one
        # Lightning epoch each: a checkpoint and a point of the test curve after every pass.
        training_data = StepBatches(one_pass, self.epochs, 1)
        # The method's own schedule and clipping on the CPU tensors above, whatever the trainer config says.
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
        relevance_model = module.relevance_model
        context.curves["test/ndcg@10"] = module.curves["test/ndcg@10"]

        with torch.no_grad():
            scores = relevance_model.score_matrix(queries[n_train:], documents)
        metrics = {
            f"test/{k}": 100.0 * float(v)
            for k, v in ranking_metrics(scores, test_relevance, 10, metrics=("ndcg", "map", "recall")).items()
        }
        metrics["train/false_negative_rate"] = 100.0 * float(is_false_negative.mean())
        metrics["train/pairs"] = float(len(query_ids))
        metrics["train/judged_per_query"] = float(collection.judged[:n_train].sum(1).mean())
        if self.estimator == "cet":
            metrics.update(self._weight_diagnostics(module, q, neg, is_false_negative))
        return metrics

    @staticmethod
    def _test_ndcg(
        model: MatchScorer, queries: torch.Tensor, documents: torch.Tensor, relevance: torch.Tensor
    ) -> float:
        with torch.no_grad():
            scores = model.score_matrix(queries, documents)
        return 100.0 * float(ranking_metrics(scores, relevance, 10, metrics=("ndcg",))["ndcg@10"])

    def _weight_diagnostics(
        self, module: MatchRankers, q: torch.Tensor, neg: torch.Tensor, is_false_negative: np.ndarray
    ) -> dict[str, float]:
        """CET's weights on the relevance loss, 1 / (1 - sigmoid(S(q, d-) / T)), on false vs true negatives:
        the ratio of their means over every training step (what the ranker's loss used; < 1: false negatives
        down-weighted, as CET intends), and the 10/50/90% quantiles of each group at the end of training
        (the weights' spread; a constant weight changes nothing under Adam)."""
        with torch.no_grad():
            weight = inverse_selection_weight(module.selection_model(q, neg), self.debias_ratio).numpy()
        false_neg = is_false_negative.astype(bool)
        out = {"train/cet_weight_mean": float(weight.mean())}
        sum_false, count_false, sum_true, count_true = (float(x) for x in module.weight_sums)
        if count_false and count_true:
            out["train/cet_weight_ratio_false_to_true_neg"] = (sum_false / count_false) / (
                sum_true / count_true
            )
        for name, group in (("false_neg", weight[false_neg]), ("true_neg", weight[~false_neg])):
            if group.size:
                for quantile in (10, 50, 90):
                    out[f"train/cet_weight_p{quantile}_{name}"] = float(np.percentile(group, quantile))
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
