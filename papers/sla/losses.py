"""Training objectives of self-supervised label augmentation (SLA; Lee, Hwang & Shin, ICML 2020) and of the
two rotation baselines the paper compares it with.

Every function takes logits of the example-major rotated batch built by
``common.data.transforms.rotation_label_augment``: row ``i * M + j`` is example ``i`` under transformation
``j`` (M = 4 rotations), as in the official code (hankook/SLA @ bc5d9cd, ``augmentations.py:5-10``). With
``z_j = f(t_j(x))``, N classes and M transformations (notation of the paper's Section 2):

  * DA (rotation as plain data augmentation, invariant labels):
        L_DA  = 1/M sum_j CE(sigma(z_j; u), y)
  * MT (multi-task rotation prediction, two heads on shared features):
        L_MT  = 1/M sum_j [ CE(sigma(z_j; u), y) + CE(sigma(z_j; v), j) ]
  * SLA (one softmax over the N*M joint labels (y, j) -> y * M + j):
        L_SLA = 1/M sum_j CE(rho(z_j; w), (y, j))
    (``trainers.py:68-69``; ``--with-large-loss`` multiplies it by M, ``trainers.py:70-71``);
  * SLA+SD (self-distillation of the aggregated prediction into a single-label head u on the untransformed
    input; ``trainers.py:130-147``):
        L_SD  = L_SLA + CE(sigma(z_0; u), y) + T^2 KL(softmax(s / T) || softmax(sigma-logits(z_0; u) / T)),
    where ``s_i = 1/M sum_j w_{ij}^T z_j`` are the aggregated logits, treated as a constant (detached).

Batch means everywhere; the KL term is ``F.kl_div(..., reduction="batchmean")`` as in the official code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common.data.transforms import NUM_ROTATIONS, aggregate_joint_logits, joint_label


def _check_rotated(logits: torch.Tensor, y: torch.Tensor, num_transforms: int, what: str) -> None:
    if logits.ndim != 2:
        raise ValueError(f"{what} must have shape (batch * {num_transforms}, K); got {tuple(logits.shape)}")
    if y.ndim != 1 or logits.shape[0] != y.shape[0] * num_transforms:
        raise ValueError(
            f"{what} has {logits.shape[0]} rows but the batch has {y.shape[0]} labels; the rotated batch "
            f"must hold {num_transforms} rows per example (example-major)."
        )


def expand_labels(y: torch.Tensor, num_transforms: int = NUM_ROTATIONS) -> tuple[torch.Tensor, torch.Tensor]:
    """Class and transformation label of every row of the example-major transformed batch."""
    classes = y.repeat_interleave(num_transforms)
    transforms = torch.arange(num_transforms, device=y.device).repeat(len(y))
    return classes, transforms


def data_augmentation_loss(
    logits: torch.Tensor, y: torch.Tensor, num_transforms: int = NUM_ROTATIONS
) -> torch.Tensor:
    """L_DA: cross entropy of every transformed copy against the original label (``logits``: (B*M, N))."""
    _check_rotated(logits, y, num_transforms, "class logits")
    classes, _ = expand_labels(y, num_transforms)
    return F.cross_entropy(logits, classes)


def multi_task_loss(
    class_logits: torch.Tensor,
    transform_logits: torch.Tensor,
    y: torch.Tensor,
    num_transforms: int = NUM_ROTATIONS,
) -> torch.Tensor:
    """L_MT: class cross entropy (head u, (B*M, N)) plus transformation cross entropy (head v, (B*M, M))."""
    _check_rotated(class_logits, y, num_transforms, "class logits")
    _check_rotated(transform_logits, y, num_transforms, "transformation logits")
    if transform_logits.shape[1] != num_transforms:
        raise ValueError(
            f"transformation logits need {num_transforms} columns, got {transform_logits.shape[1]}"
        )
    classes, transforms = expand_labels(y, num_transforms)
    return F.cross_entropy(class_logits, classes) + F.cross_entropy(transform_logits, transforms)


def joint_label_loss(
    joint_logits: torch.Tensor,
    y: torch.Tensor,
    num_transforms: int = NUM_ROTATIONS,
    *,
    sum_over_transforms: bool = False,
) -> torch.Tensor:
    """L_SLA: cross entropy over the N*M joint labels ``y * M + j`` (``joint_logits``: (B*M, N*M)).

    ``sum_over_transforms`` is the official ``--with-large-loss`` (the mean times M, for ImageNet scale)."""
    _check_rotated(joint_logits, y, num_transforms, "joint logits")
    if joint_logits.shape[1] % num_transforms:
        raise ValueError(
            f"joint logits have {joint_logits.shape[1]} columns, not a multiple of {num_transforms}"
        )
    classes, transforms = expand_labels(y, num_transforms)
    loss = F.cross_entropy(joint_logits, joint_label(classes, transforms, num_transforms))
    return loss * num_transforms if sum_over_transforms else loss


def self_distillation_loss(
    joint_logits: torch.Tensor,
    single_logits: torch.Tensor,
    y: torch.Tensor,
    num_transforms: int = NUM_ROTATIONS,
    *,
    temperature: float = 1.0,
    sum_over_transforms: bool = False,
) -> dict[str, torch.Tensor]:
    """L_SLA+SD and its parts: ``joint`` (L_SLA), ``single`` (CE of the single head on the untransformed
    inputs, ``single_logits``: (B, N)), ``distill`` (T^2 KL from the detached aggregated prediction) and
    ``total`` (their sum)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if single_logits.shape[0] != y.shape[0]:
        raise ValueError(
            f"single-head logits must have one row per example ({y.shape[0]}), got {single_logits.shape[0]}"
        )
    joint = joint_label_loss(joint_logits, y, num_transforms, sum_over_transforms=sum_over_transforms)
    aggregated = aggregate_joint_logits(joint_logits, num_transforms).detach()
    if aggregated.shape != single_logits.shape:
        raise ValueError(
            f"single-head logits {tuple(single_logits.shape)} do not match the aggregated logits "
            f"{tuple(aggregated.shape)}"
        )
    single = F.cross_entropy(single_logits, y)
    distill = F.kl_div(
        F.log_softmax(single_logits / temperature, dim=1),
        F.softmax(aggregated / temperature, dim=1),
        reduction="batchmean",
    ) * (temperature**2)
    return {"joint": joint, "single": single, "distill": distill, "total": joint + single + distill}
