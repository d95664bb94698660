"""DCL's student-teacher self-training with five curriculum policies, on classification (the proxy).

One step (official code youshyee/DCL-Detection @0edf0ab, ``engine.py::train_one_epoch``): the EMA teacher
pseudo-labels the unlabelled batch (weak view), pseudo-labels under the confidence threshold are dropped, the
student sees the labelled batch and a strongly augmented view of the unlabelled one, and is trained on
``(L_sup + w * L_unsup) / (1 + w)``, where ``L_unsup`` is averaged over the *kept* pseudo-labels
(``util/helper.py::aggregate_loss`` divides by the number of pseudo-boxes); then the teacher moves towards
the student with the scheduled momentum. Evaluation uses the teacher, as the official ``main.py`` does.
Detection is replaced by classification: a pseudo-box becomes a pseudo-class (arg-max of the teacher's
softmax) and the top-k cap on pseudo-boxes per image has no counterpart (README.md: deviations).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from common.data.transforms import GaussianNoise, RandomTranslate, random_horizontal_flip
from common.lit import ClassificationModule
from common.lit.ema import EMATeacher
from common.lit.pseudo_label import confidence_pseudo_labels
from common.registry import register_method
from papers.great_apes_dcl.schedules import POLICIES, CurriculumSchedule, Phases

ALL = "all"


def dcl_loss(
    logits_l: torch.Tensor,
    y_l: torch.Tensor,
    logits_u: torch.Tensor,
    pseudo: torch.Tensor,
    mask: torch.Tensor,
    unsup_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, L_sup, L_unsup)``: ``L_unsup`` is the cross entropy on pseudo-labels averaged over the kept
    ones (zero when none is kept) and ``loss = (L_sup + w L_unsup) / (1 + w)``."""
    sup = F.cross_entropy(logits_l, y_l)
    per_example = F.cross_entropy(logits_u, pseudo, reduction="none")
    unsup = (per_example * mask).sum() / mask.sum().clamp_min(1.0)
    return (sup + unsup_weight * unsup) / (1.0 + unsup_weight), sup, unsup


