"""The instance classifier (an MLP with a sigmoid output), the LLP losses, and the training loop with early
stopping on validation AUC (official train.py: AdamW, batch 1024, up to 100 epochs, patience 4, min_delta
1e-4, best weights restored).

Losses, all on logits:
- instance BCE on (pseudo-, soft or true) targets: LLP-BP's classifier, the bag-prior and oracle rows;
- DLLP (Ardehaly & Culotta 2017): BCE between a bag's mean predicted probability and its label proportion;
- EasyLLP (Busa-Fekete et al. 2023): the unbiased per-instance surrogate for random bags of size k,
  (k (a - p) + p) BCE(f, 1) + (k (p - a) + 1 - p) BCE(f, 0), with a the bag proportion and p the overall one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

__all__ = [
    "Schedule",
    "TabularMLP",
    "auc_percent",
    "dllp_loss",
    "easyllp_loss",
    "train_classifier",
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


def train_classifier(
    model: TabularMLP,
    batch_loss: Callable[[TabularMLP, torch.Tensor], torch.Tensor],
    num_units: int,
    units_per_batch: int,
    valid: tuple[torch.Tensor, np.ndarray],
    schedule: Schedule,
    *,
    seed: int,
) -> list[float]:
    """Train `model` on shuffled batches of `units_per_batch` training units (instances or bags):
    `batch_loss(model, unit_ids)` gives each batch's loss. Early-stops on validation AUC and restores the best
    weights; returns the validation AUC (%) of every epoch."""
    if schedule.make_optimizer is None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    else:
        optimizer = schedule.make_optimizer(model.parameters())
    generator = torch.Generator().manual_seed(seed)
    best_auc, best_state, waited, curve = -math.inf, None, 0, []
    steps_per_epoch = math.ceil(num_units / units_per_batch)
    if schedule.limit_train_batches is not None:
        steps_per_epoch = min(steps_per_epoch, schedule.limit_train_batches)
    for _ in range(schedule.max_epochs):
        model.train()
        order = torch.randperm(num_units, generator=generator)
        epoch_loss = torch.zeros(())
        for step in range(steps_per_epoch):
            loss = batch_loss(model, order[step * units_per_batch : (step + 1) * units_per_batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_loss = epoch_loss + loss.detach()
        if not torch.isfinite(epoch_loss):  # checked once per epoch: no host sync per step
            raise FloatingPointError("non-finite training loss")
        auc = auc_percent(valid[1], predict_proba(model, valid[0]))
        curve.append(auc)
        if auc > best_auc + 100 * schedule.min_delta:
            best_auc, best_state, waited = auc, copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
            if waited >= schedule.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return curve
