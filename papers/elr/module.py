"""ELR as a LightningModule: cross entropy plus the early-learning regulariser on per-example targets."""

from __future__ import annotations

from typing import Any

import torch

from common.lit import ClassificationModule
from common.registry import register_method
from papers.elr.loss import ELRLoss


@register_method("elr")
class ELRModule(ClassificationModule):
    """Cross entropy + lam * mean log(1 - <t_i, p_i>), targets t an EMA (beta) of the model's predictions.

    The targets are a buffer of the loss, so they move with the module and are saved in checkpoints."""

    def __init__(self, *args: Any, beta: float = 0.7, lam: float = 3.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.elr = ELRLoss(self.num_train_examples, self.num_classes, beta=beta, lam=lam)

    def compute_loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.elr(logits, batch["y"], batch["index"])