@register_method("great_apes_dcl")
class DCLModule(ClassificationModule):
    """Student-teacher pseudo-labelling whose five policies are each dynamic or static.

    Args (beyond ClassificationModule's):
        dynamic: the dynamic policies, a list out of ``sampling, threshold, augmentation, unsup_weight,
            momentum``, or ``"all"``; the others are static (their end value from the first step).
        warmup_fraction, post_fraction: supervised warm-up and cool-down as fractions of the run.
        threshold_start/_end, unsup_weight_start/_end, momentum_start/_end, augmentation_start/_end: end
            points of the schedules (augmentation: a strength in [0, 1]).
        max_shift, noise_std, flip: the strong augmentation at strength 1 (whole-pixel shift, Gaussian
            noise, horizontal flip); at strength ``s`` the shift is ``round(s * max_shift)`` pixels and the
            noise ``s * noise_std``.
        collapse_drop: a run counts as collapsed when its final teacher accuracy is more than this many
            points below its best epoch (``ssl/collapsed`` = 100 or 0, so its mean over seeds is a rate).
    """

    def __init__(
        self,
        *args: Any,
        dynamic: Sequence[str] | str = ALL,
        warmup_fraction: float = 40 / 120,
        post_fraction: float = 20 / 120,
        threshold_start: float = 0.7,
        threshold_end: float = 0.9,
        unsup_weight_start: float = 0.1,
        unsup_weight_end: float = 1.0,
        momentum_start: float = 0.95,
        momentum_end: float = 0.99,
        augmentation_start: float = 0.0,
        augmentation_end: float = 1.0,
        max_shift: int = 1,
        noise_std: float = 0.1,
        flip: bool = False,
        collapse_drop: float = 10.0,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        chosen = POLICIES if dynamic == ALL else tuple(dynamic or ())
        unknown = set(chosen) - set(POLICIES)
        if unknown or isinstance(dynamic, str) and dynamic != ALL:
            raise ValueError(f"method.dynamic must be 'all' or a list out of {POLICIES}; got {dynamic!r}")
        self.dynamic = frozenset(chosen)
        self.warmup_fraction, self.post_fraction = float(warmup_fraction), float(post_fraction)
        self.ends = {
            "threshold": (float(threshold_start), float(threshold_end)),
            "unsup_weight": (float(unsup_weight_start), float(unsup_weight_end)),
            "momentum": (float(momentum_start), float(momentum_end)),
            "augmentation": (float(augmentation_start), float(augmentation_end)),
        }
        self.max_shift, self.noise_std, self.flip = int(max_shift), float(noise_std), bool(flip)
        self.collapse_drop = float(collapse_drop)
        self.teacher = EMATeacher(self.backbone, decay=float(momentum_end), warmup="none")
        self._schedule: CurriculumSchedule | None = None
        self.register_buffer("unlabeled_rank", torch.zeros(0, dtype=torch.long), persistent=False)
        # Epoch sums: kept pseudo-labels, correct kept ones, unlabelled seen, admitted by the sampling policy.
        self.register_buffer("_pl_stats", torch.zeros(4), persistent=False)
        for key in (
            "val/acc_student",
            "ssl/mask_rate",
            "ssl/pseudo_label_acc",
            *(f"policy/{p}" for p in POLICIES),
        ):
            self.curves[key] = []
        self._last_values: dict[str, float] = {}

    # ---- schedule -----------------------------------------------------------------------------------------
    def schedule(self, total_steps: int) -> CurriculumSchedule:
        """The run's policy schedule for ``total_steps`` optimiser steps."""
        if self._schedule is None or self._schedule.phases.total != total_steps:
            phases = Phases.from_fractions(total_steps, self.warmup_fraction, self.post_fraction)
            self._schedule = CurriculumSchedule(self.dynamic, phases, **self.ends)
        return self._schedule

    def _total_steps(self) -> int:
        if self._trainer is None:
            return 1
        total = self.trainer.estimated_stepping_batches
        return max(int(total), 1) if total != float("inf") else 1

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        rank = getattr(datamodule, "unlabeled_rank", None)
        if rank is None:
            raise RuntimeError(
                "great_apes_dcl needs a labelled/unlabelled datamodule (data.datamodule: great_apes_dcl_ssl)"
            )
        self.unlabeled_rank = rank.to(self.device)
        self.num_unlabeled = int((rank >= 0).sum())

    # ---- augmentation -------------------------------------------------------------------------------------
    def strong_view(self, x: torch.Tensor, strength: float) -> torch.Tensor:
        """The student's view of unlabelled inputs at augmentation strength ``strength`` in [0, 1]."""
        if strength <= 0:
            return x
        if x.ndim == 4:
            if self.flip:
                x = random_horizontal_flip(x)
            shift = int(round(strength * self.max_shift))
            if shift > 0:
                x = RandomTranslate(shift, always=True)(x)
        return GaussianNoise(strength * self.noise_std, always=True)(x)

    # ---- training -----------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, dict[str, torch.Tensor]], batch_idx: int) -> torch.Tensor:
        lab, unl = batch["labeled"], batch["unlabeled"]
        values = self.schedule(self._total_steps()).values(int(self.global_step))
        self._last_values = values
        x_u = unl["x"]
        with torch.no_grad():
            probs = F.softmax(self.teacher(x_u).float(), dim=1)
            pseudo, confident = confidence_pseudo_labels(probs, values["threshold"])
            rank = self.unlabeled_rank[unl["index"].to(self.unlabeled_rank.device)].to(x_u.device)
            admitted = (rank < values["sampling"] * self.num_unlabeled).to(confident.dtype)
            mask = confident * admitted
        n_l = len(lab["x"])
        logits = self(torch.cat([lab["x"], self.strong_view(x_u, values["augmentation"])]))
        loss, _, _ = dcl_loss(logits[:n_l], lab["y"], logits[n_l:], pseudo, mask, values["unsup_weight"])
        with torch.no_grad():
            correct = ((pseudo == unl["y_clean"]).to(mask.dtype) * mask).sum()
            self._pl_stats += torch.stack([mask.sum(), correct, mask.new_tensor(len(x_u)), admitted.sum()])
            self._epoch_stats += torch.stack([loss.detach().float(), loss.new_ones(()), loss.new_zeros(()),
                                              loss.new_zeros(())])  # fmt: skip
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.teacher.decay = self._last_values.get("momentum", self.teacher.decay)
        self.teacher.update(self.backbone)

    def on_train_epoch_end(self) -> None:
        kept, correct, seen, admitted = self._pl_stats.tolist()
        self._pl_stats.zero_()
        super().on_train_epoch_end()
        self.curves["ssl/mask_rate"].append(100.0 * kept / max(seen, 1))
        self.curves["ssl/pseudo_label_acc"].append(100.0 * correct / kept if kept else 0.0)
        for policy in POLICIES:
            self.curves[f"policy/{policy}"].append(self._last_values.get(policy, 0.0))

    # ---- evaluation (teacher, as the official code) -------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._student_val = torch.zeros(2, device=self.device)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        x, y = batch["x"], batch["y_clean"]
        correct = (self.teacher(x).argmax(1) == y).sum()
        self._val_stats += torch.stack([correct, correct.new_tensor(len(x))]).float()
        self._student_val += torch.stack([(self(x).argmax(1) == y).sum(), y.new_tensor(len(y))]).float()

    def on_validation_epoch_end(self) -> None:
        correct, total = self._student_val.tolist()
        if not self.trainer.sanity_checking:
            self.curves["val/acc_student"].append(100.0 * correct / max(total, 1))
        super().on_validation_epoch_end()

    def final_metrics(self) -> dict[str, float]:
        """Teacher accuracies (``test/acc`` last epoch, best, drop from best), the student's last accuracy,
        the collapse indicator and pseudo-label statistics averaged over epochs."""
        metrics = super().final_metrics()
        if not metrics:
            return metrics
        metrics.pop("train/memorized", None)
        metrics["test/acc_student"] = self.curves["val/acc_student"][-1]
        metrics["ssl/collapsed"] = 100.0 if metrics["test/acc_drop_from_peak"] > self.collapse_drop else 0.0
        for key in ("ssl/mask_rate", "ssl/pseudo_label_acc"):
            values = self.curves[key]
            metrics[f"{key}_mean"] = sum(values) / len(values) if values else 0.0
        return metrics
