"""The paper's isotropic two-Gaussian simulation, ERM and RSS on it (official
code/Simulation/SVM_Robustness.ipynb, deepmancer/rss-training-iclr2024 @b526e0a).

Data (notebook `generate_mu`, `generate_data`, `generate_unlabeled_data`): d = 200, a random unit vector mu, x
| y ~ N(y mu, sigma^2 I) with balanced labels y in {-1, +1}; the unlabeled samples come from the same mixture
with mean mu_1 = mu + shift ||mu|| v for a random unit vector v (shift 0: same distribution; the paper's
"different distribution" uses 0.5), half from each component, without labels.

Model and training (notebook `LinearModel`, `LinearTrainer`, `RobustTrainer`): f(x) = w^T x (no bias, Xavier
init), full-batch Adam (lr 0.07, weight decay) with ReduceLROnPlateau(factor 0.1, patience 3) on the training
loss, `epochs` epochs, keeping the final weights of the run (of `restarts`) with the lowest last-epoch loss.
ERM minimises the clipped hinge clamp(1 - gamma y f, 0, 1); RSS adds lambda clamp(1 - gamma' |f(x')|, 0, 1) on
the unlabeled points (losses.rss_linear_loss). Hyper-parameters are chosen per run by test accuracy, as the
notebook's `get_tuned_model` does (random search, 500 / 4000 draws); mini scale searches a small grid instead.

Test accuracy is exact: for x | y ~ N(y mu, sigma^2 I), P(y w^T x > 0) = Phi(w^T mu / (sigma ||w||)) (the
notebook uses 10^4 test samples).

Stages: the search is stored in blocks of `SEARCH_BLOCK` candidates (`context.stages.compute`, stage
"search"), so a requeued run resumes the search after its last finished block, and the ERM row computes its
search once per seed for all columns. Each candidate's fits (`fit_linear`) stay plain torch loops: thousands
of 20-step full-batch solves of a d-vector, a few milliseconds each, where a Lightning fit per solve would
cost far more than the solve (README, "Stages and resumption").
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from scipy.stats import norm
from torch import nn

from common.data.simulation import SimulationDataModule
from common.errors import UserError
from common.lit import Pipeline, RunContext
from common.registry import register_datamodule, register_method
from papers.ood_unlabeled_dro.losses import rss_linear_loss

SOURCES = ("gaussian", "random")
# Candidates per stored search block: a requeued paper-scale search (4000 candidates x 20 restarts) loses at
# most one block.
SEARCH_BLOCK = 100


@register_datamodule("ood_unlabeled_dro_gmm")
class TwoGaussianDataModule(SimulationDataModule):
    """One draw of mu (and of the shift direction v) per seed; labelled and unlabeled samples on demand.

    `source="random"`: mu = 0, labels independent of x (config smoke tests only)."""

    sources = SOURCES

    def __init__(
        self,
        source: str = "gaussian",
        *,
        dim: int = 200,
        mean_norm: float = 1.0,
        std: float = 1.0,
        shift: float = 0.0,
        seed: int = 0,
        batch_size: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(
            source, seed=seed, batch_size=batch_size, num_workers=num_workers, cache_dir=cache_dir
        )
        self.dim, self.mean_norm, self.std, self.shift = int(dim), float(mean_norm), float(std), float(shift)
        rng = np.random.default_rng([self.seed, 0])
        mu = rng.standard_normal(self.dim)
        mu *= float(mean_norm) / np.linalg.norm(mu)
        v = rng.standard_normal(self.dim)
        v /= np.linalg.norm(v)
        self.mean = np.zeros(self.dim) if source == "random" else mu
        self.unlabeled_mean = self.mean + self.shift * np.linalg.norm(self.mean) * v

    @property
    def input_shape(self) -> tuple[int]:
        return (self.dim,)

    def setup(self, stage: str | None = None) -> None:
        """Nothing to prepare: samples are drawn on demand."""

    def rng(self, *stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *stream])

    def labeled(self, num: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`num` labelled samples, half of each class (the notebook's `generate_data`)."""
        return _balanced_mixture(self.mean, self.std, num, rng)

    def unlabeled(self, num: int, rng: np.random.Generator) -> np.ndarray:
        """`num` unlabeled samples from the (possibly shifted) mixture."""
        return _balanced_mixture(self.unlabeled_mean, self.std, num, rng)[0]

    def accuracy(self, weight: np.ndarray) -> float:
        """Exact accuracy of x -> sign(w^T x) on the labelled distribution."""
        scale = self.std * np.linalg.norm(weight)
        return 0.5 if scale == 0 else float(norm.cdf(weight @ self.mean / scale))

    def bayes_accuracy(self) -> float:
        return float(norm.cdf(np.linalg.norm(self.mean) / self.std))


