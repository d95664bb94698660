"""The paper's two-phase algorithm and the supervised-only baseline as harness methods.

- `provable_pretrain_mle_erm` (Algorithm 1 of the paper): MLE of the latent-variable model on m unlabeled
  samples (factor model: `sklearn.decomposition.FactorAnalysis`; Gaussian mixture:
  `sklearn.mixture.GaussianMixture`, EM), then ERM of the downstream predictor on the learned
  representation with n labelled samples: least squares on the posterior mean E[z | x] (factor model), or
  the label map cluster -> label with the fewest training errors, i.e. a majority vote per estimated
  cluster (mixture; exact ERM over all maps from the K clusters to the K labels).
- `provable_pretrain_oracle_erm`: the same ERM on the true representation (m -> infinity).
- `provable_pretrain_supervised`: ERM on raw x with the labelled samples only: ridge regression (alpha by
  leave-one-out over `ridge_alphas`; plain least squares interpolates when n < d) or multinomial logistic
  regression (`logistic_C`).

The table's `protocol` sets m (`num_unlabeled`), n (`num_labeled`; null: the population-optimal downstream
predictor on the learned representation, i.e. ERM with n -> infinity, which isolates the pretraining term),
`repeats` (unlabeled draws and MLE fits per run) and `labeled_repeats` (labelled draws per fit). A run's
`excess_risk` is the mean over all of them, computed exactly from the true model (models.py).

Each MLE fit is the cached stage `mle_pretraining` (`context.stages.compute`, common/lit/stages.py), one per
unlabeled draw: its config (`MLEThenERM.mle_config`) is the data setting, m, the draw and the fit settings,
not n or the evaluation points, so the cells and tables that need the same fit (n = inf and finite n; the
m = 8000 fits of both tables of a model) compute it once, in any process, and a rerun or requeued run reads
it from disk. The stored value is the fitted parameters (factor model: the posterior-mean map (M, c);
mixture: the GaussianMixture's arrays), from which the predictions are bit for bit the fit's own. The
downstream ERMs, the supervised-only fits and the risks take milliseconds per draw and stay in the run.
Without the run's stages (outside the runner) the fits are computed directly. A config smoke test
(`trainer.limit_train_batches` set) runs one repeat with m <= 512 and at most 2000 evaluation points, so
paper-scale shapes stay cheap.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from sklearn.decomposition import FactorAnalysis
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from common.errors import UserError
from common.lit import Pipeline, RunContext, Stages
from common.registry import register_method
from papers.provable_pretrain.models import FactorModel, MixtureModel
from papers.provable_pretrain.simulation import FactorDataModule, MixtureDataModule

#: Floor of `excess_risk_log10` (an excess risk of exactly 0, e.g. on the random smoke-test source).
LOG_FLOOR = 1e-12
_SMOKE_MAX_UNLABELED, _SMOKE_MAX_EVAL = 512, 2000
#: The stage of one MLE fit on one unlabeled draw.
MLE_STAGE = "mle_pretraining"
#: The fitted mixture's parameters (sklearn's `GaussianMixture._get_parameters`), all `predict` needs.
_MIXTURE_PARAMETERS = ("weights", "means", "covariances", "precisions_cholesky")

# Random streams of a seed (LatentVariableDataModule.rng): 0 model, 1 unlabeled, 2 labelled, 3/4 evaluation.
_UNLABELED, _LABELED = 1, 2


# ---- representations -----------------------------------------------------------------------------------
def factor_posterior_map(fitted: FactorAnalysis) -> tuple[np.ndarray, np.ndarray]:
    """(M, c) with FactorAnalysis.transform(x) = (x - c) M^T: the posterior mean of z under the fitted model,
    M = (I + W Psi^-1 W^T)^-1 W Psi^-1 with W = components_ and Psi = diag(noise_variance_)."""
    weights = fitted.components_
    scaled = weights / fitted.noise_variance_
    precision = np.eye(weights.shape[0]) + scaled @ weights.T
    return np.linalg.solve(precision, scaled), fitted.mean_


def fit_factor_mle(x: np.ndarray, rank: int, seed: int, max_iter: int, tol: float) -> tuple[np.ndarray, ...]:
    """MLE of the factor model with r = `rank` factors on unlabeled x: its posterior-mean map (M, c)."""
    fitted = FactorAnalysis(n_components=rank, max_iter=max_iter, tol=tol, random_state=seed).fit(x)
    return factor_posterior_map(fitted)


def fit_mixture_mle(
    x: np.ndarray, num_components: int, seed: int, max_iter: int, n_init: int
) -> GaussianMixture:
    """EM for a K-component mixture with one variance per component (the truth has identity covariances)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GaussianMixture(
            num_components, covariance_type="spherical", max_iter=max_iter, n_init=n_init, random_state=seed
        ).fit(x)


