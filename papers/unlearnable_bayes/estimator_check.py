"""The estimator check: BE_hat on two Gaussian classes whose Bayes error is known exactly
(`data=unlearnable_bayes_two_gaussians`, `method=unlearnable_bayes_estimator`).

scikit-learn's make_classification gives every cluster a random covariance, so its Bayes error has no closed
form; the two classes here are N(-m, I) and N(+m, I) in `num_features` dimensions with equal priors, whose
Bayes error Phi(-|2m| / 2) is set by the column (`data.bayes_error`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from common.data.simulation import SimulationDataModule
from common.errors import UserError
from common.lit import Pipeline, RunContext
from common.registry import register_datamodule, register_method
from papers.unlearnable_bayes.bayes_error import (
    bayes_error_from_posteriors,
    kernel_posterior,
    knn_posterior,
    two_gaussians_bayes_error,
    two_gaussians_distance,
)

ESTIMATORS = ("kernel", "knn")


@register_datamodule("unlearnable_bayes_two_gaussians")
class TwoGaussiansDataModule(SimulationDataModule):
    """`num_train` draws of two equiprobable classes N(-+m, I), |2m| set by the exact `bayes_error`; the
    first coordinate carries the mean difference. `source=random` gives labels independent of the inputs
    (config smoke tests only)."""

    def __init__(
        self,
        *,
        bayes_error: float = 0.1,
        num_features: int = 2,
        num_train: int = 2000,
        source: str = "gaussian",
        seed: int = 0,
        batch_size: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(
            source, seed=seed, batch_size=batch_size, num_workers=num_workers, cache_dir=cache_dir
        )
        self.bayes_error, self.num_features, self.num_train = float(bayes_error), int(num_features), num_train
        self.num_classes, self.input_shape = 2, (int(num_features),)
        self.distance = two_gaussians_distance(self.bayes_error)

    def setup(self, stage: str | None = None) -> None:
        rng = np.random.default_rng([self.seed, 3])
        labels = rng.integers(0, 2, self.num_train)
        x = rng.standard_normal((self.num_train, self.num_features))
        if self.source == "gaussian":
            x[:, 0] += (2 * labels - 1) * self.distance / 2
        self.train_x = torch.from_numpy(x).float()
        self.train_labels = torch.from_numpy(labels)

    @property
    def exact_bayes_error(self) -> float:
        return two_gaussians_bayes_error(self.distance)


@register_method("unlearnable_bayes_estimator")
class BayesErrorEstimate(Pipeline):
    """BE_hat of the training draws with the chosen estimator: `kernel` (official local averaging, `sigma`)
    or `knn` (soft labels of the `k` nearest other examples)."""

    def __init__(self, estimator: str = "kernel", sigma: float = 0.3, k: int = 50) -> None:
        if estimator not in ESTIMATORS:
            raise UserError(f"method.estimator must be one of {ESTIMATORS}, got {estimator!r}")
        self.estimator, self.sigma, self.k = estimator, float(sigma), int(k)

    def run(self, context: RunContext) -> dict[str, Any]:
        data = context.datamodule
        if not isinstance(data, TwoGaussiansDataModule):
            raise UserError("unlearnable_bayes_estimator needs data=unlearnable_bayes_two_gaussians")
        x, labels = data.train_x, data.train_labels
        if self.estimator == "kernel":
            posteriors = kernel_posterior(x, labels, 2, self.sigma)
        else:
            posteriors = knn_posterior(x, labels, 2, min(self.k, len(x) - 1))
        estimate = 100 * float(bayes_error_from_posteriors(posteriors))
        exact = 100 * data.exact_bayes_error
        return {
            "be_hat": estimate,
            "be_exact": exact,
            "be_abs_error": abs(estimate - exact),
            "be_error": estimate - exact,
        }
