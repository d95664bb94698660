"""The mini rankers' training as a LightningModule: bilinear relevance (and, for CET, selection) scorers
trained full-batch with Adam on every (query, positive, negative) pair at each step; and `StepBatches`, a
fixed number of steps cut into Lightning epochs (both scales), so the run's stage checkpoints at the end of
each epoch and a killed run resumes from the last one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import torch

from common.errors import NonFiniteLossError
from papers.cet.coupled import BilinearScorer, coupled_losses, pairwise_softmax_loss


class FixedBatches:
    """Batches already built, one per step, in order: one loader for Lightning (which would take a plain list
    for a list of loaders)."""

    def __init__(self, batches: Sequence[Any]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.batches)


class StepBatches(L.LightningDataModule):
    """`steps` training steps, `batch(i)` at step i, in Lightning epochs of `steps_per_epoch` (the last one
    shorter); the trainer reloads the loader every epoch (``reload_dataloaders_every_n_epochs=1``).

    The epochs, not the Trainer's `max_steps`, end the fit: Lightning 2.6 resumes a fit with `max_steps` set
    from an end-of-epoch checkpoint as if inside the finished epoch (one batch too many, an epoch lost)."""

    def __init__(self, batch: Callable[[int], Any], steps: int, steps_per_epoch: int) -> None:
        super().__init__()
        self.batch, self.steps, self.steps_per_epoch = batch, steps, steps_per_epoch

    @property
    def num_epochs(self) -> int:
        return -(-self.steps // self.steps_per_epoch)

    def trainer_overrides(self) -> dict[str, Any]:
        return {"max_steps": -1, "max_epochs": self.num_epochs, "reload_dataloaders_every_n_epochs": 1}

    def train_dataloader(self) -> FixedBatches:
        start = self.trainer.current_epoch * self.steps_per_epoch
        stop = min(start + self.steps_per_epoch, self.steps)
        return FixedBatches([self.batch(i) for i in range(start, stop)])


class BilinearRankers(L.LightningModule):
    """`coupled`: CET (relevance and selection models, each weighting the other's pair losses, trained by
    one Adam); otherwise the relevance model alone on the plain pair loss. `test_ndcg(relevance_model)`
    scores held-out queries for the curve `curves["test/ndcg@10"]`, every `eval_every` steps (0: never)."""

    def __init__(
        self,
        dim: int,
        *,
        coupled: bool,
        debias_ratio: float,
        lr: float,
        weight_decay: float,
        eval_every: int,
        test_ndcg: Callable[[BilinearScorer], float],
    ) -> None:
        super().__init__()
        self.relevance_model = BilinearScorer(dim)
        self.selection_model = BilinearScorer(dim)
        self.coupled, self.debias_ratio = coupled, debias_ratio
        self.lr, self.weight_decay, self.eval_every = lr, weight_decay, eval_every
        self.test_ndcg = test_ndcg
        self.curves: dict[str, list[float]] = {"test/ndcg@10": []}
        self.epoch_loss = torch.zeros(())

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        q, pos, neg = batch
        relevance_pos, relevance_neg = self.relevance_model(q, pos), self.relevance_model(q, neg)
        if self.coupled:
            relevance_loss, selection_loss = coupled_losses(
                relevance_pos,
                relevance_neg,
                self.selection_model(q, pos),
                self.selection_model(q, neg),
                self.debias_ratio,
            )
            loss = relevance_loss + selection_loss
        else:
            loss = pairwise_softmax_loss(relevance_pos, relevance_neg).mean()
        self.epoch_loss = self.epoch_loss + loss.detach()
        self.log("train/loss", loss.detach(), on_step=False, on_epoch=True)
        return loss

    def on_train_epoch_end(self) -> None:
        # Checked once per epoch, not per step (a host sync each time).
        if not torch.isfinite(self.epoch_loss):
            raise NonFiniteLossError(f"non-finite loss by step {self.global_step}")
        self.epoch_loss = torch.zeros(())
        if self.eval_every and self.global_step % self.eval_every == 0:
            ndcg = self.test_ndcg(self.relevance_model)
            self.curves["test/ndcg@10"].append(ndcg)
            self.log("test/ndcg@10", ndcg, on_step=False, on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = list(self.relevance_model.parameters())
        if self.coupled:
            params += list(self.selection_model.parameters())
        # Adam's decoupled per-parameter state: the two models' updates do not interact.
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
