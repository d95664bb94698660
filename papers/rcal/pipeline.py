"""RCAL as a harness pipeline (Zhang et al. ICCV 2023, "When Noisy Labels Meet Long Tail Dilemmas").

One run:
1. contrastive pre-training of the encoder without labels (`common.lit.contrastive`, InfoNCE with in-batch
   negatives; the paper uses MoCo), the stage `encoder` (`common.lit.stages`) keyed by (data without its
   label noise, model, schedule, seed), so that every row and noise rate of a table shares one encoder;
2. fixed encoder features of the training and test images; a linear classifier on them, trained with
   - `calibration: none`: the noisy long-tailed features as they are (cross entropy, optionally with
     class-balanced weights: `class_weighting: class_balanced`), or
   - `calibration: distributional`: RCAL's distributional calibration (papers/rcal/calibration.py): LOF
     outlier removal per noisy class, Gaussian estimates, tail classes borrowing from the nearest head
     classes, sampled points balancing every class, classifier on real + sampled features;
3. optionally (`individual_calibration: true`) RCAL's individual calibration (papers/rcal/module.py):
   encoder and classifier fine-tuned with mixup, the sampled points and a distance penalty to the frozen
   contrastive representations.
Reported: top-1 and balanced accuracy on the clean test set and many/medium/few-shot accuracy (OLTR groups
by the clean long-tailed class sizes)."""

from __future__ import annotations

import copy
import hashlib
import math
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.seed import isolate_rng
from omegaconf import OmegaConf
from torch import nn

from common.errors import UserError
from common.eval import extract_features
from common.eval.metrics import balanced_accuracy, shot_group_accuracy, top_k_accuracy
from common.lit import Pipeline, RunContext
from common.registry import register_method
from common.results.record import training_config
from papers.rcal.calibration import (
    calibrate_tail,
    class_balanced_weights,
    class_gaussians,
    lof_inliers,
    sample_to_balance,
)
from papers.rcal.module import IndividualCalibrationModule, embed

CALIBRATIONS = ("none", "distributional")
WEIGHTINGS = ("none", "class_balanced")
GROUPS = ("all", "many", "medium", "few")
_NOISE_KEYS = ("noise_type", "noise_rate", "noise_map", "noise_sparsity", "noise_include_true_class")


