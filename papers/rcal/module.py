"""RCAL's individual representation calibration (Sec. 3.3): fine-tune the contrastive encoder and the linear
classifier on the noisy images with mixup, the sampled representation points, and a penalty keeping each
learned representation close to the frozen contrastive one."""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from common.errors import NonFiniteLossError


def mixup_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, partner: torch.Tensor, lam: float
) -> torch.Tensor:
    """Cross entropy of mixed inputs against the mixed labels (Zhang et al. ICLR 2018):
    lam CE(logits, y) + (1 - lam) CE(logits, y[perm])."""
    return lam * F.cross_entropy(logits, targets) + (1.0 - lam) * F.cross_entropy(logits, partner)


def representation_distance(features: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the squared Euclidean distance between learned and frozen representations."""
    return (features - anchors).pow(2).sum(1).mean()


def embed(features: torch.Tensor, feature_norm: str) -> torch.Tensor:
    """The representation the classifier sees: L2-normalised encoder features or the raw ones."""
    return F.normalize(features, dim=1) if feature_norm == "l2" else features


class IndividualCalibrationModule(L.LightningModule):
    """Encoder (initialised from contrastive pre-training) + linear head, trained on batches `x`, `y` with

        loss = [B * mixupCE(head(h(x_mix)), y, y_perm) + S * CE(head(s), y_s)] / (B + S)
               + distance_weight * mean ||e(h(x_mix)) - e(h0(x_mix))||^2

    where h0 is the frozen contrastive encoder, e the classifier's input map (`feature_norm`) and (s, y_s)
    are S points drawn per step from the sampled representations of the distributional calibration
    (S = B * n_sampled / n_real, at least one)."""

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Linear,
        sampled: tuple[torch.Tensor, torch.Tensor],
        *,
        feature_norm: str = "l2",
        distance_weight: float = 1.0,
        mixup_alpha: float = 1.0,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        max_epochs: int = 10,
        num_real: int = 1,
        seed: int = 0,
    ):
        super().__init__()
        self.encoder, self.head = encoder, head
        self.frozen = copy.deepcopy(encoder).eval().requires_grad_(False)
        self.register_buffer("sampled_x", sampled[0].float(), persistent=False)
        self.register_buffer("sampled_y", sampled[1].long(), persistent=False)
        self.feature_norm, self.distance_weight = feature_norm, float(distance_weight)
        self.mixup_alpha, self.lr, self.momentum = float(mixup_alpha), float(lr), float(momentum)
        self.weight_decay, self.max_epochs, self.num_real = (
            float(weight_decay),
            int(max_epochs),
            int(num_real),
        )
        self.generator = torch.Generator().manual_seed(int(seed))
        self.curves: dict[str, list[float]] = {"train/ic_loss": [], "train/ic_distance": []}
        self.register_buffer("_stats", torch.zeros(3), persistent=False)  # loss, distance, steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(embed(self.encoder(x), self.feature_norm))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The mixup and sampling draws continue where they were when a killed fit resumes.
        checkpoint["ic_generator"] = self.generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "ic_generator" in checkpoint:
            self.generator.set_state(checkpoint["ic_generator"])

    def train(self, mode: bool = True) -> IndividualCalibrationModule:
        super().train(mode)
        self.frozen.eval()  # the anchor keeps its BatchNorm statistics
        return self

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if device.type == "cpu":
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch["x"], batch["y"]
        size = len(y)
        lam = 1.0
        if self.mixup_alpha > 0:
            lam = float(torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha).sample())
        perm = torch.randperm(size, generator=self.generator).to(x.device)
        mixed = lam * x + (1.0 - lam) * x[perm]
        features = self.encoder(mixed)
        with torch.no_grad():
            anchors = self.frozen(mixed)
        embedded = embed(features, self.feature_norm)
        logits = self.head(embedded)
        loss = mixup_cross_entropy(logits, y, y[perm], lam) * size
        total = size
        num_sampled = len(self.sampled_y)
        if num_sampled:
            draw = max(1, round(size * num_sampled / max(self.num_real, 1)))
            idx = torch.randint(num_sampled, (draw,), generator=self.generator).to(x.device)
            loss = loss + F.cross_entropy(self.head(self.sampled_x[idx]), self.sampled_y[idx]) * draw
            total += draw
        # In the classifier's representation space (L2-normalised by default): bounded, so the penalty
        # cannot swamp the classification terms whatever the scale of the encoder's features.
        distance = representation_distance(embedded, embed(anchors, self.feature_norm))
        loss = loss / total + self.distance_weight * distance
        self._stats += torch.stack([loss.detach(), distance.detach(), loss.new_ones(())])
        return loss

    def on_train_epoch_end(self) -> None:
        loss, distance, steps = (self._stats / self._stats[2].clamp_min(1)).tolist()
        self._stats.zero_()
        if not torch.isfinite(torch.tensor(loss)):
            raise NonFiniteLossError(
                f"individual-calibration loss became {loss} in epoch {self.current_epoch}"
            )
        self.curves["train/ic_loss"].append(loss)
        self.curves["train/ic_distance"].append(distance)

    def configure_optimizers(self) -> Any:
        params = [p for p in [*self.encoder.parameters(), *self.head.parameters()] if p.requires_grad]
        optimizer = torch.optim.SGD(
            params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(self.max_epochs, 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
