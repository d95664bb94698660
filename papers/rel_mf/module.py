"""The MF recommenders of the Rel-MF paper, one `RecommenderModule` per method; all train `rel_mf_loss`.

* `NaiveMF`: clicks as relevance labels (theta = 1): the biased baseline ("Naive" in Figure 1);
* `WeightedMF`: WMF (Hu et al., 2008), theta = 1 with unclicked pairs down-weighted by `negative_weight`
  (the official real-world baseline; its tuned weight is in logs/wmf/tuning/best_params.json);
* `RelMF`: inverse-propensity weighting with the true exposure probability (`propensity="exposure"`, only
  a simulation knows it) or the popularity estimate (`"popularity"`); `clip > 0` is the clipped estimator
  (CRMF, "Rel-MF with Clipping" in Figure 2);
* `OracleMF`: trained on the true relevance labels R of the training pairs (the "Oracle" of Figure 1).
L2 regularisation as in the official code: lam * (||U||^2 + ||V||^2) / 2 over the whole embedding tables
(and the biases, when the model has them, as in the semi-synthetic code)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from common.lit.recommender import RecommenderModule
from papers.rel_mf.loss import POINTWISE_LOSSES, rel_mf_loss

PROPENSITIES = ("exposure", "popularity")

__all__ = ["PROPENSITIES", "NaiveMF", "OracleMF", "PointwiseMF", "RelMF", "WeightedMF"]


class PointwiseMF(RecommenderModule):
    """MF trained on (label, propensity) pairs with the Rel-MF pointwise loss; subclasses pick them."""

    def __init__(
        self,
        num_users: int,
        num_items: int,
        evaluation: dict[str, torch.Tensor],
        *,
        loss: str = "squared",
        l2: float = 0.0,
        dim: int = 10,
        bias: bool = False,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        ks: tuple[int, ...] = (1, 3, 5),
        metrics: tuple[str, ...] = ("dcg", "recall", "map", "ndcg"),
    ):
        super().__init__(
            num_users, num_items, evaluation, dim=dim, bias=bias, optimizer=optimizer, ks=ks, metrics=metrics
        )
        if loss not in POINTWISE_LOSSES:
            raise ValueError(f"unknown pointwise loss {loss!r}; use one of {POINTWISE_LOSSES}")
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        self.loss_kind, self.l2 = loss, float(l2)
        self.clip, self.negative_weight = 0.0, 1.0

    def labels(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["click"]

    def propensity(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """theta of each pair; None is theta = 1 (no correction)."""
        return None

    def regularizer(self) -> torch.Tensor:
        model = self.model
        total = model.users.weight.pow(2).sum() + model.items.weight.pow(2).sum()
        if model.bias:
            total = total + model.user_bias.weight.pow(2).sum() + model.item_bias.weight.pow(2).sum()
        return 0.5 * total

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.model(batch["user"], batch["item"])
        loss = rel_mf_loss(
            logits,
            self.labels(batch),
            self.propensity(batch),
            clip=self.clip,
            negative_weight=self.negative_weight,
            kind=self.loss_kind,
        )
        return loss + self.l2 * self.regularizer() if self.l2 else loss


class NaiveMF(PointwiseMF):
    """Clicks taken as relevance: theta = 1 for every pair."""


class WeightedMF(PointwiseMF):
    """WMF: theta = 1, unclicked pairs weighted by `negative_weight` (< 1 up-weights the clicks)."""

    def __init__(self, *args: Any, negative_weight: float = 1.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if negative_weight <= 0:
            raise ValueError(f"negative_weight must be > 0, got {negative_weight}")
        self.negative_weight = float(negative_weight)


class RelMF(PointwiseMF):
    """Inverse-propensity weighted loss with the true or the popularity-estimated propensity, clipped at
    `clip` (0: the unbiased estimator)."""

    def __init__(self, *args: Any, propensity: str = "popularity", clip: float = 0.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if propensity not in PROPENSITIES:
            raise ValueError(f"unknown propensity {propensity!r}; use one of {PROPENSITIES}")
        if not 0.0 <= clip <= 1.0:
            raise ValueError(f"clip must be in [0, 1], got {clip}")
        self.propensity_source, self.clip = propensity, float(clip)

    def propensity(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["propensity" if self.propensity_source == "exposure" else "propensity_estimated"]


class OracleMF(PointwiseMF):
    """Trained on the true relevance R of each training pair (known only in a simulation)."""

    def __init__(self, *args: Any, relevant: torch.Tensor, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.relevant = torch.as_tensor(relevant)

    def labels(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        relevant = self.relevant.to(batch["user"].device)
        return relevant[batch["user"], batch["item"]].to(torch.float32)
