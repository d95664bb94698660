"""LightningModules of self-supervised label augmentation (SLA) and its rotation baselines.

Every module trains on the four rotations of each batch (0, 90, 180, 270 degrees, example-major, through
``common.data.transforms.rotation_label_augment``) in one forward pass, as the official trainers do
(hankook/SLA @ bc5d9cd, ``trainers.py``), and evaluates the clean test split every epoch with

  * single inference: one forward pass of the untransformed image (``forward``);
  * aggregated inference (joint-label modules only): the joint logits of the four rotations averaged per
    class, ``s_i = 1/M sum_j w_{ij}^T f(t_j(x))`` (``common.data.transforms.aggregate_joint_logits``).

Methods (the rows of the paper's tables; the baseline is the shared ``ce`` method):

  ``sla_da``  rotation as plain data augmentation: one N-way head, every rotation keeps its label;
  ``sla_mt``  multi-task learning: an N-way class head and a 4-way rotation head on shared features;
  ``sla``     the joint N*4-way head; ``inference: single`` is SLA+SI, ``inference: aggregated`` SLA+AG;
  ``sla_sd``  SLA plus an N-way head self-distilled from the aggregated prediction; ``inference: single``
              (that head, one forward pass) is SLA+SD.

The backbone's own classifier is removed (``reset_classifier(0)``) and the heads are plain linear layers on
its pooled features, as the official ``models/__init__.py`` (``check_model``) builds them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from common.data.transforms import (
    NUM_ROTATIONS,
    aggregate_joint_logits,
    rotate_batch,
    rotation_label_augment,
)
from common.lit import ClassificationModule
from common.lit.epoch_metrics import log_epoch_metrics
from common.registry import register_method
from papers.sla.losses import (
    data_augmentation_loss,
    joint_label_loss,
    multi_task_loss,
    self_distillation_loss,
)

INFERENCE_MODES = ("single", "aggregated")


class RotationModule(ClassificationModule):
    """Shared loop of the rotation methods: rotated training batch, single and aggregated evaluation.

    Subclasses build their heads in ``build_heads`` and implement ``class_logits`` (single inference) and
    ``rotation_loss``; joint-label subclasses also implement ``joint_logits``. ``val/acc`` (and so
    ``test/acc``) follows ``inference``; both accuracies are recorded as ``test/acc_single`` and
    ``test/acc_agg`` when the module has a joint head."""

    num_transforms: int = NUM_ROTATIONS
    has_joint_head: bool = False

    def __init__(self, *args: Any, inference: str = "single", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if inference not in INFERENCE_MODES:
            raise ValueError(f"inference must be one of {INFERENCE_MODES}, got {inference!r}")
        if inference == "aggregated" and not self.has_joint_head:
            raise ValueError(f"{type(self).__name__} has no joint-label head, so no aggregated inference")
        self.inference = inference
        if not hasattr(self.backbone, "reset_classifier") or not hasattr(self.backbone, "num_features"):
            raise TypeError("the rotation methods need a backbone with num_features and reset_classifier")
        self.backbone.reset_classifier(0)  # the heads below replace it; forward now gives pooled features
        self.build_heads(int(self.backbone.num_features))
        self.curves["val/acc_single"] = []
        if self.has_joint_head:
            self.curves["val/acc_agg"] = []
        self.register_buffer("_rotation_val_stats", torch.zeros(3), persistent=False)  # single, agg, total

    # ---- to implement --------------------------------------------------------------------------------------
    def build_heads(self, num_features: int) -> None:
        raise NotImplementedError

    def class_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Single-inference class logits (B, N) from the features of untransformed inputs."""
        raise NotImplementedError

    def joint_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Joint-label logits (B, N * M)."""
        raise NotImplementedError

    def rotation_loss(self, features: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss on the features of the rotated batch (B * M rows, example-major) and the single-inference
        logits of its unrotated rows (B, N)."""
        raise NotImplementedError

    # ---- shared --------------------------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.class_logits(self.features(x))

    def aggregated_logits(self, x: torch.Tensor) -> torch.Tensor:
        """SLA+AG class logits (B, N): joint logits of the four rotations of ``x`` averaged per class."""
        rotated = torch.stack([rotate_batch(x, r) for r in range(self.num_transforms)], dim=1)
        joint = self.joint_logits(self.features(rotated.reshape(-1, *x.shape[1:])))
        return aggregate_joint_logits(joint, self.num_transforms)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        rotated, _, _ = rotation_label_augment(batch["x"], batch["y"], self.num_classes)
        loss, single = self.rotation_loss(self.features(rotated), batch["y"])
        with torch.no_grad():
            noisy = batch["y"] != batch["y_clean"]
            fit_noisy = ((single.argmax(1) == batch["y"]) & noisy).sum()
            self._epoch_stats += torch.stack(
                [loss.detach().float(), loss.new_ones(()), fit_noisy, noisy.sum()]
            )
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        x, y = batch["x"], batch["y_clean"]
        correct_single = (self(x).argmax(1) == y).sum()
        if self.has_joint_head:
            correct_agg = (self.aggregated_logits(x).argmax(1) == y).sum()
        else:
            correct_agg = torch.zeros_like(correct_single)
        self._rotation_val_stats += torch.stack(
            [correct_single, correct_agg, correct_single.new_tensor(len(y))]
        ).float()

    def on_validation_epoch_end(self) -> None:
        correct_single, correct_agg, total = self._rotation_val_stats.tolist()
        self._rotation_val_stats.zero_()
        if self.trainer.sanity_checking:
            return
        single = 100.0 * correct_single / max(total, 1)
        acc = {"val/acc_single": single}
        if self.has_joint_head:
            acc["val/acc_agg"] = 100.0 * correct_agg / max(total, 1)
        acc["val/acc"] = acc["val/acc_agg"] if self.inference == "aggregated" else single
        for key, value in acc.items():
            self.curves[key].append(value)
        log_epoch_metrics(self, acc)

    def final_metrics(self) -> dict[str, float]:
        metrics = super().final_metrics()
        if metrics:
            metrics["test/acc_single"] = self.curves["val/acc_single"][-1]
            if self.has_joint_head:
                metrics["test/acc_agg"] = self.curves["val/acc_agg"][-1]
        return metrics


