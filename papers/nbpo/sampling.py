"""Negative samplers for implicit feedback: draw, for each voted pair (u, i) of a batch, ``samples`` items the
user has not voted, uniformly (BPR, BPO and NBPO in the official code) or in proportion to item popularity
(WBPR, Gantner et al. 2012: a popular item the user skipped was probably seen, so it is more likely a true
negative). Rejection sampling, vectorised: redraw only the slots that hit a voted item."""

from __future__ import annotations

import torch

__all__ = ["popularity_weights", "sample_unvoted"]


def popularity_weights(voted: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """(items,) sampling weights (number of voting users)^power; items nobody voted get weight 0."""
    if voted.ndim != 2:
        raise ValueError(f"voted must be a (users, items) matrix, got shape {tuple(voted.shape)}")
    counts = voted.to(torch.float64).sum(0)
    if counts.sum() <= 0:
        raise ValueError("no voted pair at all: popularity weights are undefined")
    return counts.pow(float(power))


def sample_unvoted(
    users: torch.Tensor,
    voted: torch.Tensor,
    samples: int,
    generator: torch.Generator,
    item_weights: torch.Tensor | None = None,
    max_rounds: int = 1000,
) -> torch.Tensor:
    """(len(users), samples) item ids j with voted[u, j] False: uniform over items, or drawn in proportion to
    ``item_weights`` (then renormalised over the user's unvoted items by the rejection)."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    num_items = voted.shape[1]
    shape = (len(users), samples)

    def draw(count: int) -> torch.Tensor:
        if item_weights is None:
            return torch.randint(num_items, (count,), generator=generator, device=voted.device)
        return torch.multinomial(item_weights, count, replacement=True, generator=generator)

    items = draw(shape[0] * shape[1])
    # Flat (user, item) offsets: one gather per round instead of 2-d advanced indexing.
    flat_voted = voted.reshape(-1)
    row_offsets = (users * num_items).repeat_interleave(samples)
    pending = torch.arange(len(items), device=items.device)
    for _ in range(max_rounds):
        hit = flat_voted[row_offsets[pending] + items[pending]]
        pending = pending[hit]
        if len(pending) == 0:
            return items.view(shape)
        items[pending] = draw(len(pending))
    raise RuntimeError(
        f"could not draw unvoted items in {max_rounds} rounds: some user has voted (almost) every item "
        "that the sampler can draw"
    )