def mixture_parameters(fitted: GaussianMixture) -> dict[str, torch.Tensor]:
    """The fitted mixture as tensors (a stage's value)."""
    return {name: torch.from_numpy(getattr(fitted, f"{name}_")) for name in _MIXTURE_PARAMETERS}


def mixture_from_parameters(parameters: dict[str, torch.Tensor]) -> GaussianMixture:
    """The fitted mixture back from `mixture_parameters`: the same arrays, so `predict` gives what the fit
    itself predicts, bit for bit."""
    fitted = GaussianMixture(len(parameters["weights"]), covariance_type="spherical")
    for name in _MIXTURE_PARAMETERS:
        setattr(fitted, f"{name}_", parameters[name].numpy())
    fitted.n_features_in_ = fitted.means_.shape[1]
    return fitted


def least_squares_on(
    features: np.ndarray, y: np.ndarray, matrix: np.ndarray, center: np.ndarray
) -> tuple[np.ndarray, float]:
    """ERM with the squared loss over linear functions of f = matrix (x - center), with intercept; returned
    in x-space as (weight, bias)."""
    design = np.hstack([features, np.ones((len(features), 1))])
    solution = np.linalg.lstsq(design, y, rcond=None)[0]
    weight = matrix.T @ solution[:-1]
    return weight, float(solution[-1] - weight @ center)


def majority_label_map(clusters: np.ndarray, labels: np.ndarray, num_components: int) -> np.ndarray:
    """ERM with the 0-1 loss over all maps cluster -> label: the most frequent label of each cluster (ties
    to the smaller label); a cluster with no labelled point gets the most frequent label overall."""
    counts = np.zeros((num_components, num_components))
    np.add.at(counts, (clusters, labels), 1.0)
    return _label_map_from_counts(counts)


def population_label_map(clusters: np.ndarray, label_probs: np.ndarray) -> np.ndarray:
    """The risk-minimising map cluster -> label under the true P(y | x) (ERM with n -> infinity)."""
    k = label_probs.shape[1]
    counts = np.zeros((k, k))
    np.add.at(counts, clusters, label_probs)
    return _label_map_from_counts(counts)


def _label_map_from_counts(counts: np.ndarray) -> np.ndarray:
    fallback = int(np.argmax(counts.sum(axis=0)))
    mapping = np.argmax(counts, axis=1)
    mapping[counts.sum(axis=1) == 0] = fallback
    return mapping


# ---- the methods ---------------------------------------------------------------------------------------
class _SimulationPipeline(Pipeline):
    """Reads the protocol, loops over the repeats and reports the mean excess risk."""

    uses_unlabeled = True
    #: Factor of `excess_risk_half_if_supervised` (1/2 in the supervised-only runs): the catalog's claim
    #: "MLE+ERM < 0.5 x supervised-only" is its paired difference supervised - MLE+ERM > 0.
    ratio_claim_factor = 1.0

    def __init__(self, **params: Any) -> None:
        self.params = params

    def run(self, context: RunContext) -> dict[str, float]:
        protocol = OmegaConf.select(context.cfg, "protocol", default=None)
        if protocol is None:
            raise UserError(
                f"{type(self).__name__} needs the table's `protocol` (num_unlabeled, num_labeled)"
            )
        datamodule = context.datamodule
        if not isinstance(datamodule, FactorDataModule | MixtureDataModule):
            raise UserError("provable_pretrain methods need data=provable_pretrain_factor or _mixture")
        smoke = OmegaConf.select(context.cfg, "trainer.limit_train_batches", default=None) is not None
        settings = _Settings.from_protocol(protocol, smoke, self.uses_unlabeled)
        if isinstance(datamodule, MixtureDataModule):
            if smoke:
                datamodule.num_eval = min(datamodule.num_eval, _SMOKE_MAX_EVAL)
            datamodule.prepare_evaluation()
        threads = context.cfg.runtime.get("num_threads")
        # Without unlabeled data there is nothing to redraw per repeat: only the labelled draws.
        repeats = settings.repeats if self.uses_unlabeled else 1
        labeled_repeats = settings.labeled_repeats if settings.num_labeled is not None else 1
        with threadpool_limits(limits=int(threads) if threads else None):
            risks = [
                risk
                for repeat in range(repeats)
                for risk in self.excess_risks(context.stages, datamodule, settings, repeat, labeled_repeats)
            ]
        mean = float(np.mean(risks))
        factor = isinstance(datamodule, FactorDataModule)
        bayes = datamodule.model.bayes_risk() if factor else datamodule.model.bayes_risk(datamodule.eval_x)
        # Scaled copies for readable tables (two decimals): squared risk x 10^3, 0-1 risk in percent.
        scaled = {"excess_risk_x1e3": 1e3 * mean} if factor else {"excess_risk_pct": 100 * mean}
        return {
            "excess_risk": mean,
            **scaled,
            "excess_risk_log10": math.log10(max(mean, LOG_FLOOR)),
            "excess_risk_half_if_supervised": self.ratio_claim_factor * next(iter(scaled.values())),
            "excess_risk_std_over_draws": float(np.std(risks)),
            "bayes_risk": bayes,
            "num_unlabeled": float(settings.num_unlabeled or 0),
            "num_labeled": float(settings.num_labeled or 0),
            "draws": float(len(risks)),
        }

    def excess_risks(
        self, stages: Stages | None, datamodule: Any, settings: _Settings, repeat: int, labeled_repeats: int
    ) -> list[float]:  # pragma: no cover - abstract
        """The excess risks of the labelled draws 0 .. labeled_repeats - 1 of unlabeled draw `repeat`."""
        raise NotImplementedError

    def labeled_sample(
        self, datamodule: Any, settings: _Settings, repeat: int, labeled: int
    ) -> tuple[np.ndarray, np.ndarray]:
        if settings.num_labeled is None:
            raise UserError(f"{type(self).__name__} needs a finite protocol.num_labeled")
        rng = datamodule.rng(_LABELED, settings.num_labeled, repeat, labeled)
        return datamodule.model.sample(settings.num_labeled, rng)