def train_linear_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    class_weights: torch.Tensor | None = None,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 5e-4,
    batch_size: int = 256,
    seed: int = 0,
) -> nn.Linear:
    """A linear classifier trained with Adam and (optionally class-weighted) cross entropy on fixed
    features, shuffled into mini-batches by a generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(int(seed))
    head = nn.Linear(features.shape[1], num_classes)
    bound = 1.0 / math.sqrt(features.shape[1])
    with torch.no_grad():
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.uniform_(-bound, bound, generator=generator)
    head = head.to(features.device)
    weight = None if class_weights is None else class_weights.to(features.device, torch.float32)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(int(epochs)):
            for idx in torch.randperm(len(labels), generator=generator).split(batch_size):
                idx = idx.to(features.device)
                loss = F.cross_entropy(head(features[idx]), labels[idx], weight=weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return head


@register_method("rcal")
class RCALPipeline(Pipeline):
    """Contrastive pre-training -> (distributional calibration) -> linear classifier -> (individual
    calibration). `pretrain` holds the `contrastive` method's options for stage 1 (its optimiser and epochs
    are the run's `optim` and `trainer`). `report_group` chooses which accuracy is `test/group_acc`; `cache`
    makes stage 1 the run's stage `encoder`, shared by the runs that train the same encoder."""

    def __init__(
        self,
        pretrain: dict[str, Any] | None = None,
        calibration: str = "distributional",
        class_weighting: str = "none",
        cb_beta: float = 0.9999,
        feature_norm: str = "l2",
        lof_neighbors: int = 20,
        lof_min_examples: int = 5,
        covariance: str = "ledoit_wolf",
        head_fraction: float = 0.5,
        num_borrowed: int = 2,
        blend_means: bool = True,
        real_examples: str = "all",
        head_epochs: int = 100,
        head_lr: float = 1e-2,
        head_weight_decay: float = 5e-4,
        head_batch_size: int = 256,
        individual_calibration: bool = False,
        ic_epochs: int = 10,
        ic_lr: float = 0.01,
        ic_momentum: float = 0.9,
        ic_weight_decay: float = 5e-4,
        distance_weight: float = 1.0,
        mixup_alpha: float = 1.0,
        many_threshold: int = 100,
        few_threshold: int = 20,
        report_group: str = "all",
        cache: bool = True,
    ):
        for name, value, allowed in (
            ("calibration", calibration, CALIBRATIONS),
            ("class_weighting", class_weighting, WEIGHTINGS),
            ("report_group", report_group, GROUPS),
            ("feature_norm", feature_norm, ("l2", "none")),
            ("real_examples", real_examples, ("all", "inliers")),
        ):
            if value not in allowed:
                raise UserError(f"method.{name}={value!r} is not one of {allowed}")
        if individual_calibration and calibration != "distributional":
            raise UserError("method.individual_calibration=true needs method.calibration=distributional")
        self.pretrain = {"name": "contrastive", **(pretrain or {})}
        self.calibration, self.class_weighting, self.cb_beta = calibration, class_weighting, float(cb_beta)
        self.feature_norm = feature_norm
        self.lof_neighbors, self.lof_min_examples = int(lof_neighbors), int(lof_min_examples)
        self.covariance, self.head_fraction = covariance, float(head_fraction)
        self.num_borrowed, self.blend_means, self.real_examples = (
            int(num_borrowed),
            bool(blend_means),
            real_examples,
        )
        self.head_epochs, self.head_lr = int(head_epochs), float(head_lr)
        self.head_weight_decay, self.head_batch_size = float(head_weight_decay), int(head_batch_size)
        self.individual_calibration, self.ic_epochs = bool(individual_calibration), int(ic_epochs)
        self.ic_lr, self.ic_momentum, self.ic_weight_decay = (
            float(ic_lr),
            float(ic_momentum),
            float(ic_weight_decay),
        )
        self.distance_weight, self.mixup_alpha = float(distance_weight), float(mixup_alpha)
        self.many_threshold, self.few_threshold = int(many_threshold), int(few_threshold)
        self.report_group, self.cache = report_group, bool(cache)

    # ---- stage 1 -------------------------------------------------------------------------------------------
    def encoder_stage_config(self, context: RunContext) -> dict[str, Any]:
        """What decides the pre-trained encoder: the data config without its label noise, the kept
        (long-tailed) training images, model, optim, trainer, pre-training options, seed."""
        cfg = context.cfg
        data = OmegaConf.to_container(cfg.data, resolve=True)
        for key in _NOISE_KEYS:
            data.pop(key, None)
        datamodule = context.datamodule
        # The kept images, by their clean labels: a guard that the noise settings do not change them.
        images = hashlib.sha256(np.ascontiguousarray(datamodule.train_labels_clean).tobytes())
        images.update(np.ascontiguousarray(np.asarray(datamodule.test_labels)).tobytes())
        return {
            "data": data,
            "clean_labels": images.hexdigest(),
            "num_train": int(datamodule.num_train),
            **{key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "optim", "trainer")},
            "pretrain": self.pretrain,
            "seed": int(cfg.seed),
        }

    def pretrain_encoder(self, context: RunContext) -> tuple[nn.Module, dict[str, float]]:
        """The stage-1 encoder (backbone, no classifier) and its last-epoch loss: the stage `encoder`, trained
        once and shared by every run with the same images, model, schedule and seed (trained here, unshared,
        with `method.cache=false` or without the run's stages)."""

        def make_module() -> L.LightningModule:
            return context.make_module(self.pretrain)

        seed = int(context.cfg.seed)
        # Loaders, not the data module: the contrastive module's kNN monitor (on noisy labels) is skipped.
        loader = context.datamodule.train_dataloader()
        if self.cache and context.stages is not None:
            config = self.encoder_stage_config(context)
            module = context.stages.fit("encoder", config, make_module, seed=seed, train_dataloaders=loader)
        else:
            module = make_module()
            with isolate_rng(include_cuda=True):
                L.seed_everything(seed, verbose=False)
                context.make_trainer().fit(module, train_dataloaders=loader)
        context.curves["stage1/loss"] = module.curves["train/loss"]
        return module.backbone.cpu(), {"stage1/loss": module.curves["train/loss"][-1]}

    # ---- the run -------------------------------------------------------------------------------------------
    def run(self, context: RunContext) -> dict[str, float]:
        datamodule = context.datamodule
        num_classes = int(datamodule.num_classes)
        noisy = np.asarray(datamodule.train_labels, dtype=np.int64)
        clean = np.asarray(datamodule.train_labels_clean, dtype=np.int64)
        seed = int(context.cfg.seed)
        metrics: dict[str, float] = {"noise/actual": 100.0 * float(np.mean(noisy != clean))}

        encoder, stage1 = self.pretrain_encoder(context)
        metrics.update(stage1)
        device = self._device(context)
        encoder = encoder.to(device).eval()
        train_feats, _ = extract_features(encoder, datamodule.eval_train_dataloader(), device)
        test_feats, test_labels = extract_features(
            encoder, datamodule.test_dataloader(), device, label_key="y_clean"
        )
        z_train = embed(train_feats, self.feature_norm)
        z_test = embed(test_feats, self.feature_norm)

        rng = np.random.default_rng([seed, 2])
        x_fit, y_fit = z_train, torch.as_tensor(noisy, device=device)
        sampled = (z_train[:0], y_fit[:0])
        class_weights = None
        if self.calibration == "distributional":
            z_np = z_train.double().cpu().numpy()
            inliers = lof_inliers(
                z_np, noisy, num_classes, n_neighbors=self.lof_neighbors, min_examples=self.lof_min_examples
            )
            removed = ~inliers
            truly_noisy = noisy != clean
            metrics["lof/removed_fraction"] = 100.0 * float(removed.mean())
            metrics["lof/precision"] = 100.0 * float(truly_noisy[removed].mean()) if removed.any() else 0.0
            metrics["lof/recall"] = 100.0 * float(removed[truly_noisy].mean()) if truly_noisy.any() else 0.0
            stats = class_gaussians(z_np[inliers], noisy[inliers], num_classes, covariance=self.covariance)
            stats = calibrate_tail(
                stats,
                head_fraction=self.head_fraction,
                num_borrowed=self.num_borrowed,
                blend_means=self.blend_means,
            )
            keep = inliers if self.real_examples == "inliers" else np.ones(len(noisy), dtype=bool)
            real_counts = np.bincount(noisy[keep], minlength=num_classes)
            points, point_labels = sample_to_balance(stats, real_counts, rng)
            sampled = (torch.as_tensor(points, device=device), torch.as_tensor(point_labels, device=device))
            keep_t = torch.as_tensor(keep, device=device)
            x_fit = torch.cat([z_train[keep_t], sampled[0]])
            y_fit = torch.cat([y_fit[keep_t], sampled[1]])
            metrics["dc/sampled_points"] = float(len(point_labels))
            metrics["dc/borrowed_classes"] = float(stats.borrowed.sum())
        if self.class_weighting == "class_balanced":
            counts = np.bincount(noisy, minlength=num_classes)
            class_weights = torch.as_tensor(class_balanced_weights(counts, self.cb_beta), dtype=torch.float32)
        head = train_linear_head(
            x_fit,
            y_fit,
            num_classes,
            class_weights=class_weights,
            epochs=self.head_epochs,
            lr=self.head_lr,
            weight_decay=self.head_weight_decay,
            batch_size=self.head_batch_size,
            seed=seed,
        )
        with torch.no_grad():
            logits = head(z_test)
        if self.individual_calibration:
            metrics.update(self._scores(logits, test_labels, clean, num_classes, prefix="dc/"))
            logits = self._individual_calibration(context, encoder, head, sampled, len(noisy), device)
        metrics.update(self._scores(logits, test_labels, clean, num_classes))
        metrics["test/group_acc"] = metrics[
            "test/acc" if self.report_group == "all" else f"test/{self.report_group}_acc"
        ]
        return metrics

    def _individual_calibration(
        self,
        context: RunContext,
        encoder: nn.Module,
        head: nn.Linear,
        sampled: tuple[torch.Tensor, torch.Tensor],
        num_real: int,
        device: torch.device,
    ) -> torch.Tensor:
        """Stage 3, the stage `individual_calibration` (keyed by the run's whole training config, which
        decides the encoder, the head and the sampled points); returns the fine-tuned model's test logits."""
        datamodule = context.datamodule
        seed = int(context.cfg.seed)
        # Never longer than stage 1 (trainer.max_epochs): a shortened run (a smoke test) shortens both.
        epochs = min(self.ic_epochs, int(context.cfg.trainer.max_epochs))

        def make_module() -> IndividualCalibrationModule:
            module = IndividualCalibrationModule(
                copy.deepcopy(encoder).cpu().train(),
                copy.deepcopy(head).cpu(),
                (sampled[0].cpu(), sampled[1].cpu()),
                feature_norm=self.feature_norm,
                distance_weight=self.distance_weight,
                mixup_alpha=self.mixup_alpha,
                lr=self.ic_lr,
                momentum=self.ic_momentum,
                weight_decay=self.ic_weight_decay,
                max_epochs=self.ic_epochs,
                num_real=num_real,
                seed=seed,
            )
            module.max_epochs = epochs
            return module

        stage_seed = int(np.random.SeedSequence([seed, 3]).generate_state(1)[0])
        overrides = {"max_epochs": epochs, "limit_val_batches": 0}
        loader = datamodule.loader(datamodule.weak_train_dataset(), shuffle=True)
        if self.cache and context.stages is not None:
            config = {"run": training_config(context.cfg)}
            module = context.stages.fit(
                "individual_calibration",
                config,
                make_module,
                trainer_overrides=overrides,
                seed=stage_seed,
                train_dataloaders=loader,
            )
        else:
            module = make_module()
            with isolate_rng(include_cuda=True):
                L.seed_everything(stage_seed, verbose=False)
                context.make_trainer(**overrides).fit(module, train_dataloaders=loader)
        context.curves.update(module.curves)
        module = module.to(device).eval()
        with torch.no_grad():
            outputs = [module(batch["x"].to(device)) for batch in datamodule.test_dataloader()]
        return torch.cat(outputs)

    def _scores(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        clean_train: np.ndarray,
        num_classes: int,
        prefix: str = "test/",
    ) -> dict[str, float]:
        counts = np.bincount(clean_train, minlength=num_classes)
        groups = shot_group_accuracy(
            logits.cpu(), targets.cpu(), counts, many=self.many_threshold, few=self.few_threshold
        )
        scores = {
            f"{prefix}acc": top_k_accuracy(logits.cpu(), targets.cpu()),
            f"{prefix}balanced_acc": balanced_accuracy(logits.cpu(), targets.cpu()),
        }
        scores.update(
            {f"{prefix}{name}_acc": value for name, value in groups.items() if not math.isnan(value)}
        )
        return scores

    @staticmethod
    def _device(context: RunContext) -> torch.device:
        accelerator = str(context.cfg.trainer.get("accelerator", "auto"))
        if accelerator != "cpu" and torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