def _balanced_mixture(
    mean: np.ndarray, std: float, num: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    y = np.where(np.arange(num) < num // 2, 1.0, -1.0)
    if num % 2:
        y[-1] = 1.0 if rng.random() < 0.5 else -1.0
    x = y[:, None] * mean + std * rng.standard_normal((num, len(mean)))
    return x, y


@dataclass(frozen=True)
class TrainSettings:
    lr: float = 0.07
    epochs: int = 20
    restarts: int = 15


def fit_linear(
    x: torch.Tensor,
    y: torch.Tensor,
    x_unlabeled: torch.Tensor | None,
    *,
    gamma: float,
    weight_decay: float,
    gamma_unlabeled: float = 0.0,
    lam: float = 0.0,
    settings: TrainSettings,
    generator: torch.Generator,
) -> torch.Tensor:
    """The notebook's trainer: `restarts` full-batch Adam runs from Xavier inits, keeping the run whose last
    epoch had the lowest loss. Returns that run's final w (d,): the notebook's "best checkpoint" is
    `model.state_dict()`, which references the live parameters, so it always ends as the final weights."""
    best_weight, best_loss = None, math.inf
    for _ in range(settings.restarts):
        layer = nn.Linear(x.shape[1], 1, bias=False)
        with torch.no_grad():  # Xavier uniform, from our generator (reproducible)
            bound = math.sqrt(6.0 / (x.shape[1] + 1))
            layer.weight.uniform_(-bound, bound, generator=generator)
        optimizer = torch.optim.Adam(layer.parameters(), lr=settings.lr, weight_decay=weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=3)
        last_loss = math.inf
        for _ in range(settings.epochs):
            optimizer.zero_grad()
            unlabeled_scores = layer(x_unlabeled).squeeze(1) if x_unlabeled is not None else None
            loss = rss_linear_loss(layer(x).squeeze(1), y, unlabeled_scores, gamma, gamma_unlabeled, lam)
            loss.backward()
            optimizer.step()
            last_loss = loss.item()
            scheduler.step(last_loss)
        if last_loss < best_loss:
            best_loss, best_weight = last_loss, layer.weight.detach().clone()
    assert best_weight is not None
    return best_weight.squeeze(0)


class _LinearSimulation(Pipeline):
    """ERM / RSS on the simulation with a hyper-parameter search per run (module doc).

    `search`: grid (lists of values per hyper-parameter) or random (`ranges` [low, high] and
    `num_combinations`, uniform draws as the notebook's `get_tuned_model`, which also requires
    gamma_unlabeled < gamma)."""

    uses_unlabeled = False

    def __init__(self, **params: Any) -> None:
        self.params = params

    def candidates(self, rng: random.Random) -> list[dict[str, float]]:
        kind = self.params.get("search", "grid")
        if kind == "grid":
            grid = dict(self.params["grid"])
            keys = sorted(grid)
            return [
                dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))
            ]
        if kind != "random":
            raise UserError(f"unknown method.search {kind!r}; use grid or random")
        ranges = {k: (float(v[0]), float(v[1])) for k, v in dict(self.params["ranges"]).items()}
        out = []
        while len(out) < int(self.params["num_combinations"]):
            draw = {k: rng.uniform(low, high) for k, (low, high) in ranges.items()}
            if "gamma_unlabeled" in draw and draw["gamma_unlabeled"] >= draw["gamma"]:
                continue
            out.append(draw)
        return out

    def run(self, context: RunContext) -> dict[str, float]:
        data = context.datamodule
        if not isinstance(data, TwoGaussianDataModule):
            raise UserError("ood_unlabeled_dro simulation methods need data=ood_unlabeled_dro_gmm")
        protocol = OmegaConf.select(context.cfg, "protocol", default=None)
        if protocol is None or protocol.get("num_labeled") is None:
            raise UserError("the simulation needs protocol.num_labeled (and num_unlabeled for RSS)")
        m = int(protocol.num_labeled)
        n = int(protocol.get("num_unlabeled") or 0)
        settings = TrainSettings(
            lr=float(self.params.get("lr", 0.07)),
            epochs=int(self.params.get("epochs", 20)),
            restarts=int(self.params.get("restarts", 15)),
        )
        candidates = self.candidates(random.Random(data.seed))
        if not candidates:
            raise UserError("the hyper-parameter search has no candidates (method.grid or num_combinations)")
        if OmegaConf.select(context.cfg, "trainer.limit_train_batches", default=None) is not None:
            settings = TrainSettings(settings.lr, 1, 1)  # config smoke test: one step of one candidate
            candidates = candidates[:1]
        torch.manual_seed(data.seed)
        x, y = data.labeled(m, data.rng(1, m))
        x_t, y_t = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
        x_u = None
        if self.uses_unlabeled and n > 0:
            x_u = torch.tensor(data.unlabeled(n, data.rng(2, n)), dtype=torch.float32)
        config = self.search_config(data, settings, m, None if x_u is None else n)
        search_block = functools.partial(self._search_block, data, candidates, settings, x_t, y_t, x_u)
        best_acc, best_index = self._search(context, config, candidates, search_block)
        context.extra["selected_hyperparameters"] = {k: float(v) for k, v in candidates[best_index].items()}
        return {
            "test/acc": 100 * best_acc,
            "bayes_acc": 100 * data.bayes_accuracy(),
            "num_labeled": float(m),
            "num_unlabeled": float(n if self.uses_unlabeled else 0),
            "candidates": float(len(candidates)),
        }

    @staticmethod
    def search_config(
        data: TwoGaussianDataModule, settings: TrainSettings, num_labeled: int, num_unlabeled: int | None
    ) -> dict[str, Any]:
        """What decides a search block besides its candidates (`_search` adds their values and positions,
        which seed their inits): the fit settings, the data draw (its seed and distribution), m, and the
        unlabeled sample (n, shift) only when the method uses one, so the ERM row shares one search across
        the columns."""
        return {
            "settings": asdict(settings),
            "data": {
                "seed": data.seed,
                "source": data.source,
                "dim": data.dim,
                "mean_norm": data.mean_norm,
                "std": data.std,
            },
            "num_labeled": num_labeled,
            "unlabeled": None if num_unlabeled is None else {"num": num_unlabeled, "shift": data.shift},
        }

    @staticmethod
    def _search(
        context: RunContext,
        config: dict[str, Any],
        candidates: list[dict[str, float]],
        search_block: Callable[[range], dict[str, Any]],
    ) -> tuple[float, int]:
        """The candidate with the best exact test accuracy (the notebook's selection rule; the first one on
        ties), searched in stages of `SEARCH_BLOCK` candidates (stage "search"; unseeded, as the search
        was: each fit's init comes from its own generator, and nothing after it reads the global state it
        advances)."""
        best_acc, best_index = -1.0, 0
        for start in range(0, len(candidates), SEARCH_BLOCK):
            block = range(start, min(start + SEARCH_BLOCK, len(candidates)))
            if context.stages is None:
                found = search_block(block)
            else:
                values = candidates[block.start : block.stop]
                block_config = {**config, "candidates": {"first": block.start, "values": values}}
                found = context.stages.compute("search", block_config, functools.partial(search_block, block))
            if found["accuracy"] > best_acc:
                best_acc, best_index = found["accuracy"], found["index"]
        return best_acc, best_index

    @staticmethod
    def _search_block(
        data: TwoGaussianDataModule,
        candidates: list[dict[str, float]],
        settings: TrainSettings,
        x_t: torch.Tensor,
        y_t: torch.Tensor,
        x_u: torch.Tensor | None,
        block: range,
    ) -> dict[str, Any]:
        """The best of the candidates at positions `block`: {"accuracy", "index"}."""
        best: dict[str, Any] = {"accuracy": -1.0, "index": block.start}
        for index in block:
            params = candidates[index]
            generator = torch.Generator().manual_seed(data.seed * 100_003 + index)
            weight = fit_linear(
                x_t,
                y_t,
                x_u,
                gamma=float(params["gamma"]),
                weight_decay=float(params["weight_decay"]),
                gamma_unlabeled=float(params.get("gamma_unlabeled", 0.0)),
                lam=float(params.get("lam", 0.0)) if x_u is not None else 0.0,
                settings=settings,
                generator=generator,
            )
            acc = data.accuracy(weight.double().numpy())
            if acc > best["accuracy"]:
                best = {"accuracy": acc, "index": index}
        return best


@register_method("ood_unlabeled_dro_linear_erm")
class LinearERM(_LinearSimulation):
    """ERM with the clipped hinge on the labelled samples only (the notebook's LinearTrainer)."""


@register_method("ood_unlabeled_dro_linear_rss")
class LinearRSS(_LinearSimulation):
    """RSS: ERM's loss plus lambda times the self-labelled clipped hinge on the unlabeled samples
    (RobustTrainer)."""

    uses_unlabeled = True