class _Settings:
    def __init__(
        self, num_unlabeled: int | None, num_labeled: int | None, repeats: int, labeled_repeats: int
    ) -> None:
        self.num_unlabeled, self.num_labeled = num_unlabeled, num_labeled
        self.repeats, self.labeled_repeats = repeats, labeled_repeats

    @classmethod
    def from_protocol(cls, protocol: Any, smoke: bool, uses_unlabeled: bool) -> _Settings:
        m = protocol.get("num_unlabeled")
        n = protocol.get("num_labeled")
        if uses_unlabeled and m is None:
            raise UserError("protocol.num_unlabeled must be set (the number m of unlabeled samples)")
        if m is not None and int(m) < 2:
            raise UserError(f"protocol.num_unlabeled must be >= 2, got {m}")
        if n is not None and int(n) < 1:
            raise UserError(f"protocol.num_labeled must be >= 1 or null (n -> infinity), got {n}")
        repeats, labeled_repeats = int(protocol.get("repeats", 1)), int(protocol.get("labeled_repeats", 1))
        if smoke:
            repeats, labeled_repeats = 1, 1
            m = None if m is None else min(int(m), _SMOKE_MAX_UNLABELED)
        return cls(None if m is None else int(m), None if n is None else int(n), repeats, labeled_repeats)


