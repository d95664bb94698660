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

Every step is a cached stage of the run (``common.lit.stages``), so a killed or requeued run resumes the fit
it was in (checkpoints every epoch) and a rerun reads finished stages back: ``semi_base`` (fit) ->
``semi_pool_probs`` (compute: the base model's probabilities on the pool) -> ``semi_retrain`` (fit);
``ssp_pretrain`` -> ``ssp_finetune`` (fits). The base model sees the labeled set only, so its config leaves
out the pool and table_semi's rho_U columns share it. Stages are unseeded: weights and augmentation draw from
the run's random state as before the stages existed, so the results did not change (a reused stage restores
the state its computation left).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import OmegaConf

from common.lit import Pipeline, RunContext
from common.lit.pseudo_label import confidence_pseudo_labels
from common.registry import register_method

log = logging.getLogger("pnu.rethinking_labels")

CE_METHOD = "rethinking_labels_ce"
ROTATION_METHOD = "rethinking_labels_rotation"


#: Data settings that only shape the unlabeled pool: the labeled set, and so the base model, ignore them.
POOL_KEYS = ("unlabeled_imbalance_ratio", "unlabeled_size_factor", "unlabeled_split")


def fit_config(cfg: Any, split_hash: str, drop_data_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """What every fit of a run depends on besides its module: the data split (`split_hash`) and the data
    settings without `drop_data_keys`, the model, optimiser and trainer configs, and the run's seed. The fits
    are unseeded stages: initial weights and augmentation draw from the run's random state, as they always
    did, so the seed decides them."""
    config = {
        key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("data", "model", "optim", "trainer")
    }
    config["data"] = {k: v for k, v in config["data"].items() if k not in drop_data_keys}
    return {"split_hash": split_hash, **config, "seed": int(cfg.seed)}


def _fit_stage(
    context: RunContext,
    name: str,
    config: dict[str, Any],
    make_module: Callable[[], L.LightningModule],
    train_loader: Any,
    **trainer_overrides: Any,
) -> tuple[Any, dict[str, float]]:
    """The fitted module of stage `name` (trained, resumed or read back) and its final metrics; trained
    directly when the run has no stages (a pipeline called outside the runner)."""
    val_loader = context.datamodule.val_dataloader()
    if context.stages is None:
        module = make_module()
        trainer = context.make_trainer(**trainer_overrides)
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    else:
        module = context.stages.fit(
            name,
            config,
            make_module,
            trainer_overrides=trainer_overrides,
            train_dataloaders=train_loader,
            val_dataloaders=val_loader,
        )
    metrics = module.final_metrics()
    if not metrics:
        raise RuntimeError(f"stage {name} ran no validation epoch (is trainer.limit_val_batches 0?)")
    return module, metrics


def _compute_stage(context: RunContext, name: str, config: dict[str, Any], compute: Callable[[], Any]) -> Any:
    """`compute()` as the run's stage `name` (unseeded), or directly when the run has no stages."""
    return compute() if context.stages is None else context.stages.compute(name, config, compute)


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

    @property
    def augment(self) -> dict[str, Any]:
        """The settings that change training (input augmentation); `shot_fraction` only groups the metrics."""
        return {k: self.ce_params[k] for k in ("noise_std", "max_shift")}

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

    def stage_configs(self, context: RunContext) -> dict[str, dict[str, Any]]:
        """The config of each stage. The base model sees the labeled set only (its split hash and the data
        settings without `POOL_KEYS`), so the pools of one labeled set (table_semi's rho_U columns) share it;
        the pool's probabilities add the pool (the full split hash, `POOL_KEYS`); only the retrain depends on
        the threshold."""
        cfg, datamodule = context.cfg, context.datamodule
        base = {
            **fit_config(cfg, datamodule.labeled_split_hash, drop_data_keys=POOL_KEYS),
            "augment": self.augment,
        }
        pool = {key: OmegaConf.select(cfg, f"data.{key}") for key in POOL_KEYS}
        probs = {"base": base, "split_hash": datamodule.split_hash, "pool": pool}
        return {
            "semi_base": base,
            "semi_pool_probs": probs,
            "semi_retrain": {**probs, "threshold": self.threshold},
        }

    def run(self, context: RunContext) -> dict[str, float]:
        datamodule = context.datamodule
        configs = self.stage_configs(context)
        base, base_metrics = _fit_stage(
            context,
            "semi_base",
            configs["semi_base"],
            lambda: self.ce_module(context),
            datamodule.train_dataloader(),
        )
        pool = datamodule.loader(datamodule.unlabeled_dataset(), shuffle=False, train=False)
        probs = _compute_stage(
            context, "semi_pool_probs", configs["semi_pool_probs"], lambda: base.predict_proba(pool)
        )
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
        merged = datamodule.labeled_and_pseudo_labeled(pseudo, keep)
        student, student_metrics = _fit_stage(
            context,
            "semi_retrain",
            configs["semi_retrain"],
            lambda: self.ce_module(context),
            datamodule.loader(merged, shuffle=True),
        )
        metrics.update(student_metrics)
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

    def stage_configs(self, context: RunContext) -> dict[str, dict[str, Any]]:
        """The config of each stage: the fit settings, the augmentation (both fits use it) and the
        pre-training's epochs; the fine-tuning starts from the pre-trained weights, so it adds nothing."""
        pretrain = {
            **fit_config(context.cfg, context.datamodule.split_hash),
            "augment": self.augment,
            "pretrain_epochs": self.pretrain_epochs,
        }
        return {"ssp_pretrain": pretrain, "ssp_finetune": {"pretrain": pretrain}}

    def run(self, context: RunContext) -> dict[str, float]:
        datamodule = context.datamodule
        configs = self.stage_configs(context)
        overrides = {} if self.pretrain_epochs is None else {"max_epochs": int(self.pretrain_epochs)}
        pretrain, pre_metrics = _fit_stage(
            context,
            "ssp_pretrain",
            configs["ssp_pretrain"],
            lambda: context.make_module({"name": ROTATION_METHOD, **self.augment}),
            datamodule.train_dataloader(),
            **overrides,
        )

        def pretrained_ce_module() -> Any:
            module = self.ce_module(context)
            transfer_backbone(pretrain.backbone, module.backbone)
            return module

        module, metrics = _fit_stage(
            context,
            "ssp_finetune",
            configs["ssp_finetune"],
            pretrained_ce_module,
            datamodule.train_dataloader(),
        )
        metrics = {"pretrain/rotation_acc": pre_metrics["test/acc"], **metrics}
        context.curves = {**module.curves, "pretrain/val_rotation_acc": pretrain.curves["val/acc"]}
        return metrics