@register_method("sla_da")
class RotationAugmentationModule(RotationModule):
    """DA baseline: rotations as label-preserving augmentation of one N-way classifier (L_DA)."""

    def build_heads(self, num_features: int) -> None:
        self.class_head = nn.Linear(num_features, self.num_classes)

    def class_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.class_head(features)

    def rotation_loss(self, features: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.class_head(features)
        return data_augmentation_loss(logits, y, self.num_transforms), logits[:: self.num_transforms]


@register_method("sla_mt")
class RotationMultiTaskModule(RotationModule):
    """MT baseline: an N-way class head and a rotation-prediction head on shared features (L_MT)."""

    def build_heads(self, num_features: int) -> None:
        self.class_head = nn.Linear(num_features, self.num_classes)
        self.rotation_head = nn.Linear(num_features, self.num_transforms)

    def class_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.class_head(features)

    def rotation_loss(self, features: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.class_head(features)
        rotation = self.rotation_head(features)
        loss = multi_task_loss(logits, rotation, y, self.num_transforms)
        return loss, logits[:: self.num_transforms]


@register_method("sla")
class JointLabelModule(RotationModule):
    """SLA: one softmax over the N*4 joint (class, rotation) labels (L_SLA).

    Single inference (SLA+SI) reads the identity-rotation logits ``z[:, y * 4 + 0]`` of the untransformed
    image (official ``preds[::n, ::n]``); aggregated inference (SLA+AG) averages the diagonal joint logits of
    the four rotations. ``sum_over_transforms`` is the official ``--with-large-loss``."""

    has_joint_head = True

    def __init__(self, *args: Any, sum_over_transforms: bool = False, **kwargs: Any) -> None:
        self.sum_over_transforms = bool(sum_over_transforms)
        super().__init__(*args, **kwargs)

    def build_heads(self, num_features: int) -> None:
        self.joint_head = nn.Linear(num_features, self.num_classes * self.num_transforms)

    def joint_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.joint_head(features)

    def class_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.joint_head(features)[:, :: self.num_transforms]

    def rotation_loss(self, features: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        joint = self.joint_head(features)
        loss = joint_label_loss(joint, y, self.num_transforms, sum_over_transforms=self.sum_over_transforms)
        m = self.num_transforms
        return loss, joint[::m, ::m]


@register_method("sla_sd")
class SelfDistillationModule(JointLabelModule):
    """SLA+SD: the joint head plus an N-way head trained with cross entropy and a KL term towards the
    (detached) aggregated prediction at temperature T; its single forward pass is the SLA+SD prediction."""

    def __init__(self, *args: Any, temperature: float = 1.0, **kwargs: Any) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        super().__init__(*args, **kwargs)

    def build_heads(self, num_features: int) -> None:
        super().build_heads(num_features)
        self.single_head = nn.Linear(num_features, self.num_classes)

    def class_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.single_head(features)

    def rotation_loss(self, features: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        joint = self.joint_head(features)
        single = self.single_head(features[:: self.num_transforms])  # the identity-rotation rows
        parts = self_distillation_loss(
            joint,
            single,
            y,
            self.num_transforms,
            temperature=self.temperature,
            sum_over_transforms=self.sum_over_transforms,
        )
        return parts["total"], single
