"""The paper's simulation: Gaussian classes with a shared diagonal covariance, learning curves of a classifier
and the number of training samples it needs to get within `tolerance` of the Bayes error.

Distribution (official `data/generate_data.py`, mode "easy", and `data/dataset.py`, ML-GSAI/
Revisiting-Dis-vs-Gen-Classifiers @86a0bcc): K classes with equal priors; class k has mean c_k (1, ..., 1)
with c_0 = -1 and c_k = 2^(k-1) for k >= 1; the covariance is diagonal with variance n on the first n // 2
features and 1 on the others (n = number of features). For K > 2 the official loader standardises the
inputs as (x - 2^(K-3)) / 2^(K-3), which is applied here to the means and variances.

Because every class mean lies on the all-ones line and the covariance is shared, the Bayes rule depends on x
only through u = (sum_j x_j / v_j) / S with S = sum_j 1 / v_j, and u ~ N(c_y, 1/S) given y: the Bayes error
is that of K one-dimensional Gaussians with a common variance (see `bayes_error`). For K = 2 it is
Phi(-Delta / 2) with the Mahalanobis distance Delta = (c_1 - c_0) sqrt(S).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm
from sklearn.exceptions import ConvergenceWarning

from common.data.simulation import SimulationDataModule
from common.errors import UserError
from common.registry import register_datamodule

SOURCES = ("gaussian", "random")
GRIDS = ("geometric", "official")


@dataclass(frozen=True)
class GaussianClasses:
    """K Gaussian classes with means `centers[k] * ones(n)` and the diagonal covariance `variances`."""

    centers: np.ndarray  # (K,)
    variances: np.ndarray  # (n,)

    @property
    def num_classes(self) -> int:
        return len(self.centers)

    @property
    def num_features(self) -> int:
        return len(self.variances)

    @property
    def means(self) -> np.ndarray:
        """(K, n) class means."""
        return np.repeat(self.centers[:, None], self.num_features, axis=1)

    @property
    def mahalanobis_norm(self) -> float:
        """sqrt(S), S = sum_j 1 / v_j: the Mahalanobis length of the all-ones vector."""
        return float(np.sqrt(np.sum(1.0 / self.variances)))

    def sample(self, num_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`num_samples` draws with uniform class labels: (x float64 (m, n), y int64 (m,))."""
        y = rng.integers(0, self.num_classes, num_samples)
        noise = rng.standard_normal((num_samples, self.num_features))
        return self.centers[y][:, None] + noise * np.sqrt(self.variances), y.astype(np.int64)

    def bayes_error(self) -> float:
        """Error of the Bayes classifier (equal priors): K one-dimensional Gaussians N(c_k, 1/S)."""
        order = np.sort(self.centers)
        if np.any(np.diff(order) <= 0):
            raise ValueError("class centres must be distinct")
        scale = self.mahalanobis_norm
        cuts = np.concatenate([[-np.inf], (order[1:] + order[:-1]) / 2, [np.inf]])
        # Tail probabilities directly (not 1 - P(correct)), so errors far below 1e-16 keep their precision.
        below = norm.cdf((cuts[:-1] - order) * scale)
        above = norm.sf((cuts[1:] - order) * scale)
        return float(np.mean(below + above))

    def bayes_predict(self, x: np.ndarray) -> np.ndarray:
        """The Bayes rule: the class whose centre is nearest to u = (sum_j x_j / v_j) / S."""
        u = (x / self.variances).sum(axis=1) / np.sum(1.0 / self.variances)
        return np.abs(u[:, None] - self.centers[None, :]).argmin(axis=1)


def official_gaussian_classes(num_features: int, num_classes: int) -> GaussianClasses:
    """The official simulation's distribution for n = `num_features` and K = `num_classes` (module doc)."""
    if num_classes < 2 or num_features < 1:
        raise UserError(
            f"the simulation needs >= 2 classes and >= 1 feature, got {num_classes}, {num_features}"
        )
    centers = np.array([-1.0] + [2.0 ** (k - 1) for k in range(1, num_classes)])
    half = num_features // 2
    variances = np.array([float(num_features)] * half + [1.0] * (num_features - half))
    if num_classes > 2:  # the official loader's standardisation (data/dataset.py, __getitem__)
        shift = 2.0 ** (num_classes - 3)
        centers, variances = (centers - shift) / shift, variances / shift**2
    return GaussianClasses(centers, variances)


