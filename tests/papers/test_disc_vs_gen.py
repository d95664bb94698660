"""disc_vs_gen: shared-variance naive Bayes against its closed form and the official algorithm, the
simulation's Bayes error against Phi(-Delta/2) and Monte Carlo, the protocols, and runs through the
harness."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy.stats import norm
from sklearn.naive_bayes import GaussianNB

from common.experiment import build_datamodule, build_module, build_trainer
from common.lit import RunContext
from common.run import execute
from papers.disc_vs_gen import (
    GaussianSimulationDataModule,
    NaiveBayesPipeline,
    SharedVarianceGaussianNB,
    fit_scaling,
    learning_curve,
    make_classifier,
    official_gaussian_classes,
)
from papers.disc_vs_gen.simulation import training_sizes
from tests.conftest import compose

# ---- naive Bayes with a shared variance ------------------------------------------------------------------

# Class 0: (0, 1), (2, 3) -> mean (1, 2), variance (1, 1). Class 1: (3, 0), (5, 0), (4, 0) -> mean (4, 0),
# variance (2/3, 0). Priors 2/5, 3/5 -> pooled variance (2/5 + 2/5, 2/5) = (0.8, 0.4).
HAND_X = np.array([[0.0, 1.0], [2.0, 3.0], [3.0, 0.0], [5.0, 0.0], [4.0, 0.0]])
HAND_Y = np.array([0, 0, 1, 1, 1])


def test_shared_variance_nb_matches_hand_computed_parameters():
    model = SharedVarianceGaussianNB(var_epsilon=0.0).fit(HAND_X, HAND_Y)
    np.testing.assert_allclose(model.theta_, [[1.0, 2.0], [4.0, 0.0]])
    np.testing.assert_allclose(model.class_prior_, [0.4, 0.6])
    np.testing.assert_allclose(model.shared_var_, [0.8, 0.4])
    np.testing.assert_allclose(model.var_, [[0.8, 0.4], [0.8, 0.4]])
    # Linear rule: w_k = mu_k / s, b_k = log pi_k - 0.5 sum mu_k^2 / s.
    np.testing.assert_allclose(model.coef_, [[1.25, 5.0], [5.0, 0.0]])
    np.testing.assert_allclose(
        model.intercept_, [math.log(0.4) - 0.5 * (1 / 0.8 + 4 / 0.4), math.log(0.6) - 10.0]
    )
    point = np.array([[2.5, 1.0]])  # scores: 0.4 -> log .4 - 5.625 + 8.125; 1 -> log .6 - 10 + 12.5
    np.testing.assert_allclose(
        model.decision_function(point), [[math.log(0.4) + 2.5, math.log(0.6) + 2.5]], rtol=1e-12
    )
    assert model.predict(point)[0] == 1  # equal linear terms, the larger prior wins


def test_shared_variance_nb_equals_the_official_algorithm_and_sklearn_likelihood():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)) * [1, 2, 3, 0.5, 1, 4] + rng.integers(0, 4, (300, 1))
    y = rng.integers(0, 4, 300)
    test = rng.normal(size=(200, 6)) * 3
    model = SharedVarianceGaussianNB().fit(x, y)
    # The official models/gaussnb.py: per-class np.var (ddof 0) + 1e-9, weighted by the class frequencies,
    # prediction argmax_k log prior_k - 0.5 sum_j (x_j - mu_kj)^2 / s_j.
    classes, counts = np.unique(y, return_counts=True)
    prior = counts / counts.sum()
    means = np.stack([x[y == k].mean(0) for k in classes])
    pooled = np.sum(np.stack([x[y == k].var(0) + 1e-9 for k in classes]) * prior[:, None], axis=0)
    scores = np.log(prior) - 0.5 * (((test[:, None, :] - means[None]) ** 2) / pooled).sum(-1)
    np.testing.assert_allclose(model.shared_var_, pooled, rtol=1e-12)
    np.testing.assert_array_equal(model.predict(test), scores.argmax(1))
    # GaussianNB's own joint log-likelihood with the pooled variance differs from the linear scores by a
    # term that does not depend on the class.
    offset = model.predict_joint_log_proba(test) - model.decision_function(test)
    np.testing.assert_allclose(offset, offset[:, :1].repeat(4, axis=1), atol=1e-9)


def test_shared_variance_nb_differs_from_per_class_variance_nb():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, (200, 2)), rng.normal(1.5, 3, (200, 2))])
    y = np.repeat([0, 1], 200)
    shared, per_class = SharedVarianceGaussianNB().fit(x, y), GaussianNB().fit(x, y)
    grid = np.stack(np.meshgrid(np.linspace(-8, 8, 41), np.linspace(-8, 8, 41)), -1).reshape(-1, 2)
    assert (shared.predict(grid) != per_class.predict(grid)).mean() > 0.05  # quadratic vs linear boundary


def test_make_classifier_uses_the_official_logistic_regression():
    lr = make_classifier("logistic_regression")
    assert (lr.C, lr.solver, lr.max_iter) == (1.0, "lbfgs", 1000)
    with pytest.raises(ValueError, match="unknown classifier"):
        make_classifier("svm")


# ---- the simulation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_features", [2, 5, 10, 100])
def test_binary_bayes_error_is_phi_of_half_the_mahalanobis_distance(num_features: int):
    dist = official_gaussian_classes(num_features, 2)
    # Means -1 and +1 per feature; variance n on n // 2 features, 1 on the rest.
    delta = math.sqrt(4 * (num_features // 2) / num_features + 4 * (num_features - num_features // 2))
    assert dist.bayes_error() == pytest.approx(norm.cdf(-delta / 2), rel=1e-9, abs=1e-300)


def test_multiclass_distribution_is_the_official_standardised_one():
    dist = official_gaussian_classes(4, 3)  # centres -1, 1, 2 -> (c - 1) / 1; K = 3 divides by 2^0
    np.testing.assert_allclose(dist.centers, [-2.0, 0.0, 1.0])
    np.testing.assert_allclose(dist.variances, [4.0, 4.0, 1.0, 1.0])
    dist5 = official_gaussian_classes(4, 5)  # centres -1, 1, 2, 4, 8 -> (c - 4) / 4, variances / 16
    np.testing.assert_allclose(dist5.centers, [-1.25, -0.75, -0.5, 0.0, 1.0])
    np.testing.assert_allclose(dist5.variances, [0.25, 0.25, 1 / 16, 1 / 16])


@pytest.mark.parametrize(("num_features", "num_classes"), [(2, 2), (4, 3), (6, 5)])
def test_bayes_error_matches_monte_carlo_error_of_the_bayes_rule(num_features: int, num_classes: int):
    dist = official_gaussian_classes(num_features, num_classes)
    x, y = dist.sample(200_000, np.random.default_rng(0))
    empirical = np.mean(dist.bayes_predict(x) != y)
    analytic = dist.bayes_error()
    assert 0.01 < analytic < 0.6
    assert abs(empirical - analytic) < 4 * math.sqrt(analytic * (1 - analytic) / len(y))
    # The Bayes rule is naive Bayes with the true parameters (the covariance is diagonal and shared).
    log_lik = -0.5 * (((x[:2000, None, :] - dist.means[None]) ** 2) / dist.variances).sum(-1)
    np.testing.assert_array_equal(dist.bayes_predict(x[:2000]), log_lik.argmax(1))


def test_training_size_grids():
    official = list(training_sizes("official", num_classes=2, num_features=100, max_samples=10_000))
    assert official == list(range(4, 10_000, 5))  # main_simulation.py: range(2K, 100n, ceil(log n))
    geometric = list(training_sizes("geometric", num_classes=3, num_features=100, max_samples=100))
    assert geometric[:4] == [6, 7, 8, 10] and geometric[-1] <= 100 and np.all(np.diff(geometric) > 0)


def test_fit_scaling_recovers_exponent_and_slopes():
    dims = [100, 200, 400, 1000]
    assert fit_scaling(dims, [3 * d**0.5 for d in dims])["exponent"] == pytest.approx(0.5)
    assert fit_scaling(dims, [2 + 5 * math.log(d) for d in dims])["per_log_dim"] == pytest.approx(5.0)
    assert fit_scaling(dims, [7 + 1.5 * d for d in dims])["per_dim"] == pytest.approx(1.5)


class _RecordingNB(SharedVarianceGaussianNB):
    """Naive Bayes that remembers the training sets it was fit on."""

    seen: list[np.ndarray] = []

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: None = None) -> _RecordingNB:
        _RecordingNB.seen.append(X.copy())
        return super().fit(X, y)


class _ConstantClassifier:
    """Predicts class 0 (never reaches the asymptote); remembers its training sets."""

    seen: list[np.ndarray] = []

    def fit(self, X: np.ndarray, y: np.ndarray) -> _ConstantClassifier:
        _ConstantClassifier.seen.append(X.copy())
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.zeros(len(X), dtype=np.int64)


def test_learning_curve_stops_at_the_asymptote_and_pairs_training_sets():
    data = GaussianSimulationDataModule(num_features=10, num_classes=2, num_test=4000, seed=3)
    settings = {"grid": "geometric", "repeats": 2, "tolerance": 0.01, "max_samples_per_feature": 20}
    _RecordingNB.seen, _ConstantClassifier.seen = [], []
    curve = learning_curve(data, _RecordingNB, seed=3, **settings)
    assert curve.reached and curve.errors[-1] < curve.bayes_error + 0.01
    assert all(e >= curve.bayes_error + 0.01 for e in curve.errors[:-1])
    assert curve.sizes[0] == 4 and curve.fits == 2 * len(curve.sizes) == len(_RecordingNB.seen)
    again = learning_curve(data, lambda: make_classifier("naive_bayes"), seed=3, **settings)
    assert again.errors == curve.errors  # every draw is seeded
    # A classifier that never gets there runs to the end of the grid (m <= 20 n), on the same training sets.
    never = learning_curve(data, _ConstantClassifier, seed=3, **settings)
    assert not never.reached and never.sizes[-1] <= 200 and never.errors[-1] == pytest.approx(0.5, abs=0.05)
    assert all(
        np.array_equal(a, b) for a, b in zip(_RecordingNB.seen, _ConstantClassifier.seen, strict=False)
    )


# ---- through the harness ----------------------------------------------------------------------------------

COMMON = ["logger=none", "runtime.progress=false"]


def _stage_results(output_root: Path, name: str) -> dict[Path, float]:
    """The stored results of stage `name` (one folder per key), with their modification times."""
    results = (output_root / "stages" / "disc_vs_gen" / name).glob("*/result.pt")
    return {path: path.stat().st_mtime_ns for path in results}


def _stored(path: Path):
    return torch.load(path, weights_only=True)["value"]


def test_simulation_runs_share_learning_curves_with_the_scaling_table(output_root: Path):
    root = f"runtime.output_root={output_root}"
    dims = "protocol.dims=[6,10]"
    data = ["data.num_test=2000", root, *COMMON]
    base = ["method=disc_vs_gen_nb", "cell.row=NB", *data]
    experiment = "experiment=disc_vs_gen/simulation"
    records = [
        execute(compose([experiment, f"data.num_features={n}", f"cell.column='n={n}'", *base]))
        for n in (6, 10)
    ]
    for record in records:
        assert record.complete, record.reason
        assert record.metrics["samples_to_asymptote"] == record.curves["train_size"][-1]
        assert record.metrics["test/err_2_per_class"] == record.curves["test/err"][0]
    curves = _stage_results(output_root, "learning_curve")
    assert len(curves) == 2  # one stage per dimension
    scaling = execute(
        compose(["experiment=disc_vs_gen/simulation_scaling", dims, "cell.column='K=2'", *base])
    )
    assert scaling.complete, scaling.reason
    assert _stage_results(output_root, "learning_curve") == curves  # reused, not recomputed
    for n, record in zip((6, 10), records, strict=True):
        assert scaling.metrics[f"samples_to_asymptote/n={n}"] == record.metrics["samples_to_asymptote"]
    ratio = scaling.metrics["samples_to_asymptote/n=10"] / scaling.metrics["samples_to_asymptote/n=6"]
    assert scaling.metrics["scaling/ratio"] == pytest.approx(ratio)
    stored = _stored(next(iter(curves)))
    assert set(stored) >= {"sizes", "errors", "bayes_error", "reached"}
    # Another classifier is another curve.
    lr_cell = ["method=disc_vs_gen_lr", "cell.row=LR", "data.num_features=6", "cell.column='n=6'"]
    lr = execute(compose([experiment, *lr_cell, *data]))
    assert lr.complete, lr.reason
    assert len(_stage_results(output_root, "learning_curve")) == 3


def test_frozen_features_run_on_digits(output_root: Path):
    root = f"runtime.output_root={output_root}"
    base = ["experiment=disc_vs_gen/frozen_features", "protocol.repeats=2", root, *COMMON]
    few = execute(compose([*base, "method=disc_vs_gen_lr", "protocol.samples_per_class=5", "cell.row=LR",
                           "cell.column=5/class"]))  # fmt: skip
    assert few.complete, few.reason
    assert few.metrics["train_size"] == 50 and few.metrics["feature_dim"] == 64
    assert few.metrics["test/err_gap_to_full"] == pytest.approx(
        few.metrics["test/err"] - few.metrics["test/err_full"]
    )
    full = execute(compose([*base, "method=disc_vs_gen_lr", "protocol.samples_per_class=null", "cell.row=LR",
                            "cell.column=all"]))  # fmt: skip
    assert full.complete, full.reason
    assert full.metrics["test/err"] == full.metrics["test/err_full"] == few.metrics["test/err_full"]
    assert full.metrics["test/err"] < 5  # LR on all digits pixels: ~2.8% error
    # One feature extraction and one full-data fit, shared by both cells.
    [features] = _stage_results(output_root, "frozen_features")
    [full_fit] = _stage_results(output_root, "full_data_error")
    assert tuple(_stored(features)["train_x"].shape) == (1257, 64)
    assert _stored(full_fit) == full.metrics["test/err_full"]
    nb = execute(compose([*base, "method=disc_vs_gen_nb", "protocol.samples_per_class=null", "cell.row=NB",
                          "cell.column=all"]))  # fmt: skip
    assert nb.complete, nb.reason
    assert len(_stage_results(output_root, "frozen_features")) == 1  # the features do not depend on it
    assert len(_stage_results(output_root, "full_data_error")) == 2  # the full-data fit does


def test_without_stages_the_frozen_features_protocol_computes_directly(output_root: Path):
    cfg = compose(["experiment=disc_vs_gen/frozen_features", "protocol.repeats=2", "method=disc_vs_gen_nb",
                   "protocol.samples_per_class=5", "cell.row=NB", "cell.column=5/class",
                   f"runtime.output_root={output_root}", *COMMON])  # fmt: skip
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    context = RunContext(
        cfg=cfg,
        datamodule=datamodule,
        make_module=lambda method=None: build_module(cfg, datamodule, method),
        make_trainer=lambda **kw: build_trainer(cfg, output_root, checkpoint=False, **kw),
    )
    params = {k: v for k, v in OmegaConf.to_container(cfg.method).items() if k != "name"}
    direct = NaiveBayesPipeline(**params).run(context)
    assert not (output_root / "stages").exists()
    staged = execute(cfg)
    assert staged.complete, staged.reason
    assert direct == staged.metrics
