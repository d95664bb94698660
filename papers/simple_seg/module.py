"""One training stage of SimPLe as a LightningModule (stage 1, SimPLe fine-tuning, or retraining).

Loss per batch (official stage{1,2,3}/train.py): ``CE(fg patch) + CE(bg patch)`` with unlabeled pixels
ignored, plus ``contrastive_weight * L_con`` on the foreground patch's features (stage 1), plus
``pseudo_weight * CE(propagated pixels)`` when ``propagate`` (stage 2). Whole-image batches (mini scale) have
one image per example, i.e. the foreground and background patches coincide: its CE counts twice, keeping the
official balance between the CE terms and ``L_con``. SGD with a poly learning-rate decay ``(1 - t / T)^0.9``
per epoch (stages 1 and 3) or per iteration (stage 2), as in the official scripts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from common.data.weak_labels import UNKNOWN
from common.errors import NonFiniteLossError
from papers.simple_seg.losses import pairwise_contrastive_bce, partial_cross_entropy, similarity_propagation
from papers.simple_seg.unet import SegUNet

STAT_KEYS = ("unlabeled", "propagated", "propagated_true", "unlabeled_true")


class SegmentationStage(L.LightningModule):
    """Trains ``net`` for one stage. ``curves`` holds the loss of every step and, when propagating, the
    propagation counts of every step (``propagation/<count>``), which ``propagation_stats()`` sums; as curves
    they are kept in the stage's checkpoints and stored result, so a resumed or reused stage reports them."""

    def __init__(
        self,
        net: SegUNet,
        optimizer: Callable[..., torch.optim.Optimizer],
        *,
        lr: float,
        decay_length: int,
        decay_interval: str = "epoch",
        poly_power: float = 0.9,
        contrastive_weight: float = 0.0,
        num_contrast: int = 100,
        temperature: float = 0.1,
        propagate: bool = False,
        pseudo_weight: float = 0.1,
        num_anchors: int = 100,
        similarity_threshold: float = 0.96,
        vote_fraction: float = 0.96,
    ) -> None:
        super().__init__()
        if decay_interval not in ("epoch", "step"):
            raise ValueError(f"decay_interval must be epoch or step, got {decay_interval!r}")
        self.net, self.optimizer_factory = net, optimizer
        self.lr, self.decay_length = float(lr), max(int(decay_length), 1)
        self.decay_interval, self.poly_power = decay_interval, float(poly_power)
        self.contrastive_weight, self.num_contrast = float(contrastive_weight), int(num_contrast)
        self.temperature = float(temperature)
        self.propagate, self.pseudo_weight = bool(propagate), float(pseudo_weight)
        self.propagation = {
            "num_anchors": int(num_anchors),
            "similarity_threshold": float(similarity_threshold),
            "vote_fraction": float(vote_fraction),
        }
        self.curves: dict[str, list[float]] = {"train/loss": []}
        if self.propagate:
            self.curves.update({f"propagation/{key}": [] for key in STAT_KEYS})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if "x" in batch:  # whole images: the foreground and background patches are the same image
            logits_fg, features = self.net(batch["x"])
            y_fg, gt_fg = batch["y"], batch["gt"]
            ce = 2.0 * partial_cross_entropy(logits_fg, y_fg)
        else:
            logits_fg, features = self.net(batch["x_fg"])
            logits_bg, _ = self.net(batch["x_bg"])
            y_fg, gt_fg = batch["y_fg"], batch["gt_fg"]
            ce = partial_cross_entropy(logits_fg, y_fg) + partial_cross_entropy(logits_bg, batch["y_bg"])
        loss = ce
        if self.contrastive_weight > 0:
            contrastive = pairwise_contrastive_bce(
                features, y_fg, num_samples=self.num_contrast, temperature=self.temperature
            )
            loss = loss + self.contrastive_weight * contrastive
            self.log("train/contrastive", contrastive.detach(), on_step=False, on_epoch=True)
        if self.propagate:
            pseudo = similarity_propagation(features, y_fg, **self.propagation)
            pseudo_loss = partial_cross_entropy(logits_fg, pseudo)
            loss = loss + self.pseudo_weight * pseudo_loss
            self._count(y_fg, pseudo, gt_fg)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True)
        self.curves["train/loss"].append(float(loss.detach()))
        return loss

    def _count(self, targets: torch.Tensor, pseudo: torch.Tensor, truth: torch.Tensor) -> None:
        unlabeled = targets == UNKNOWN
        propagated = pseudo == 1
        lesion = truth == 1
        counts = [unlabeled.sum(), propagated.sum(), (propagated & lesion).sum(), (unlabeled & lesion).sum()]
        for key, count in zip(STAT_KEYS, counts, strict=True):
            self.curves[f"propagation/{key}"].append(float(count))

    def propagation_stats(self) -> dict[str, float]:
        """Share of unlabeled pixels propagated, precision (truly lesion) and recall (of unlabeled lesion) of
        the propagated pixels, in %, summed over every fine-tuning batch."""
        # Sums of whole numbers: exact in float64, whatever the order.
        unlabeled, propagated, hits, lesion = (sum(self.curves[f"propagation/{key}"]) for key in STAT_KEYS)
        return {
            "propagated_fraction": 100.0 * propagated / max(unlabeled, 1.0),
            "propagation_precision": 100.0 * hits / max(propagated, 1.0),
            "propagation_recall": 100.0 * hits / max(lesion, 1.0),
        }

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(self.net.parameters(), lr=self.lr)
        length, power = self.decay_length, self.poly_power

        def poly(t: int) -> float:
            return max(1.0 - t / length, 0.0) ** power

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.decay_interval},
        }


def epochs_for_steps(steps: int, batches_per_epoch: int) -> int:
    """Epochs needed for ``steps`` optimisation steps."""
    return max(math.ceil(steps / max(batches_per_epoch, 1)), 1)
