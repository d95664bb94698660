"""Matrix-factorisation recommenders on implicit feedback: the model, an in-memory data module over the
semi-synthetic generator (`common.data.feedback`), and a LightningModule base that evaluates ranking
metrics on the MCAR test pairs after every epoch (all items and the rare-item subset)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from common.data.datamodule import TensorBatchDataset, TensorBatchSampler
from common.data.feedback import ImplicitFeedback, estimate_item_propensity, make_implicit_feedback
from common.errors import UserError
from common.eval.ranking import ranking_metrics
from common.registry import register_datamodule


class MatrixFactorization(nn.Module):
    """score(u, i) = <p_u, q_i> + b_u + b_i + b (biases optional); N(0, init_std^2) embeddings."""

    def __init__(self, num_users: int, num_items: int, dim: int, *, bias: bool = True, init_std: float = 0.1):
        super().__init__()
        self.users, self.items = nn.Embedding(num_users, dim), nn.Embedding(num_items, dim)
        nn.init.normal_(self.users.weight, std=init_std)
        nn.init.normal_(self.items.weight, std=init_std)
        self.bias = bias
        if bias:
            self.user_bias, self.item_bias = nn.Embedding(num_users, 1), nn.Embedding(num_items, 1)
            nn.init.zeros_(self.user_bias.weight)
            nn.init.zeros_(self.item_bias.weight)
            self.global_bias = nn.Parameter(torch.zeros(()))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        scores = (self.users(users) * self.items(items)).sum(-1)
        if self.bias:
            scores = (
                scores
                + self.user_bias(users).squeeze(-1)
                + self.item_bias(items).squeeze(-1)
                + self.global_bias
            )
        return scores

    def score_all(self) -> torch.Tensor:
        """(users, items) scores of every pair."""
        scores = self.users.weight @ self.items.weight.T
        if self.bias:
            scores = scores + self.user_bias.weight + self.item_bias.weight.T + self.global_bias
        return scores


@register_datamodule("implicit_feedback")
class ImplicitFeedbackDataModule(L.LightningDataModule):
    """Every training (user, item) pair as one in-memory batch stream with its click, true exposure
    propensity and popularity-estimated propensity; evaluation reads the MCAR test matrices directly."""

    def __init__(
        self,
        source: str = "synthetic",
        num_users: int = 300,
        num_items: int = 200,
        rank: int = 10,
        relevance_scale: float = 3.0,
        relevance_offset: float = -1.0,
        zipf_exponent: float = 1.0,
        exposure_power: float = 1.0,
        test_items_per_user: int = 10,
        propensity_power: float = 0.5,
        rare_quantile: float = 0.5,
        batch_size: int | None = None,
        data_seed: int | None = None,
        seed: int = 0,
        num_workers: int = 0,  # accepted for a uniform data interface; the pairs live in memory
        cache_dir: str | None = None,
    ):
        super().__init__()
        if source not in ("synthetic", "random"):
            raise UserError(
                f"implicit_feedback has no source {source!r}; 'synthetic' (and 'random', the same generator, "
                "used by smoke tests at a paper's shapes) are built in; real MNAR data such as Yahoo! R3 or "
                "Coat needs its own data module."
            )
        self.seed = seed
        self.params = dict(
            rank=rank,
            relevance_scale=relevance_scale,
            relevance_offset=relevance_offset,
            zipf_exponent=zipf_exponent,
            exposure_power=exposure_power,
            test_items_per_user=test_items_per_user,
        )
        self.num_users, self.num_items = num_users, num_items
        self.propensity_power, self.rare_quantile = propensity_power, rare_quantile
        self.batch_size = batch_size or num_users * num_items
        self.data_seed = seed if data_seed is None else data_seed
        self.feedback: ImplicitFeedback | None = None
        self.num_classes = 0

    def setup(self, stage: str | None = None) -> None:
        if self.feedback is not None:
            return
        self.feedback = make_implicit_feedback(
            self.num_users, self.num_items, seed=self.data_seed, **self.params
        )
        fb = self.feedback
        train = ~fb.test_mask
        users, items = np.nonzero(train)
        estimated = estimate_item_propensity(fb.clicks, self.propensity_power)
        self.train_pairs = TensorBatchDataset(
            {
                "user": torch.as_tensor(users, dtype=torch.long),
                "item": torch.as_tensor(items, dtype=torch.long),
                "click": torch.as_tensor(fb.clicks[users, items], dtype=torch.float32),
                "propensity": torch.as_tensor(fb.exposure[users, items], dtype=torch.float32),
                "propensity_estimated": torch.as_tensor(estimated[items], dtype=torch.float32),
            }
        )

    @property
    def num_train(self) -> int:
        return len(self.train_pairs)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        sampler = TensorBatchSampler(len(self.train_pairs), self.batch_size, True, generator)
        return DataLoader(self.train_pairs, batch_size=None, sampler=sampler)

    def evaluation_targets(self) -> dict[str, torch.Tensor]:
        """What `RecommenderModule` ranks against: MCAR test pairs, their relevance, the training clicks
        and the rare-item mask."""
        fb = self.feedback
        return {
            "candidates": torch.as_tensor(fb.test_mask),
            "relevance": torch.as_tensor(fb.test_relevance, dtype=torch.float32),
            "train_clicks": torch.as_tensor(fb.clicks.astype(bool)),
            "rare_items": torch.as_tensor(fb.rare_items(self.rare_quantile)),
        }


class RecommenderModule(L.LightningModule):
    """A matrix factorisation trained by `compute_loss`; after every epoch it ranks each user's candidate
    items and records `test/<metric>@k` and `test/rare/<metric>@k` curves (the last epoch is final)."""

    def __init__(
        self,
        num_users: int,
        num_items: int,
        evaluation: dict[str, torch.Tensor],
        *,
        dim: int = 10,
        bias: bool = True,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        ks: tuple[int, ...] = (5,),
        metrics: tuple[str, ...] = ("dcg", "recall", "map", "ndcg"),
    ):
        super().__init__()
        self.model = MatrixFactorization(num_users, num_items, dim, bias=bias)
        self.evaluation = evaluation
        self.optimizer_factory = optimizer or (lambda params: torch.optim.Adam(params, lr=1e-2))
        self.ks, self.metric_names = tuple(ks), tuple(metrics)
        self.curves: dict[str, list[float]] = {"train/loss": []}
        self._epoch_losses: list[torch.Tensor] = []

    @abstractmethod
    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The method's training loss on a batch of (user, item, click, propensity...) pairs."""

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self._epoch_losses.append(loss.detach())
        return loss

    def on_train_epoch_end(self) -> None:
        if self._epoch_losses:
            self.curves["train/loss"].append(float(torch.stack(self._epoch_losses).mean()))
            self._epoch_losses.clear()
        for name, value in self.evaluate().items():
            self.curves.setdefault(name, []).append(value)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Ranking metrics on the candidate (test) pairs, overall and on rare items."""
        scores = self.model.score_all().detach().cpu()
        ev = self.evaluation
        common: dict[str, Any] = dict(candidates=ev["candidates"], metrics=self.metric_names)
        out = {
            f"test/{k}": v
            for k, v in ranking_metrics(scores, ev["relevance"], list(self.ks), **common).items()
        }
        if "rare_items" in ev:
            rare = ranking_metrics(
                scores, ev["relevance"], list(self.ks), item_subset=ev["rare_items"], **common
            )
            out.update({f"test/rare/{k}": v for k, v in rare.items()})
        return out

    def final_metrics(self) -> dict[str, float]:
        return {name: values[-1] for name, values in self.curves.items() if values}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.parameters())
