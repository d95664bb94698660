"""The domain discriminator p(d|x) of DDFA: cross entropy on the domain index, keeping the weights of the
epoch with the lowest validation cross entropy (official `VanillaDomainDiscriminatorModel.fit_discriminator`:
Adam, ExponentialLR, best validation loss)."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common.lit.classification import ClassificationModule
from common.lit.epoch_metrics import log_epoch_metrics


class DomainDiscriminator(ClassificationModule):
    """A ClassificationModule over domains (`y` = domain); validation tracks the domain loss and accuracy."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.curves.update({"val/domain_loss": [], "val/domain_acc": []})
        self.register_buffer("_val_loss", torch.zeros(3), persistent=False)  # loss sum, correct, count
        self.best_val_loss, self.best_epoch = math.inf, -1
        self._best_state: dict[str, torch.Tensor] | None = None

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch["x"])
        loss = F.cross_entropy(logits, batch["y"], reduction="sum")
        correct = (logits.argmax(1) == batch["y"]).sum()
        self._val_loss += torch.stack([loss.float(), correct.float(), loss.new_tensor(float(len(logits)))])

    def on_validation_epoch_end(self) -> None:
        loss_sum, correct, count = self._val_loss.tolist()
        self._val_loss.zero_()
        if self.trainer.sanity_checking or count == 0:
            return
        loss, acc = loss_sum / count, 100.0 * correct / count
        self.curves["val/domain_loss"].append(loss)
        self.curves["val/domain_acc"].append(acc)
        log_epoch_metrics(self, {"val/domain_loss": loss, "val/domain_acc": acc})
        if loss < self.best_val_loss:
            self.best_val_loss, self.best_epoch = loss, self.current_epoch
            self._best_state = {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}

    def restore_best(self) -> None:
        """Load the weights of the best validation epoch (no-op before any validation)."""
        if self._best_state is not None:
            self.load_state_dict(copy.deepcopy(self._best_state))

    @torch.no_grad()
    def domain_posteriors(self, loader: Any) -> np.ndarray:
        """(N, D) softmax p(d|x) over a loader, in loader order, as float64."""
        return self.predict_proba(loader).double().numpy()

    def final_metrics(self) -> dict[str, float]:
        if not self.curves["val/domain_loss"]:
            return {}
        best = int(np.argmin(self.curves["val/domain_loss"]))
        return {
            "disc/val_domain_loss": self.curves["val/domain_loss"][best],
            "disc/val_domain_acc": self.curves["val/domain_acc"][best],
            "disc/best_epoch": float(self.best_epoch),
        }
