"""Base of the data modules of simulations: generated data that a method draws itself, sample by sample."""

from __future__ import annotations

import lightning as L

from common.errors import UserError

__all__ = ["SimulationDataModule"]


class SimulationDataModule(L.LightningDataModule):
    """Checks `source` against the class's `sources`, keeps `seed`, and accepts the keys every data config
    carries (`batch_size`, `num_workers`, `cache_dir`) although a simulation may not use them.

    By convention the last source, "random", gives inputs of the right shapes with uninformative labels, for
    config smoke tests only."""

    sources: tuple[str, ...] = ("gaussian", "random")

    def __init__(
        self,
        source: str,
        *,
        seed: int = 0,
        batch_size: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if source not in self.sources:
            name = type(self).__name__
            raise UserError(f"unknown data.source {source!r} for {name}; use one of {self.sources}")
        self.source, self.seed = source, int(seed)
        self.batch_size, self.num_workers, self.cache_dir = batch_size, num_workers, cache_dir
