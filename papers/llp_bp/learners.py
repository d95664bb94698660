"""The instance classifier (an MLP with a sigmoid output), the LLP losses, and its training, a LightningModule
with early stopping on validation AUC (official train.py: AdamW, batch 1024, up to 100 epochs, patience 4,
min_delta 1e-4, best weights restored) that the pipelines run as cached, resumable stages.

Losses, all on logits:
- instance BCE on (pseudo-, soft or true) targets: LLP-BP's classifier, the bag-prior and oracle rows;
- DLLP (Ardehaly & Culotta 2017): BCE between a bag's mean predicted probability and its label proportion;
- EasyLLP (Busa-Fekete et al. 2023): the unbiased per-instance surrogate for random bags of size k,
  (k (a - p) + p) BCE(f, 1) + (k (p - a) + 1 - p) BCE(f, 0), with a the bag proportion and p the overall one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from common.errors import NonFiniteLossError

__all__ = [
    "ClassifierFit",
    "Schedule",
    "ShuffledUnits",
    "TabularMLP",
    "auc_percent",
    "dllp_loss",
    "easyllp_loss",
    "predict_proba",
]


class TabularMLP(nn.Module):
    """ReLU MLP with one logit; `embed` is the output of every hidden layer but the last (official
    `get_instance_embeddings`: the 128-wide layer of 5040-1280-320-128-64)."""

    def __init__(self, in_features: int, hidden_dims: list[int]) -> None:
        super().__init__()
        if len(hidden_dims) < 2:
            raise ValueError("the embedding needs at least two hidden layers")
        dims = [in_features, *hidden_dims]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.head = nn.Linear(dims[-1], 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden[:-1]:
            x = F.relu(layer(x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.hidden[-1](self.embed(x)))).squeeze(-1)


def dllp_loss(logits: torch.Tensor, proportions: torch.Tensor) -> torch.Tensor:
    """Mean over bags of BCE(mean_i sigmoid(logit_i), proportion); logits (bags, bag_size)."""
    bag_mean = torch.sigmoid(logits).mean(-1).clamp(1e-7, 1 - 1e-7)
    return F.binary_cross_entropy(bag_mean, proportions)


def easyllp_loss(
    logits: torch.Tensor, proportions: torch.Tensor, bag_size: int, prior: float
) -> torch.Tensor:
    """Mean EasyLLP surrogate over instances; `proportions` is each instance's bag proportion."""
    weight_pos = bag_size * (proportions - prior) + prior
    weight_neg = bag_size * (prior - proportions) + 1.0 - prior
    # BCE(f, 1) = softplus(-f), BCE(f, 0) = softplus(f)
    return (weight_pos * F.softplus(-logits) + weight_neg * F.softplus(logits)).mean()


