"""Confident learning as a harness pipeline: cross-validated probabilities -> find label issues -> retrain.

One run = one pruning rule on one noisy training set. Steps:
1. out-of-sample softmax probabilities of every training example by K-fold cross-validation
   (`common.lit.cross_val`, a cached stage, so the five rules on the same data share one set of K fits);
2. flag label issues with the rule (`filter_by`) and score the flags against the truly flipped labels;
3. retrain a fresh model on the kept examples with cross entropy weighted per class by
   1 / p(s=k | y*=k) from the estimated noise matrix, and report its clean test accuracy. The retrain is
   the stage `retrain` (`common.lit.stages`): a Lightning fit checkpointed every epoch, so a killed or
   requeued run resumes it from its last finished epoch, and a rerun reuses it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from common.lit import ClassificationModule, Pipeline, RunContext
from common.lit.cross_val import cross_val_predict_proba
from common.registry import register_method
from papers.confident_learning.confident_learning import (
    FILTER_METHODS,
    class_weights_from_noise_matrix,
    estimate_joint,
    estimate_noise_matrices,
    find_label_issues,
    label_issue_metrics,
)

log = logging.getLogger("pnu.confident_learning")

#: `filter_by` value that skips cross-validation and pruning: plain training on every noisy label.
NO_FILTER = "none"
RETRAIN_METHOD = "cl_class_weighted_ce"
RETRAIN_STAGE = "retrain"
# Config groups that decide what the retrained model learns (with the kept examples and class weights).
_TRAINING_KEYS = ("data", "model", "optim", "trainer")


@register_method(RETRAIN_METHOD)
class ClassWeightedCEModule(ClassificationModule):
    """Cross entropy with a fixed weight per (given) class: `F.cross_entropy(weight=class_weights)`.

    The weights are a buffer, so they follow the module to its device and into checkpoints."""

    def __init__(self, *args: Any, class_weights: Sequence[float] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if class_weights is None:
            weights = torch.ones(self.num_classes)
        else:
            weights = torch.as_tensor(list(class_weights), dtype=torch.float32)
            if weights.shape != (self.num_classes,) or not bool(torch.all(weights > 0)):
                raise ValueError(
                    f"class_weights must be {self.num_classes} positive numbers; got {list(class_weights)}"
                )
        self.register_buffer("class_weights", weights)

    def compute_loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(logits, batch["y"], weight=self.class_weights.to(logits.dtype))


@register_method("confident_learning")
class ConfidentLearningPipeline(Pipeline):
    """Prune the examples that a confident-learning rule flags, then retrain on the rest.

    `filter_by`: one of `FILTER_METHODS` (cleanlab names: predicted_neq_given = C_confusion,
    confident_learning = C_cj, prune_by_class = PBC, prune_by_noise_rate = PBNR, both = C+NR), or "none"
    (no cross-validation, no pruning: plain cross entropy on every label). `reweight`: class-weighted loss
    in the retrain. `retrain: false` stops after detection (no test accuracy)."""

    def __init__(
        self,
        filter_by: str = "prune_by_noise_rate",
        n_folds: int = 4,
        reweight: bool = True,
        retrain: bool = True,
        frac_noise: float = 1.0,
        min_examples_per_class: int = 1,
    ):
        valid = (*FILTER_METHODS, NO_FILTER)
        if filter_by not in valid:
            raise ValueError(f"method.filter_by must be one of {', '.join(valid)}; got {filter_by!r}")
        if filter_by == NO_FILTER and not retrain:
            raise ValueError("method.filter_by=none with method.retrain=false computes nothing")
        self.filter_by, self.n_folds = filter_by, int(n_folds)
        self.reweight, self.retrain = bool(reweight), bool(retrain)
        self.frac_noise, self.min_examples_per_class = float(frac_noise), int(min_examples_per_class)

    def run(self, context: RunContext) -> dict[str, float]:
        datamodule = context.datamodule
        labels = np.asarray(datamodule.train_labels)
        truly_noisy = labels != np.asarray(datamodule.train_labels_clean)
        metrics: dict[str, float] = {"noise/actual": float(truly_noisy.mean())}
        weights = None
        if self.filter_by == NO_FILTER:
            issues = np.zeros(len(labels), dtype=bool)
        else:
            pred_probs = cross_val_predict_proba(context, n_folds=self.n_folds, seed=int(context.cfg.seed))
            issues = find_label_issues(
                labels,
                pred_probs,
                method=self.filter_by,
                frac_noise=self.frac_noise,
                min_examples_per_class=self.min_examples_per_class,
            )
            joint = estimate_joint(labels, pred_probs)
            metrics["noise/estimated"] = float(1.0 - np.trace(joint))
            clean = np.asarray(datamodule.train_labels_clean)
            metrics["cv/acc"] = 100.0 * float(np.mean(pred_probs.argmax(1) == clean))
            if self.reweight:
                # As cleanlab's CleanLearning: noise matrix without the consistency iterations.
                noise, _, _ = estimate_noise_matrices(labels, pred_probs, converge_latent_estimates=False)
                weights = class_weights_from_noise_matrix(noise)
                context.extra["class_weights"] = weights.tolist()
        scores = label_issue_metrics(issues, truly_noisy)
        metrics.update({f"detect/{name}": value for name, value in scores.items()})
        metrics["detect/num_flagged"] = float(issues.sum())
        kept = np.flatnonzero(~issues)
        metrics["train/kept_fraction"] = len(kept) / len(labels)
        log.info("%s flagged %d of %d training labels", self.filter_by, int(issues.sum()), len(labels))
        if self.retrain:
            metrics.update(self._retrain(context, kept, weights))
        return metrics

    def _retrain(self, context: RunContext, kept: np.ndarray, weights: np.ndarray | None) -> dict[str, float]:
        """Fit a fresh model on the kept examples; its per-epoch curves become the run's curves. With the
        run's stages it is the stage `retrain` (`retrain_stage_config`), otherwise a plain fit."""
        datamodule = context.datamodule
        spec = {"name": RETRAIN_METHOD, "class_weights": None if weights is None else weights.tolist()}
        loaders = {
            "train_dataloaders": datamodule.loader(datamodule.train_dataset(kept), shuffle=True),
            "val_dataloaders": datamodule.val_dataloader(),
        }
        # Unseeded: the fresh model's initial weights draw from the run's random state, as they always did
        # (a stage seed would change every result).
        if context.stages is None:
            module = context.make_module(spec)
            context.make_trainer().fit(module, **loaders)
        else:
            config = retrain_stage_config(context, spec, kept)
            module = context.stages.fit(RETRAIN_STAGE, config, lambda: context.make_module(spec), **loaders)
        context.curves = module.curves
        final = module.final_metrics()
        if not final:
            raise RuntimeError("the retrain ran no validation epoch (is trainer.limit_val_batches 0?)")
        return final


def retrain_stage_config(context: RunContext, spec: dict[str, Any], kept: np.ndarray) -> dict[str, Any]:
    """What decides the retrained model: the split, the data/model/optim/trainer configs, the retrain's
    module (class weights included), the kept examples and the run's seed (the retrain is unseeded: its
    initial weights draw from the run's random state, which the seed and the configs decide)."""
    configs = {
        key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        for key in _TRAINING_KEYS
        if (value := OmegaConf.select(context.cfg, key, default=None)) is not None
    }
    return {
        "split_hash": context.datamodule.split_hash,
        "configs": configs,
        "module": spec,
        "kept": hashlib.sha256(np.ascontiguousarray(kept, dtype=np.int64).tobytes()).hexdigest(),
        "seed": int(context.cfg.seed),
    }