@register_datamodule("disc_vs_gen_gaussian")
class GaussianSimulationDataModule(SimulationDataModule):
    """Training sets of any size drawn on demand from the simulation's distribution, and one test set.

    `source="random"`: standard normal inputs with labels independent of them (smoke tests of the configs;
    their Bayes error is 1 - 1/K). `batch_size` and `num_workers` exist for the shared config keys only."""

    sources = SOURCES

    def __init__(
        self,
        source: str = "gaussian",
        *,
        num_features: int = 100,
        num_classes: int = 2,
        num_test: int = 10_000,
        seed: int = 0,
        batch_size: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(
            source, seed=seed, batch_size=batch_size, num_workers=num_workers, cache_dir=cache_dir
        )
        if num_test < 1:
            raise UserError(f"data.num_test must be >= 1, got {num_test}")
        self.num_features, self.num_classes, self.num_test = (
            int(num_features),
            int(num_classes),
            int(num_test),
        )
        self.distribution = official_gaussian_classes(self.num_features, self.num_classes)
        self.test_x: np.ndarray | None = None
        self.test_labels: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int]:
        return (self.num_features,)

    def params(self) -> dict[str, Any]:
        """What decides the data (part of the learning-curve stage config)."""
        return {
            "source": self.source,
            "num_features": self.num_features,
            "num_classes": self.num_classes,
            "num_test": self.num_test,
            "seed": self.seed,
        }

    def with_num_features(self, num_features: int) -> GaussianSimulationDataModule:
        """The same simulation in another dimension."""
        return GaussianSimulationDataModule(
            self.source,
            num_features=num_features,
            num_classes=self.num_classes,
            num_test=self.num_test,
            seed=self.seed,
            batch_size=self.batch_size,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.test_x is None:
            rng = np.random.default_rng([self.seed, self.num_features, self.num_classes, 0])
            self.test_x, self.test_labels = self.sample(self.num_test, rng)

    def sample(self, num_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.source == "random":
            x = rng.standard_normal((num_samples, self.num_features))
            return x, rng.integers(0, self.num_classes, num_samples).astype(np.int64)
        return self.distribution.sample(num_samples, rng)

    def sample_with_every_class(
        self, num_samples: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """A training set in which every class occurs (redrawn otherwise, as the official code does)."""
        if num_samples < self.num_classes:
            raise ValueError(f"{num_samples} samples cannot cover {self.num_classes} classes")
        while True:
            x, y = self.sample(num_samples, rng)
            if len(np.unique(y)) == self.num_classes:
                return x, y

    def bayes_error(self) -> float:
        if self.source == "random":
            return 1.0 - 1.0 / self.num_classes
        return self.distribution.bayes_error()


def training_sizes(
    grid: str, *, num_classes: int, num_features: int, max_samples: int, ratio: float = 2**0.25
) -> Iterator[int]:
    """Training-set sizes m from 2K up to `max_samples`: `official` steps by ceil(ln n) (main_simulation.py,
    `m_step = range(2K, 100n, ceil(log n))`), `geometric` multiplies by `ratio` (at least +1)."""
    start = 2 * num_classes
    if grid == "official":
        yield from range(start, max_samples, max(1, math.ceil(math.log(num_features))))
        return
    if grid != "geometric":
        raise UserError(f"unknown protocol.grid {grid!r}; use one of {GRIDS}")
    if ratio <= 1:
        raise UserError(f"protocol.grid_ratio must be > 1, got {ratio}")
    size = start
    while size <= max_samples:
        yield size
        size = max(size + 1, int(round(size * ratio)))


@dataclass
class LearningCurve:
    """Mean test error (fraction) over `repeats` training sets at each size, up to the first size whose error
    is below the Bayes error + tolerance (`samples_to_asymptote`; the last size tried if none is)."""

    sizes: list[int]
    errors: list[float]
    bayes_error: float
    tolerance: float
    reached: bool
    not_converged: int = 0
    fits: int = 0

    @property
    def samples_to_asymptote(self) -> int:
        return self.sizes[-1]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def learning_curve(
    datamodule: GaussianSimulationDataModule,
    make_estimator: Callable[[], Any],
    *,
    seed: int,
    grid: str,
    repeats: int,
    tolerance: float,
    max_samples_per_feature: float,
    grid_ratio: float = 2**0.25,
) -> LearningCurve:
    """Fit a fresh estimator on `repeats` training sets of each size and score it on the test set; stop at the
    first size whose mean error is below Bayes error + `tolerance` (official stopping rule).

    Training sets are seeded by (seed, n, K, m, repeat), so two classifiers see the same training sets."""
    datamodule.setup()
    bayes = datamodule.bayes_error()
    max_samples = max(2 * datamodule.num_classes, int(max_samples_per_feature * datamodule.num_features))
    sizes, errors, not_converged, fits = [], [], 0, 0
    reached = False
    for size in training_sizes(
        grid,
        num_classes=datamodule.num_classes,
        num_features=datamodule.num_features,
        max_samples=max_samples,
        ratio=grid_ratio,
    ):
        run_errors = []
        for repeat in range(repeats):
            rng = np.random.default_rng(
                [seed, datamodule.num_features, datamodule.num_classes, size, repeat + 1]
            )
            x, y = datamodule.sample_with_every_class(size, rng)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                estimator = make_estimator().fit(x, y)
            not_converged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
            fits += 1
            run_errors.append(float(np.mean(estimator.predict(datamodule.test_x) != datamodule.test_labels)))
        sizes.append(size)
        errors.append(float(np.mean(run_errors)))
        if errors[-1] < bayes + tolerance:
            reached = True
            break
    return LearningCurve(sizes, errors, bayes, tolerance, reached, not_converged, fits)


def fit_scaling(dims: list[int], samples: list[float]) -> dict[str, float]:
    """Least-squares fits of the samples-to-asymptote m(n) over the dimensions n: `exponent` b of
    m = a n^b (log-log slope), `per_log_dim` b of m = a + b ln n, `per_dim` b of m = a + b n."""
    if len(dims) < 2:
        raise UserError("the scaling fit needs at least two dimensions (protocol.dims)")
    n, m = np.asarray(dims, dtype=float), np.asarray(samples, dtype=float)
    return {
        "exponent": float(np.polyfit(np.log(n), np.log(m), 1)[0]),
        "per_log_dim": float(np.polyfit(np.log(n), m, 1)[0]),
        "per_dim": float(np.polyfit(n, m, 1)[0]),
    }