def auc_percent(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC in percent (50 when only one class is present)."""
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return 50.0
    return 100.0 * float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


@dataclass(frozen=True)
class Schedule:
    """Optimiser factory (params -> optimizer; default AdamW(lr 1e-3, weight decay 0)) and early stopping."""

    make_optimizer: Callable[..., torch.optim.Optimizer] | None = None
    batch_size: int = 1024
    max_epochs: int = 100
    patience: int = 4
    min_delta: float = 1e-4
    limit_train_batches: int | None = None


def predict_proba(model: TabularMLP, x: torch.Tensor, batch_size: int = 8192) -> np.ndarray:
    """Sigmoid outputs, in eval mode without gradients."""
    model.eval()
    with torch.no_grad():
        out = torch.cat([torch.sigmoid(model(x[i : i + batch_size])) for i in range(0, len(x), batch_size)])
    return out.numpy()


class ShuffledUnits:
    """One epoch's batches of training-unit ids (instances or bags), in order: one loader for Lightning (which
    would take a plain list for a list of loaders)."""

    def __init__(self, batches: list[torch.Tensor]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.batches)


class ClassifierFit(L.LightningModule):
    """The official training of `model`: shuffled batches of `units_per_batch` training units (instances or
    bags), `batch_loss(model, unit_ids)` each batch's loss, early stopping on validation AUC with the best
    weights restored at the end; `curves["valid_auc"]` holds the validation AUC (%) of every epoch.

    It replaces a hand-written loop step for step, and its results are bitwise the loop's: manual optimisation
    in the loop's order (loss, zero_grad, backward, step); epoch e's order is the (e+1)-th `torch.randperm` of
    one generator seeded with `seed` (a resumed fit redraws the orders it had reached); validation AUC and
    early stopping after each epoch. That state (curve, best AUC, best weights, patience count) is in every
    epoch's checkpoint, so a fit killed at paper scale (about a minute per epoch on CPU, up to 100 epochs)
    resumes from its last epoch, and one that early stopping had ended stays ended. Train it under
    `trainer_overrides(schedule)`: the loop's CPU and fp32, every batch, a fresh loader per epoch."""

    def __init__(
        self,
        model: TabularMLP,
        batch_loss: Callable[[TabularMLP, torch.Tensor], torch.Tensor],
        num_units: int,
        units_per_batch: int,
        valid: tuple[torch.Tensor, np.ndarray],
        schedule: Schedule,
        *,
        seed: int,
        log_name: str = "valid_auc",
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        self.batch_loss, self.valid, self.schedule, self.seed = batch_loss, valid, schedule, seed
        self.num_units, self.units_per_batch, self.log_name = num_units, units_per_batch, log_name
        steps = math.ceil(num_units / units_per_batch)
        if schedule.limit_train_batches is not None:
            steps = min(steps, schedule.limit_train_batches)
        self.steps_per_epoch = steps
        self.curves: dict[str, list[float]] = {"valid_auc": []}
        self.best_auc, self.best_state, self.waited = -math.inf, None, 0
        self.epoch_loss = torch.zeros(())
        self._generator, self._drawn = torch.Generator(), (-1, torch.empty(0, dtype=torch.long))

    @staticmethod
    def trainer_overrides(schedule: Schedule) -> dict[str, Any]:
        """What the fit needs of the run's Trainer, whatever `cfg.trainer` says."""
        return {
            "accelerator": "cpu",  # the data are CPU tensors the losses index, as in the loop
            "devices": 1,
            "precision": "32-true",
            "gradient_clip_val": None,
            "accumulate_grad_batches": 1,
            "limit_train_batches": None,  # the schedule's limit is in the loader
            "max_steps": -1,
            "min_epochs": None,
            "max_epochs": schedule.max_epochs,
            "num_sanity_val_steps": 0,
            "reload_dataloaders_every_n_epochs": 1,
        }

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The permutation of the training units in epoch `epoch` (0-based)."""
        drawn, order = self._drawn
        if drawn < 0 or drawn > epoch:  # the first epoch of this fit or of a resumed one: from the seed
            self._generator.manual_seed(self.seed)
            drawn = -1
        while drawn < epoch:
            drawn, order = drawn + 1, torch.randperm(self.num_units, generator=self._generator)
        self._drawn = (drawn, order)
        return order

    def train_dataloader(self) -> ShuffledUnits:
        order, size = self.epoch_order(self.trainer.current_epoch), self.units_per_batch
        return ShuffledUnits([order[i * size : (i + 1) * size] for i in range(self.steps_per_epoch)])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.schedule.make_optimizer is None:
            return torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.0)
        return self.schedule.make_optimizer(self.model.parameters())

    def on_train_start(self) -> None:
        if self.waited >= self.schedule.patience:  # resumed from the epoch where early stopping ended the fit
            self.trainer.should_stop = True

    def on_train_epoch_start(self) -> None:
        self.model.train()

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        optimizer = self.optimizers()
        loss = self.batch_loss(self.model, batch)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()
        self.epoch_loss = self.epoch_loss + loss.detach()

    def on_train_epoch_end(self) -> None:
        if not torch.isfinite(self.epoch_loss):  # checked once per epoch: no host sync per step
            raise NonFiniteLossError(f"non-finite training loss in epoch {self.current_epoch}")
        self.epoch_loss = torch.zeros(())
        auc = auc_percent(self.valid[1], predict_proba(self.model, self.valid[0]))
        self.curves["valid_auc"].append(auc)
        self.log(self.log_name, auc, on_step=False, on_epoch=True)
        if auc > self.best_auc + 100 * self.schedule.min_delta:
            self.best_auc, self.best_state, self.waited = auc, copy.deepcopy(self.model.state_dict()), 0
        else:
            self.waited += 1
            if self.waited >= self.schedule.patience:
                self.trainer.should_stop = True

    def on_train_end(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["early_stopping"] = {
            "curve": list(self.curves["valid_auc"]),
            "best_auc": self.best_auc,
            "best_state": self.best_state,
            "waited": self.waited,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["early_stopping"]
        self.curves["valid_auc"] = list(state["curve"])
        self.best_auc, self.best_state, self.waited = state["best_auc"], state["best_state"], state["waited"]
