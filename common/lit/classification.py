"""The classification LightningModule every noisy-label / long-tail method builds on.

Subclasses override `compute_loss`; the loop, metrics, learning curves and the NaN guard stay here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from common.errors import NonFiniteLossError
from common.lit.epoch_metrics import log_epoch_metrics
from common.registry import register_method


@register_method("ce")
class ClassificationModule(L.LightningModule):
    """Cross entropy on the (possibly noisy) labels; validation is accuracy on the clean evaluation split.

    Per epoch it records `val/acc` (%) and, on training batches, `train/memorized`: the share of examples
    whose label was corrupted that the model predicts as the corrupted label (memorisation of noise)."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        num_train_examples: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
    ):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.num_train_examples = num_train_examples
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scheduler_interval = scheduler_interval
        self.curves: dict[str, list[float]] = {"val/acc": [], "train/loss": [], "train/memorized": []}
        # Epoch accumulators stay on the device: no host sync per step.
        self.register_buffer("_epoch_stats", torch.zeros(4), persistent=False)  # loss sum, steps, fit, noisy
        self.register_buffer("_val_stats", torch.zeros(2), persistent=False)  # correct, total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # In-memory CPU batches are already where they run; skip Lightning's per-step collection walk.
        if device.type == "cpu":
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def compute_loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Training loss of one batch; methods override this."""
        return F.cross_entropy(logits, batch["y"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["x"])
        loss = self.compute_loss(logits, batch)
        with torch.no_grad():
            noisy = batch["y"] != batch["y_clean"]
            fit_noisy = ((logits.argmax(1) == batch["y"]) & noisy).sum()
            self._epoch_stats += torch.stack(
                [loss.detach().float(), loss.new_ones(()), fit_noisy, noisy.sum()]
            )
        return loss

    def on_train_epoch_end(self) -> None:
        loss_sum, steps, fit_noisy, noisy = self._epoch_stats.tolist()
        self._epoch_stats.zero_()
        mean_loss = loss_sum / max(steps, 1)
        if not torch.isfinite(torch.tensor(mean_loss)):
            raise NonFiniteLossError(f"training loss became {mean_loss} in epoch {self.current_epoch}")
        memorized = 100.0 * fit_noisy / noisy if noisy else 0.0
        self.curves["train/loss"].append(mean_loss)
        self.curves["train/memorized"].append(memorized)
        log_epoch_metrics(self, {"train/loss": mean_loss, "train/memorized": memorized})

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.count_correct(self(batch["x"]), batch)

    def count_correct(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        """Adds a validation batch's correct predictions of the clean labels to the epoch's accuracy."""
        correct = (logits.argmax(1) == batch["y_clean"]).sum()
        self._val_stats += torch.stack([correct, correct.new_tensor(len(logits))]).float()

    def on_validation_epoch_end(self) -> None:
        correct, total = self._val_stats.tolist()
        self._val_stats.zero_()
        if self.trainer.sanity_checking:
            return
        acc = 100.0 * correct / max(total, 1)
        self.curves["val/acc"].append(acc)
        log_epoch_metrics(self, {"val/acc": acc})

    @torch.no_grad()
    def predict_proba(self, loader: Any) -> torch.Tensor:
        """Softmax probabilities over a loader of batches, in loader order (eval mode)."""
        was_training = self.training
        self.eval()
        probs = [F.softmax(self(batch["x"].to(self.device)), dim=1).cpu() for batch in loader]
        self.train(was_training)
        return torch.cat(probs)

    def final_metrics(self) -> dict[str, float]:
        """Metrics for the run record: last-epoch and best-epoch clean accuracy and memorisation."""
        acc = self.curves["val/acc"]
        if not acc:
            return {}
        return {
            "test/acc": acc[-1],
            "test/acc_best": max(acc),
            "test/acc_drop_from_peak": max(acc) - acc[-1],
            "train/memorized": self.curves["train/memorized"][-1] if self.curves["train/memorized"] else 0.0,
        }

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }
