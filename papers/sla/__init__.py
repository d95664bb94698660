"""SLA: Self-supervised Label Augmentation via Input Transformations (Lee, Hwang & Shin, ICML 2020)."""

from papers.sla.backbone import CifarResNet
from papers.sla.losses import (
    data_augmentation_loss,
    joint_label_loss,
    multi_task_loss,
    self_distillation_loss,
)
from papers.sla.module import (
    JointLabelModule,
    RotationAugmentationModule,
    RotationModule,
    RotationMultiTaskModule,
    SelfDistillationModule,
)

__all__ = [
    "CifarResNet",
    "JointLabelModule",
    "RotationAugmentationModule",
    "RotationModule",
    "RotationMultiTaskModule",
    "SelfDistillationModule",
    "data_augmentation_loss",
    "joint_label_loss",
    "multi_task_loss",
    "self_distillation_loss",
]