@register_method("provable_pretrain_mle_erm")
class MLEThenERM(_SimulationPipeline):
    """MLE pretraining on m unlabeled samples, then ERM on the learned representation (module doc).

    Parameters: `max_iter`, `tol` (FactorAnalysis), `gmm_max_iter`, `n_init` (GaussianMixture)."""

    def representation(self, stages: Stages | None, datamodule: Any, settings: _Settings, repeat: int) -> Any:
        """The learned representation of unlabeled draw `repeat`: (M, c) or the fitted mixture, the stage
        `MLE_STAGE` (computed directly without `stages`)."""
        m = settings.num_unlabeled
        config = self.mle_config(datamodule, m, repeat)
        fit = config["fit"]

        def compute() -> dict[str, torch.Tensor]:
            x = datamodule.model.sample(m, datamodule.rng(_UNLABELED, m, repeat))[0]
            if isinstance(datamodule, FactorDataModule):
                matrix, center = fit_factor_mle(
                    x, datamodule.rank, fit["random_state"], fit["max_iter"], fit["tol"]
                )
                return {"matrix": torch.from_numpy(matrix), "center": torch.from_numpy(center)}
            fitted = fit_mixture_mle(
                x, datamodule.num_components, fit["random_state"], fit["max_iter"], fit["n_init"]
            )
            return mixture_parameters(fitted)

        # Seeded with the fit's own random_state: the draw and the fit use their own generators, so the
        # run's random state is untouched either way.
        stored = (
            compute()
            if stages is None
            else stages.compute(MLE_STAGE, config, compute, seed=fit["random_state"])
        )
        if isinstance(datamodule, FactorDataModule):
            return stored["matrix"].numpy(), stored["center"].numpy()
        return mixture_from_parameters(stored)

    def mle_config(self, datamodule: Any, num_unlabeled: int, repeat: int) -> dict[str, Any]:
        """What decides one MLE fit (the config of its stage): the data setting (true model: kind, source,
        seed, sizes), m, the unlabeled draw `repeat` and the fit's settings with its random_state. Not the
        evaluation points (`num_eval`) or n, so every cell and table that fits the same draw shares it."""
        data = {key: value for key, value in datamodule.params().items() if key != "num_eval"}
        random_state = datamodule.seed * 1000 + repeat
        if isinstance(datamodule, FactorDataModule):
            fit = {
                "max_iter": int(self.params.get("max_iter", 1000)),
                "tol": float(self.params.get("tol", 1e-2)),
            }
        else:
            fit = {
                "max_iter": int(self.params.get("gmm_max_iter", 200)),
                "n_init": int(self.params.get("n_init", 1)),
            }
        return {
            "data": data,
            "num_unlabeled": num_unlabeled,
            "repeat": repeat,
            "fit": {**fit, "random_state": random_state},
        }

    def clusters(self, representation: Any, x: np.ndarray) -> np.ndarray:
        return representation.predict(x)

    def excess_risks(
        self, stages: Stages | None, datamodule: Any, settings: _Settings, repeat: int, labeled_repeats: int
    ) -> list[float]:
        representation = self.representation(stages, datamodule, settings, repeat)
        model = datamodule.model
        if isinstance(model, FactorModel):
            matrix, center = representation
            if settings.num_labeled is None:
                return [model.excess_risk(*model.best_linear_on(matrix, center))]
            risks = []
            for labeled in range(labeled_repeats):
                x, y = self.labeled_sample(datamodule, settings, repeat, labeled)
                risks.append(model.excess_risk(*least_squares_on((x - center) @ matrix.T, y, matrix, center)))
            return risks
        assert isinstance(model, MixtureModel)
        eval_clusters = self.clusters(representation, datamodule.eval_x)
        if settings.num_labeled is None:
            clusters = self.clusters(representation, datamodule.population_x)
            mappings = [population_label_map(clusters, datamodule.population_probs)]
        else:
            mappings = []
            for labeled in range(labeled_repeats):
                x, y = self.labeled_sample(datamodule, settings, repeat, labeled)
                mappings.append(majority_label_map(self.clusters(representation, x), y, model.num_components))
        return [
            model.excess_risk(datamodule.eval_x, mapping[eval_clusters], datamodule.eval_probs)
            for mapping in mappings
        ]


@register_method("provable_pretrain_oracle_erm")
class OracleRepresentationERM(MLEThenERM):
    """ERM on the true representation (E[z | x] of the true factor model, or the true most likely cluster):
    the downstream term of the bound alone (m -> infinity)."""

    uses_unlabeled = False

    def representation(self, stages: Stages | None, datamodule: Any, settings: _Settings, repeat: int) -> Any:
        model = datamodule.model
        return model.posterior_mean_map() if isinstance(model, FactorModel) else model

    def clusters(self, representation: Any, x: np.ndarray) -> np.ndarray:
        if isinstance(representation, MixtureModel):
            return representation.posterior(x).argmax(axis=1)
        return representation.predict(x)


@register_method("provable_pretrain_supervised")
class SupervisedOnly(_SimulationPipeline):
    """ERM on raw x with the labelled samples only: ridge regression (factor model; alpha chosen by
    leave-one-out among `ridge_alphas`) or multinomial logistic regression (mixture; `logistic_C`)."""

    uses_unlabeled = False
    ratio_claim_factor = 0.5

    def excess_risks(
        self, stages: Stages | None, datamodule: Any, settings: _Settings, repeat: int, labeled_repeats: int
    ) -> list[float]:
        return [self.excess_risk(datamodule, settings, repeat, labeled) for labeled in range(labeled_repeats)]

    def excess_risk(self, datamodule: Any, settings: _Settings, repeat: int, labeled: int) -> float:
        x, y = self.labeled_sample(datamodule, settings, repeat, labeled)
        model = datamodule.model
        if isinstance(model, FactorModel):
            alphas = [float(a) for a in self.params.get("ridge_alphas", np.logspace(-2, 4, 25))]
            fitted = RidgeCV(alphas=alphas).fit(x, y)
            return model.excess_risk(fitted.coef_, float(fitted.intercept_))
        classes = np.unique(y)
        if len(classes) == 1:  # one label seen: the constant classifier is the ERM
            predictions = np.full(len(datamodule.eval_x), classes[0])
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                fitted = LogisticRegression(
                    C=float(self.params.get("logistic_C", 1.0)),
                    max_iter=int(self.params.get("max_iter", 1000)),
                ).fit(x, y)
            predictions = fitted.predict(datamodule.eval_x)
        return model.excess_risk(datamodule.eval_x, predictions, datamodule.eval_probs)
