"""The two multi-stage recipes of Yang & Xu (NeurIPS 2020) as harness pipelines.

* ``rethinking_labels_semi`` (semi-supervised, train_semi.py + gen_pseudolabels.py): train a base classifier
  with CE on the long-tailed labeled set, pseudo-label the unlabeled pool D_U with its arg-max prediction
  (every example, no threshold: ``common.lit.pseudo_label.confidence_pseudo_labels`` at threshold 0), then
  train a new model from scratch with CE on the labeled set merged with the pseudo-labeled pool.
* ``rethinking_labels_ssp`` (self-supervised pre-training, pretrain_rot.py + train.py): pre-train the
  backbone by rotation prediction on the long-tailed training images (labels unused), drop the rotation
  head, then train normally with CE from those weights.

Both report the final model's metrics (``rethinking_labels_ce``), so their rows compare directly with plain
CE; the first stage's numbers are kept under ``base/`` and ``pseudo/`` or ``pretrain/``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from common.lit import Pipeline, RunContext
from common.lit.pseudo_label import confidence_pseudo_labels
from common.registry import register_method

log = logging.getLogger("pnu.rethinking_labels")

CE_METHOD = "rethinking_labels_ce"
ROTATION_METHOD = "rethinking_labels_rotation"


def _fit(context: RunContext, module: Any, train_loader: Any, **trainer_overrides: Any) -> dict[str, float]:
    trainer = context.make_trainer(**trainer_overrides)
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=context.datamodule.val_dataloader())
    metrics = module.final_metrics()
    if not metrics:
        raise RuntimeError("a stage ran no validation epoch (is trainer.limit_val_batches 0?)")
    return metrics


def _head_keys(model: torch.nn.Module) -> set[str]:
    head = {id(t) for t in model.get_classifier().state_dict(keep_vars=True).values()}
    return {k for k, v in model.state_dict(keep_vars=True).items() if id(v) in head}


def transfer_backbone(source: torch.nn.Module, target: torch.nn.Module) -> list[str]:
    """Copy every weight and buffer of ``source`` into ``target`` except the classifier head (the official
    loader drops the ``fc``/``linear`` keys); returns the head keys left at their fresh initialisation."""
    skip = _head_keys(source)
    state = {k: v.detach() for k, v in source.state_dict(keep_vars=True).items() if k not in skip}
    result = target.load_state_dict(state, strict=False)
    if result.unexpected_keys or set(result.missing_keys) - _head_keys(target):
        raise RuntimeError(
            f"pre-trained weights do not fit the backbone: unexpected {result.unexpected_keys}, "
            f"missing {result.missing_keys}"
        )
    return list(result.missing_keys)


class _CEStages(Pipeline):
    """Shared settings of the inner CE module (see ``LongTailCEModule``)."""

    def __init__(self, noise_std: float = 0.0, max_shift: int = 0, shot_fraction: float = 0.3):
        self.ce_params = {"noise_std": noise_std, "max_shift": max_shift, "shot_fraction": shot_fraction}

    def ce_module(self, context: RunContext) -> Any:
        counts = np.bincount(
            np.asarray(context.datamodule.train_labels), minlength=context.datamodule.num_classes
        )
        return context.make_module(
            {"name": CE_METHOD, **self.ce_params, "train_class_counts": counts.tolist()}
        )


@register_method("rethinking_labels_semi")
class SemiSupervisedPipeline(_CEStages):
    """CE + D_U: base CE model -> pseudo-labels on the unlabeled pool -> new CE model on labeled + pool.

    ``threshold``: keep pool examples whose top probability reaches it (0, the official setting, keeps all).
    """

    def __init__(self, threshold: float = 0.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.threshold = float(threshold)

    def run(self, context: RunContext) -> dict[str, float]:
        datamodule = context.datamodule
        base = self.ce_module(context)
        base_metrics = _fit(context, base, datamodule.train_dataloader())
        pool = datamodule.loader(datamodule.unlabeled_dataset(), shuffle=False, train=False)
        probs = base.predict_proba(pool)
        pseudo, mask = confidence_pseudo_labels(probs, threshold=self.threshold)
        pseudo, keep = pseudo.numpy(), np.flatnonzero(mask.numpy() > 0)
        truth = np.asarray(datamodule.unlabeled_labels_clean)
        metrics = {f"base/{k}": v for k, v in base_metrics.items() if k.startswith("test/acc")}
        metrics["pseudo/acc"] = 100.0 * float(np.mean(pseudo[keep] == truth[keep])) if keep.size else 0.0
        metrics["pseudo/kept_fraction"] = keep.size / max(len(pseudo), 1)
        log.info("pseudo-labelled %d pool examples (accuracy %.1f%%)", keep.size, metrics["pseudo/acc"])
        context.extra["pseudo_label_counts"] = np.bincount(
            pseudo[keep], minlength=datamodule.num_classes
        ).tolist()
        context.extra["unlabeled_class_counts"] = np.bincount(
            truth, minlength=datamodule.num_classes
        ).tolist()
        student = self.ce_module(context)
        merged = datamodule.labeled_and_pseudo_labeled(pseudo, keep)
        metrics.update(_fit(context, student, datamodule.loader(merged, shuffle=True)))
        context.curves = student.curves
        return metrics


@register_method("rethinking_labels_ssp")
class SelfSupervisedPretrainPipeline(_CEStages):
    """CE + SSP: rotation pre-training of the backbone on the training images, then CE from those weights.

    ``pretrain_epochs``: epochs of rotation prediction (null: the run's ``trainer.max_epochs``; official:
    200, the same as the classifier)."""

    def __init__(self, pretrain_epochs: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.pretrain_epochs = pretrain_epochs

    def run(self, context: RunContext) -> dict[str, float]:
        datamodule = context.datamodule
        augment = {k: self.ce_params[k] for k in ("noise_std", "max_shift")}
        pretrain = context.make_module({"name": ROTATION_METHOD, **augment})
        overrides = {} if self.pretrain_epochs is None else {"max_epochs": int(self.pretrain_epochs)}
        pre_metrics = _fit(context, pretrain, datamodule.train_dataloader(), **overrides)
        module = self.ce_module(context)
        transfer_backbone(pretrain.backbone, module.backbone)
        metrics = {"pretrain/rotation_acc": pre_metrics["test/acc"]}
        metrics.update(_fit(context, module, datamodule.train_dataloader()))
        context.curves = {**module.curves, "pretrain/val_rotation_acc": pretrain.curves["val/acc"]}
        return metrics
