"""Naive Bayes and logistic regression as harness methods (`method=disc_vs_gen_nb|disc_vs_gen_lr`).

A run is not a Lightning fit but one of three protocols, chosen by the table's `protocol.kind`:
- `learning_curve` (simulation): test error vs training-set size m in one dimension n, up to the first m whose
  error is within `protocol.tolerance` of the Bayes error (the official stopping rule);
- `scaling` (simulation): the learning curves of every n in `protocol.dims` and fits of the samples-to-
  asymptote m(n) against n (power-law exponent, slope per ln n, slope per feature), and the ratio of m at
  the last and the first n;
- `linear_eval` (frozen features): the backbone's features are extracted once (a stage), the classifier is fit
  on `protocol.repeats` random training subsets of `samples_per_class * K` examples (null: all) and scored
  on the test split, as the official `main_train_offline.py` does (min-max scaling fit on the subset).
Learning curves, frozen features and full-data fits are cached stages (`common.lit.stages`, under
`<output_root>/stages/disc_vs_gen/<stage>/<key>/`), so the rows and tables that need one compute it once;
stored and fresh results are identical (every draw is seeded).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler
from threadpoolctl import threadpool_limits

from common.errors import UserError
from common.lit import Pipeline, RunContext
from common.registry import register_method
from papers.disc_vs_gen.classifiers import LOGISTIC_REGRESSION, NAIVE_BAYES, make_classifier
from papers.disc_vs_gen.features import extract_features, feature_stage_config
from papers.disc_vs_gen.simulation import (
    GaussianSimulationDataModule,
    LearningCurve,
    fit_scaling,
    learning_curve,
)

log = logging.getLogger("pnu.disc_vs_gen")

PROTOCOLS = ("learning_curve", "scaling", "linear_eval")
CURVE_STAGE, FULL_DATA_STAGE = "learning_curve", "full_data_error"


class LinearClassifierPipeline(Pipeline):
    """Fits one scikit-learn classifier (`classifier`, with the method config's parameters) under the
    table's protocol; subclasses fix the classifier."""

    classifier: str

    def __init__(self, **params: Any) -> None:
        self.params = params
        make_classifier(self.classifier, **params)  # fail early on a bad parameter

    def make_estimator(self, minmax: bool = False) -> Any:
        estimator = make_classifier(self.classifier, **self.params)
        return make_pipeline(MinMaxScaler(), estimator) if minmax else estimator

    def run(self, context: RunContext) -> dict[str, float]:
        protocol = OmegaConf.select(context.cfg, "protocol", default=None)
        if protocol is None or protocol.get("kind") not in PROTOCOLS:
            raise UserError(f"{self.classifier} runs need protocol.kind in {PROTOCOLS} (set by the table)")
        # One BLAS thread at mini scale: L-BFGS on a loaded 2-core machine is ~10x slower with more.
        threads = context.cfg.runtime.get("num_threads")
        with threadpool_limits(limits=int(threads) if threads else None):
            if protocol.kind == "learning_curve":
                return self._learning_curve(context, protocol)
            if protocol.kind == "scaling":
                return self._scaling(context, protocol)
            return self._linear_eval(context, protocol)

    # ---- simulation ------------------------------------------------------------------------------------
    def _simulation_data(self, context: RunContext) -> GaussianSimulationDataModule:
        if not isinstance(context.datamodule, GaussianSimulationDataModule):
            raise UserError("simulation protocols need data=disc_vs_gen_gaussian")
        return context.datamodule

    def _curve(
        self, context: RunContext, datamodule: GaussianSimulationDataModule, protocol: DictConfig
    ) -> LearningCurve:
        """The learning curve of the classifier on `datamodule`: the stage `learning_curve`, shared by the
        simulation tables."""
        seed = int(context.cfg.seed)
        settings = {
            "grid": str(protocol.grid),
            "grid_ratio": float(protocol.get("grid_ratio", 2**0.25)),
            "repeats": int(protocol.repeats),
            "tolerance": float(protocol.tolerance),
            "max_samples_per_feature": float(protocol.max_samples_per_feature),
        }
        config = {
            "classifier": self.classifier,
            "params": self.params,
            "data": datamodule.params(),
            "settings": settings,
            "seed": seed,
        }

        def compute() -> dict[str, Any]:
            return learning_curve(datamodule, self.make_estimator, seed=seed, **settings).to_dict()

        return LearningCurve(**_stage(context, CURVE_STAGE, config, compute))

    def _learning_curve(self, context: RunContext, protocol: DictConfig) -> dict[str, float]:
        curve = self._curve(context, self._simulation_data(context), protocol)
        context.curves = {
            "test/err": [100 * e for e in curve.errors],
            "train_size": list(map(float, curve.sizes)),
        }
        return {
            "samples_to_asymptote": float(curve.samples_to_asymptote),
            "samples_to_asymptote_reached": float(curve.reached),
            "log2_samples_to_asymptote": float(np.log2(curve.samples_to_asymptote)),
            # The first size of every grid is 2K: two samples per class.
            "test/err_2_per_class": 100 * curve.errors[0],
            "test/err_last": 100 * curve.errors[-1],
            "bayes_error": 100 * curve.bayes_error,
            "fit/not_converged_fraction": curve.not_converged / max(curve.fits, 1),
        }

    def _scaling(self, context: RunContext, protocol: DictConfig) -> dict[str, float]:
        template = self._simulation_data(context)
        dims = [int(d) for d in protocol.dims]
        metrics: dict[str, float] = {}
        samples, reached = [], []
        for dim in dims:
            curve = self._curve(context, template.with_num_features(dim), protocol)
            samples.append(curve.samples_to_asymptote)
            reached.append(curve.reached)
            metrics[f"samples_to_asymptote/n={dim}"] = float(curve.samples_to_asymptote)
        fits = fit_scaling(dims, samples)
        metrics.update({f"scaling/{name}": value for name, value in fits.items()})
        metrics["scaling/ratio"] = float(samples[-1] / samples[0])  # m(last n) / m(first n) of protocol.dims
        metrics["samples_to_asymptote_reached"] = float(all(reached))
        context.curves = {"samples_to_asymptote": list(map(float, samples)), "dims": list(map(float, dims))}
        return metrics

    # ---- frozen features -------------------------------------------------------------------------------
    def _linear_eval(self, context: RunContext, protocol: DictConfig) -> dict[str, float]:
        input_size = protocol.get("input_size")
        precision = str(protocol.get("feature_precision", "32-true"))
        features = extract_features(context, input_size=input_size, precision=precision)
        context.extra["pretrained_weights"] = features.pretrained
        minmax = bool(protocol.get("minmax", True))
        full = self._full_data_error(context, features, minmax, input_size, precision)
        per_class = protocol.get("samples_per_class")
        num_pool = len(features.train_y)
        size = (
            num_pool if per_class is None else min(int(per_class) * context.datamodule.num_classes, num_pool)
        )
        if size == num_pool:  # the whole training set: one deterministic fit
            errors, not_converged = [full], 0
        else:
            errors, not_converged = [], 0
            present = np.unique(features.train_y)
            for repeat in range(int(protocol.repeats)):
                rng = np.random.default_rng([int(context.cfg.seed), size, repeat])
                index = _subset_with_every_class(features.train_y, size, present, rng)
                error, failed = self._fit_score(features, index, minmax)
                errors.append(error)
                not_converged += failed
        mean = float(np.mean(errors))
        return {
            "test/err": mean,
            "test/err_std_over_repeats": float(np.std(errors)),
            "test/err_full": full,
            "test/err_gap_to_full": mean - full,
            "train_size": float(size),
            "feature_dim": float(features.num_features),
            "fit/not_converged_fraction": not_converged / len(errors),
        }

    def _fit_score(self, features: Any, index: np.ndarray, minmax: bool) -> tuple[float, bool]:
        """Test error (%) of the classifier fit on the training examples `index`; whether it hit max_iter."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            estimator = self.make_estimator(minmax).fit(features.train_x[index], features.train_y[index])
        failed = any(issubclass(w.category, ConvergenceWarning) for w in caught)
        return 100 * float(np.mean(estimator.predict(features.test_x) != features.test_y)), failed

    def _full_data_error(
        self,
        context: RunContext,
        features: Any,
        minmax: bool,
        input_size: int | None,
        precision: str,
    ) -> float:
        """Test error (%) of the classifier fit on the whole training split: the stage `full_data_error`,
        shared by every cell of the frozen-features table."""
        config = {
            "classifier": self.classifier,
            "params": self.params,
            "minmax": minmax,
            "features": feature_stage_config(context, input_size, precision),
        }

        def compute() -> float:
            return self._fit_score(features, np.arange(len(features.train_y)), minmax)[0]

        return float(_stage(context, FULL_DATA_STAGE, config, compute))


@register_method("disc_vs_gen_nb")
class NaiveBayesPipeline(LinearClassifierPipeline):
    """Generative: Gaussian naive Bayes with a shared diagonal variance (`var_epsilon` added per class)."""

    classifier = NAIVE_BAYES


@register_method("disc_vs_gen_lr")
class LogisticRegressionPipeline(LinearClassifierPipeline):
    """Discriminative: multinomial logistic regression (L-BFGS, `C`, `max_iter`)."""

    classifier = LOGISTIC_REGRESSION


def _stage(context: RunContext, name: str, config: dict[str, Any], compute: Callable[[], Any]) -> Any:
    """`compute()` as the run's stage `name`, or directly when the run has no stages."""
    return compute() if context.stages is None else context.stages.compute(name, config, compute)


def _subset_with_every_class(
    labels: np.ndarray, size: int, classes: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A uniformly random subset of `size` positions that contains every class of `classes` (redrawn
    otherwise, as the official code does)."""
    if size < len(classes):
        raise UserError(f"a training subset of {size} examples cannot contain all {len(classes)} classes")
    for _ in range(10_000):
        index = rng.choice(len(labels), size=size, replace=False)
        if len(np.unique(labels[index])) == len(classes):
            return index
    raise RuntimeError(f"no random subset of {size} examples contained every class in 10000 draws")
