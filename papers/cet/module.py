"""The mini rankers' training as a LightningModule: the relevance (and, for CET, selection) match scorers
trained on mini-batches of (query, positive, negative) pairs with the official optimiser (one AdamW per model,
linear warm-up then linear decay, gradients clipped to norm 1.0 per model), one Lightning step per pass over
the pairs; and `StepBatches`, a fixed number of steps cut into Lightning epochs (both scales), so the run's
stage checkpoints at the end of each epoch and a killed run resumes from the last one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import torch

from common.errors import NonFiniteLossError
from papers.cet.coupled import MatchScorer, coupled_losses, inverse_selection_weight, pairwise_softmax_loss


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


def linear_warmup_decay(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """The lr factor of transformers' get_linear_schedule_with_warmup (the official schedule): step/warmup
    during the warm-up, then linear decay to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


class MatchRankers(L.LightningModule):
    """`coupled`: CET (relevance and selection models, each weighting the other's pair losses); otherwise
    the relevance model alone on the plain pair loss. Each model has its own AdamW (lr, weight decay, eps
    1e-8) with linear warm-up then decay over `total_steps`, and its gradient clipped to norm 1.0, as the
    official train.py; manual optimisation (two optimisers per batch). A Lightning batch is one pass: a list
    of mini-batches (q, pos, neg, is_false_neg), the last used only for the weight diagnostics (sums of
    CET's relevance-loss weights on false and true negatives over training, kept as buffers so a resumed
    run keeps them). `test_ndcg(relevance_model)` scores
    held-out queries for the curve `curves["test/ndcg@10"]` at the end of every Lightning epoch."""

    def __init__(
        self,
        dim: int,
        *,
        coupled: bool,
        debias_ratio: float,
        lr: float,
        weight_decay: float,
        warmup_steps: int,
        total_steps: int,
        init_std: float,
        score_scale: float,
        seed: int,
        test_ndcg: Callable[[MatchScorer], float],
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        generator = torch.Generator().manual_seed(int(seed))
        # Drawn one after the other from one generator: the two models start apart (the official heads too).
        self.relevance_model = MatchScorer(dim, init_std=init_std, scale=score_scale, generator=generator)
        self.selection_model = MatchScorer(dim, init_std=init_std, scale=score_scale, generator=generator)
        self.coupled, self.debias_ratio = coupled, debias_ratio
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.test_ndcg = test_ndcg
        self.curves: dict[str, list[float]] = {"test/ndcg@10": []}
        self.epoch_loss = torch.zeros(())
        # [sum of weights, count] on false negatives, then on true negatives, over all training steps.
        self.register_buffer("weight_sums", torch.zeros(4, dtype=torch.float64))

    def models(self) -> list[MatchScorer]:
        return [self.relevance_model, self.selection_model] if self.coupled else [self.relevance_model]

    def training_step(self, batch: list[tuple[torch.Tensor, ...]], batch_idx: int) -> None:
        """One pass over the pairs: `batch` holds its mini-batches, each an optimiser step of both models
        (looped here rather than one Lightning step each: the per-step overhead of the trainer would be most
        of the mini's run time)."""
        optimizers, schedulers = _as_list(self.optimizers()), _as_list(self.lr_schedulers())
        for mini_batch in batch:
            loss = self._loss(*mini_batch)
            self.epoch_loss = self.epoch_loss + loss.detach()
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            # Each model's loss reaches only its own parameters (the weights are detached): one backward.
            self.manual_backward(loss)
            for model, optimizer, scheduler in zip(self.models(), optimizers, schedulers, strict=True):
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
        self.log("train/loss", self.epoch_loss / max(1, len(batch)), on_step=False, on_epoch=True)

    def _loss(
        self, q: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, is_false_negative: torch.Tensor
    ) -> torch.Tensor:
        relevance_pos, relevance_neg = self.relevance_model(q, pos), self.relevance_model(q, neg)
        if not self.coupled:
            return pairwise_softmax_loss(relevance_pos, relevance_neg).mean()
        selection_neg = self.selection_model(q, neg)
        relevance_loss, selection_loss = coupled_losses(
            relevance_pos, relevance_neg, self.selection_model(q, pos), selection_neg, self.debias_ratio
        )
        weight = inverse_selection_weight(selection_neg, self.debias_ratio).double()
        false_neg = is_false_negative.bool()
        self.weight_sums += torch.stack(
            [
                weight[false_neg].sum(),
                false_neg.sum().double(),
                weight[~false_neg].sum(),
                (~false_neg).sum().double(),
            ]
        )
        return relevance_loss + selection_loss

    def on_train_epoch_end(self) -> None:
        # Checked once per epoch, not per step (a host sync each time).
        if not torch.isfinite(self.epoch_loss):
            raise NonFiniteLossError(f"non-finite loss by step {self.global_step}")
        self.epoch_loss = torch.zeros(())
        ndcg = self.test_ndcg(self.relevance_model)
        self.curves["test/ndcg@10"].append(ndcg)
        self.log("test/ndcg@10", ndcg, on_step=False, on_epoch=True)

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[Any]]:
        optimizers = [
            torch.optim.AdamW(m.parameters(), lr=self.lr, weight_decay=self.weight_decay, eps=1e-8)
            for m in self.models()
        ]
        factor = linear_warmup_decay(min(self.warmup_steps, self.total_steps), self.total_steps)
        return optimizers, [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in optimizers]


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]
