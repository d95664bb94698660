"""Learning-rate schedules that torch does not ship as one scheduler. Configs build them with
`_partial_: true`; the module calls them with its optimizer."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["warmup_multistep_lr"]


def warmup_multistep_lr(
    optimizer: torch.optim.Optimizer,
    warmup_epochs: int = 5,
    milestones: Sequence[int] = (160, 180),
    gamma: float = 0.01,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then step decay: the factor is ``(e + 1) / warmup_epochs`` for epochs (or steps)
    ``e < warmup_epochs``, then ``gamma ** (number of milestones <= e)``.

    The long-tailed CIFAR recipe (LDAM-DRW, Cao et al. 2019, and the codebases built on it): 5 warm-up
    epochs, x0.01 from epoch 160 and again from 180 of 200."""
    warmup = int(warmup_epochs)
    steps = sorted(int(m) for m in milestones)
    if warmup < 0 or any(m < warmup for m in steps) or not 0 < float(gamma) <= 1:
        raise ValueError(
            f"need warmup_epochs >= 0, milestones >= warmup_epochs and 0 < gamma <= 1; got {warmup_epochs}, "
            f"{list(milestones)} and {gamma}"
        )

    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / warmup
        return float(gamma) ** sum(epoch >= m for m in steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
