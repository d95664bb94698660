"""LightningModules of the two recipes of Yang & Xu (NeurIPS 2020): long-tail cross entropy with tail-class
metrics, and rotation-prediction pre-training (self-supervised pre-training, SSP).

Official code: YyzHarry/imbalanced-semi-self (train.py, train_semi.py, pretrain_rot.py, utils.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common.data.transforms import NUM_ROTATIONS, GaussianNoise, RandomTranslate, rotate_batch
from common.eval.metrics import balanced_accuracy, shot_group_accuracy
from common.lit import ClassificationModule
from common.registry import register_method

__all__ = ["LongTailCEModule", "RotationPretrainModule", "rank_shot_thresholds"]


def rank_shot_thresholds(train_class_counts: Sequence[int], group_size: int) -> tuple[int, int]:
    """``(many, few)`` count thresholds that put the ``group_size`` largest classes in the many-shot group and
    the ``group_size`` smallest in the few-shot group of ``common.eval.metrics.shot_group_accuracy`` (ties
    join their group). CIFAR-10-LT has too few classes for OLTR's fixed 100 / 20 thresholds."""
    counts = sorted(int(c) for c in train_class_counts)
    if not 1 <= group_size <= len(counts) // 2:
        raise ValueError(f"group_size must lie in [1, {len(counts) // 2}], got {group_size}")
    few, many = counts[group_size - 1], counts[-group_size]
    if not few < many:
        raise ValueError(f"the class counts {counts} are too flat to split into many/few-shot groups")
    return many, few


@register_method("rethinking_labels_ce")
class LongTailCEModule(ClassificationModule):
    """Cross entropy (the paper's CE rows), with training-time input noise and per-class test metrics.

    Args (beyond ClassificationModule's):
        noise_std, max_shift: label-preserving augmentations of the training inputs (Gaussian noise; pixel
            shifts for images), the mini stand-ins for the official random crop and flip.
        shot_fraction: share of the classes in each of the many-shot and few-shot groups, by training count.
        train_class_counts: the long-tailed (labeled) training counts that define the groups; by default read
            from the datamodule's training labels at fit start.
    """

    def __init__(
        self,
        *args: Any,
        noise_std: float = 0.0,
        max_shift: int = 0,
        shot_fraction: float = 0.3,
        train_class_counts: Sequence[int] | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.noise = GaussianNoise(float(noise_std))
        self.translate = RandomTranslate(int(max_shift))
        self.shot_fraction = float(shot_fraction)
        self.train_class_counts = None if train_class_counts is None else [int(c) for c in train_class_counts]
        self._val_preds: list[torch.Tensor] = []
        self._val_targets: list[torch.Tensor] = []
        self._last_eval: tuple[torch.Tensor, torch.Tensor] | None = None

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = self.translate(x)
        return self.noise(x)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return super().training_step({**batch, "x": self.augment(batch["x"])}, batch_idx)

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.train_class_counts is None and datamodule is not None:
            counts = np.bincount(np.asarray(datamodule.train_labels), minlength=self.num_classes)
            self.train_class_counts = counts.tolist()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        preds = self(batch["x"]).argmax(1)
        correct = (preds == batch["y_clean"]).sum()
        self._val_stats += torch.stack([correct, correct.new_tensor(len(preds))]).float()
        self._val_preds.append(preds.detach())
        self._val_targets.append(batch["y_clean"].detach())

    def on_validation_epoch_end(self) -> None:
        if self._val_preds:
            self._last_eval = (torch.cat(self._val_preds).cpu(), torch.cat(self._val_targets).cpu())
        self._val_preds, self._val_targets = [], []
        super().on_validation_epoch_end()

    # The last evaluation travels with the weights (checkpoints, stored stages), so a module restored without
    # training reports the same tail metrics as the one that trained.
    def get_extra_state(self) -> dict[str, torch.Tensor]:
        if self._last_eval is None:
            return {}
        preds, targets = self._last_eval
        return {"preds": preds, "targets": targets}

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self._last_eval = (state["preds"], state["targets"]) if state else None

    def tail_metrics(self) -> dict[str, float]:
        """Balanced and many/medium/few-shot accuracy (%) of the last evaluation (kept in the state dict)."""
        if self._last_eval is None or self.train_class_counts is None:
            return {}
        preds, targets = self._last_eval
        group = max(1, round(self.shot_fraction * self.num_classes))
        many, few = rank_shot_thresholds(self.train_class_counts, group)
        shots = shot_group_accuracy(preds, targets, self.train_class_counts, many=many, few=few)
        metrics = {f"test/acc_{name}": value for name, value in shots.items() if np.isfinite(value)}
        metrics["test/balanced_acc"] = balanced_accuracy(preds, targets)
        return metrics

    def final_metrics(self) -> dict[str, float]:
        metrics = super().final_metrics()
        if metrics:
            # The paper reports top-1 error (official code: the best epoch; here the last, the best is kept).
            metrics["test/error"] = 100.0 - metrics["test/acc"]
            metrics["test/error_best"] = 100.0 - metrics["test/acc_best"]
            metrics.update(self.tail_metrics())
        return metrics


def balanced_rotations(n: int, device: torch.device | None = None) -> torch.Tensor:
    """One rotation per image, each of the four equally often up to one (official utils.py ``rotation``:
    a random permutation of ``[0, 1, 2, 3] * (n // 4 + 1)`` cut to n)."""
    base = torch.arange(NUM_ROTATIONS, device=device).repeat(n // NUM_ROTATIONS + 1)
    return base[torch.randperm(len(base), device=device)][:n]


@register_method("rethinking_labels_rotation")
class RotationPretrainModule(ClassificationModule):
    """Rotation prediction (Gidaris et al., ICLR 2018) on the training images, labels unused: each image is
    rotated by a random multiple of 90 degrees and a 4-way head predicts which. ``val/acc`` is the rotation
    accuracy on the (rotated) test images, as the official pretrain_rot.py validates."""

    def __init__(self, *args: Any, noise_std: float = 0.0, max_shift: int = 0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.backbone.reset_classifier(NUM_ROTATIONS)
        self.noise = GaussianNoise(float(noise_std))
        self.translate = RandomTranslate(int(max_shift))

    def _rotated(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rotation = balanced_rotations(len(x), x.device)
        return rotate_batch(x, rotation), rotation

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x = self.noise(self.translate(batch["x"]))
        rotated, rotation = self._rotated(x)
        loss = F.cross_entropy(self(rotated), rotation)
        self._epoch_stats += torch.stack([loss.detach().float(), loss.new_ones(()), loss.new_zeros(()),
                                          loss.new_zeros(())])  # fmt: skip
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        rotated, rotation = self._rotated(batch["x"])
        correct = (self(rotated).argmax(1) == rotation).sum()
        self._val_stats += torch.stack([correct, correct.new_tensor(len(rotation))]).float()
