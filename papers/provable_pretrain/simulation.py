"""Data modules of the simulations: one latent-variable model per seed, samples of any size on demand.

`provable_pretrain_factor` (factor model + linear regression) and `provable_pretrain_mixture` (Gaussian
mixture + classification) draw the true model from the run's seed (`papers/provable_pretrain/models.py`).
Unlabeled and labelled samples are drawn by the pipeline with their own seeded generators, so two methods of
one seed see the same samples (paired comparisons).

`source="random"` replaces the model by one whose labels do not depend on x (zero loadings / equal means):
the config smoke tests run on it. `batch_size` and `num_workers` exist only for the shared config keys.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np

from common.errors import UserError
from common.registry import register_datamodule
from papers.provable_pretrain.models import (
    FactorModel,
    MixtureModel,
    make_factor_model,
    make_mixture_model,
)

SOURCES = ("gaussian", "random")


class LatentVariableDataModule(L.LightningDataModule):
    """Shared parts: the source, the seed, and a fixed sample of x for evaluating classifiers."""

    def __init__(
        self,
        source: str,
        seed: int,
        num_eval: int,
        batch_size: int | None,
        num_workers: int,
        cache_dir: str | None,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise UserError(f"unknown data.source {source!r} for the simulation; use one of {SOURCES}")
        if num_eval < 1:
            raise UserError(f"data.num_eval must be >= 1, got {num_eval}")
        self.source, self.seed, self.num_eval = source, int(seed), int(num_eval)
        self.batch_size, self.num_workers = batch_size, num_workers

    def setup(self, stage: str | None = None) -> None:
        """Nothing to prepare by default: samples are drawn on demand."""

    def rng(self, *stream: int) -> np.random.Generator:
        """A generator for one named stream of this seed's draws."""
        return np.random.default_rng([self.seed, *stream])

    def params(self) -> dict[str, Any]:
        """What decides the data (for cache keys)."""
        raise NotImplementedError


@register_datamodule("provable_pretrain_factor")
class FactorDataModule(LatentVariableDataModule):
    """Factor model x = mu + B z + e (d = `dim`, r = `rank`), y = beta^T z + noise (module doc)."""

    def __init__(
        self,
        source: str = "gaussian",
        *,
        dim: int = 200,
        rank: int = 5,
        strength: float = 10.0,
        label_noise: float = 0.5,
        noise_low: float = 0.5,
        noise_high: float = 1.5,
        num_eval: int = 1,
        seed: int = 0,
        batch_size: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(source, seed, num_eval, batch_size, num_workers, cache_dir)
        if not 0 < rank < dim:
            raise UserError(f"the factor model needs 0 < rank < dim, got rank={rank}, dim={dim}")
        self.dim, self.rank, self.strength = int(dim), int(rank), float(strength)
        self.label_noise, self.noise_range = float(label_noise), (float(noise_low), float(noise_high))
        model = make_factor_model(
            self.dim, self.rank, self.strength, self.label_noise, self.noise_range, self.rng(0)
        )
        if source == "random":  # labels independent of x
            model = FactorModel(
                np.zeros_like(model.loadings),
                model.noise_variances,
                model.mean,
                model.coef,
                model.label_noise,
            )
        self.model: FactorModel = model

    @property
    def input_shape(self) -> tuple[int]:
        return (self.dim,)

    def params(self) -> dict[str, Any]:
        return {
            "kind": "factor",
            "source": self.source,
            "seed": self.seed,
            "dim": self.dim,
            "rank": self.rank,
            "strength": self.strength,
            "label_noise": self.label_noise,
            "noise_range": self.noise_range,
        }


@register_datamodule("provable_pretrain_mixture")
class MixtureDataModule(LatentVariableDataModule):
    """K-component Gaussian mixture in d = `dim` with labels = components flipped with prob. `label_noise`.

    `num_eval` points of x estimate the excess 0-1 risk; another `num_eval` points give the
    population-optimal downstream map (ERM with n -> infinity)."""

    def __init__(
        self,
        source: str = "gaussian",
        *,
        dim: int = 50,
        num_components: int = 4,
        separation: float = 3.0,
        label_noise: float = 0.1,
        num_eval: int = 20_000,
        seed: int = 0,
        batch_size: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(source, seed, num_eval, batch_size, num_workers, cache_dir)
        if num_components < 2:
            raise UserError(f"the mixture needs >= 2 components, got {num_components}")
        self.dim, self.num_components = int(dim), int(num_components)
        self.separation, self.label_noise = float(separation), float(label_noise)
        model = make_mixture_model(
            self.dim, self.num_components, self.separation, self.label_noise, self.rng(0)
        )
        if source == "random":  # every component at the origin: labels independent of x
            model = MixtureModel(np.zeros_like(model.means), model.label_noise)
        self.model: MixtureModel = model
        self.eval_x: np.ndarray | None = None
        self.eval_probs: np.ndarray | None = None  # P(y | x) at eval_x
        self.population_x: np.ndarray | None = None
        self.population_probs: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int]:
        return (self.dim,)

    @property
    def num_classes(self) -> int:
        return self.num_components

    def setup(self, stage: str | None = None) -> None:
        """Nothing eager: the evaluation samples are drawn by `prepare_evaluation`, after a smoke test has
        had the chance to shrink `num_eval`."""

    def prepare_evaluation(self) -> None:
        """Draw the evaluation and population samples of x and their exact P(y | x) (once)."""
        if self.eval_x is None:
            self.eval_x = self.model.sample(self.num_eval, self.rng(3))[0]
            self.eval_probs = self.model.label_probs(self.eval_x)
            self.population_x = self.model.sample(self.num_eval, self.rng(4))[0]
            self.population_probs = self.model.label_probs(self.population_x)

    def params(self) -> dict[str, Any]:
        return {
            "kind": "mixture",
            "source": self.source,
            "seed": self.seed,
            "dim": self.dim,
            "num_components": self.num_components,
            "separation": self.separation,
            "label_noise": self.label_noise,
            "num_eval": self.num_eval,
        }
