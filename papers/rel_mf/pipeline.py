"""Rel-MF methods as harness methods (`method=rel_mf_naive|rel_mf_wmf|rel_mf|rel_mf_clipped|rel_mf_oracle`).

A run trains one `papers.rel_mf.module` recommender on the `implicit_feedback` data module for
`trainer.max_epochs` x `protocol.steps_per_epoch` Adam/SGD steps and records the ranking metrics of the
MCAR test pairs (all items and rare items, K in `protocol.ks`) plus the log loss of the predicted relevance
on those pairs. Mini-batches follow the official code: `protocol.sampling=balanced` draws half clicked and
half unclicked pairs with replacement (real-world code, `src/trainer.py`), `uniform` draws pairs uniformly
with replacement (semi-synthetic code, `src/trainer.py`).

One training serves several table cells: a table column may only choose which recorded metric is the
cell's value (`protocol.report`, copied to the metric `value`), so a training's (metrics, curves) are a stage
(`context.stages.training_metrics`, stored under `<output_root>/stages/rel_mf/training/<key>/`) keyed by
everything else in the run config. Stored and fresh results are identical (every draw is seeded).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Sampler

from common.errors import UserError
from common.lit import Pipeline, RunContext
from common.lit.pipeline import with_reported_value
from common.lit.recommender import ImplicitFeedbackDataModule
from common.registry import register_method
from papers.rel_mf.module import NaiveMF, OracleMF, PointwiseMF, RelMF, WeightedMF

SAMPLINGS = ("balanced", "uniform")


class PairBatchSampler(Sampler):
    """`steps` batches of training-pair indices drawn with replacement: uniformly, or half among clicked and
    half among unclicked pairs (`balanced`)."""

    def __init__(
        self, clicks: torch.Tensor, batch_size: int, steps: int, balanced: bool, generator: torch.Generator
    ):
        if batch_size < 2 or steps < 1:
            raise UserError(f"need batch_size >= 2 and steps_per_epoch >= 1, got {batch_size} and {steps}")
        clicked = clicks > 0
        self.positives, self.negatives = clicked.nonzero().squeeze(1), (~clicked).nonzero().squeeze(1)
        if balanced and (len(self.positives) == 0 or len(self.negatives) == 0):
            raise UserError("balanced sampling needs clicked and unclicked training pairs")
        self.length, self.batch_size, self.steps = len(clicks), batch_size, steps
        self.balanced, self.generator = balanced, generator

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            if not self.balanced:
                yield torch.randint(self.length, (self.batch_size,), generator=self.generator)
                continue
            half = self.batch_size // 2
            pos = torch.randint(len(self.positives), (half,), generator=self.generator)
            neg = torch.randint(len(self.negatives), (self.batch_size - half,), generator=self.generator)
            yield torch.cat([self.positives[pos], self.negatives[neg]])


def relevance_log_loss(scores: torch.Tensor, candidates: torch.Tensor, relevance: torch.Tensor) -> float:
    """Mean binary cross entropy of sigmoid(score) against the relevance labels of the candidate pairs."""
    logits, labels = scores[candidates], relevance[candidates].to(scores.dtype)
    return float(F.binary_cross_entropy_with_logits(logits, labels))


class RecommenderPipeline(Pipeline):
    """Trains `module_class` with the method config's parameters under the table's `protocol`."""

    module_class: type[PointwiseMF]

    def __init__(self, **params: Any) -> None:
        self.params = params

    def run(self, context: RunContext) -> dict[str, float]:
        cfg = context.cfg
        datamodule = context.datamodule
        if not isinstance(datamodule, ImplicitFeedbackDataModule):
            raise UserError("Rel-MF methods need the implicit_feedback data module (data=rel_mf_*)")
        protocol = OmegaConf.select(cfg, "protocol", default=None)
        if protocol is None or protocol.get("sampling") not in SAMPLINGS:
            raise UserError(f"Rel-MF runs need protocol.sampling in {SAMPLINGS} (set by the table)")

        def train() -> tuple[dict[str, float], dict[str, list[float]]]:
            return self._train(context, protocol)

        if context.stages is None:  # called outside the runner (no stage folder): nothing to share
            metrics, context.curves = train()
        else:
            metrics, context.curves = context.stages.training_metrics(cfg, train)
        return with_reported_value(metrics, protocol.get("report"))

    def _train(self, context: RunContext, protocol: Any) -> tuple[dict[str, float], dict[str, list[float]]]:
        cfg, datamodule = context.cfg, context.datamodule
        evaluation = datamodule.evaluation_targets()
        extra = {}
        if self.module_class is OracleMF:
            extra["relevant"] = torch.as_tensor(datamodule.feedback.relevant)
        model = OmegaConf.to_container(cfg.model, resolve=True) if cfg.get("model") else {}
        module = self.module_class(
            datamodule.num_users,
            datamodule.num_items,
            evaluation,
            dim=int(model.get("dim", 10)),
            bias=bool(model.get("bias", False)),
            optimizer=instantiate(cfg.optim.optimizer),
            ks=tuple(int(k) for k in protocol.ks),
            **self.params,
            **extra,
        )
        generator = torch.Generator().manual_seed(int(cfg.seed))
        sampler = PairBatchSampler(
            datamodule.train_pairs.tensors["click"],
            int(datamodule.batch_size),
            int(protocol.steps_per_epoch),
            balanced=protocol.sampling == "balanced",
            generator=generator,
        )
        loader = DataLoader(datamodule.train_pairs, batch_size=None, sampler=sampler)
        trainer = context.make_trainer()
        trainer.fit(module, train_dataloaders=loader)
        metrics = module.final_metrics()
        with torch.no_grad():
            scores = module.model.score_all().detach().cpu().double()
        metrics["test/relevance_log_loss"] = relevance_log_loss(
            scores, evaluation["candidates"], evaluation["relevance"]
        )
        metrics["train/steps"] = float(trainer.global_step)
        return metrics, module.curves


@register_method("rel_mf_naive")
class NaiveMFPipeline(RecommenderPipeline):
    """MF on clicks, theta = 1."""

    module_class = NaiveMF


@register_method("rel_mf_wmf")
class WeightedMFPipeline(RecommenderPipeline):
    """WMF: clicks up-weighted uniformly."""

    module_class = WeightedMF


@register_method("rel_mf")
class RelMFPipeline(RecommenderPipeline):
    """Rel-MF: inverse-propensity weighted pointwise loss (clip > 0: clipped, CRMF)."""

    module_class = RelMF


@register_method("rel_mf_oracle")
class OracleMFPipeline(RecommenderPipeline):
    """MF on the true relevance labels (simulation only)."""

    module_class = OracleMF
