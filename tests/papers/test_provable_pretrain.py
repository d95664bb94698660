"""provable_pretrain: exact risks of the two latent-variable models against hand-computed values and Monte
Carlo, the representations against scikit-learn, the downstream ERMs on hand cases, runs through the
harness, and the MLE fit as a cached stage (shared by cells, reused on a rerun with the same numbers)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.decomposition import FactorAnalysis

from common.lit import Stages
from common.run import execute
from papers.provable_pretrain import (
    FactorModel,
    MixtureModel,
    factor_posterior_map,
    least_squares_on,
    majority_label_map,
    make_factor_model,
    make_mixture_model,
    population_label_map,
)
from papers.provable_pretrain.pipeline import (
    MLE_STAGE,
    fit_mixture_mle,
    mixture_from_parameters,
    mixture_parameters,
)
from tests.conftest import compose

# ---- factor model --------------------------------------------------------------------------------------

# d = r = 1: x = 2 z + e (Var e = 1), y = z. Sigma = 5, w* = 2/5, Bayes risk = 1 - 4/5 = 0.2; the zero
# predictor has risk E[y^2] = 1, excess 0.8 = (0 - 0.4)^2 * 5.
HAND = FactorModel(np.array([[2.0]]), np.array([1.0]), np.array([0.0]), np.array([1.0]), 0.0)


def test_factor_model_hand_computed_risks():
    np.testing.assert_allclose(HAND.bayes_coef(), [0.4])
    assert HAND.bayes_risk() == pytest.approx(0.2)
    assert HAND.excess_risk(np.array([0.0]), 0.0) == pytest.approx(0.8)
    assert HAND.excess_risk(np.array([0.4]), 0.0) == pytest.approx(0.0)
    assert HAND.excess_risk(np.array([0.4]), 0.5) == pytest.approx(0.25)  # a constant offset adds its square


def test_factor_model_excess_risk_matches_monte_carlo():
    rng = np.random.default_rng(0)
    model = make_factor_model(6, 2, strength=3.0, label_noise=0.3, noise_range=(0.5, 1.5), rng=rng)
    weight, bias = rng.standard_normal(6) * 0.3, 0.2
    x, y = model.sample(400_000, rng)
    empirical = np.mean((y - x @ weight - bias) ** 2) - np.mean(
        (y - (x - model.mean) @ model.bayes_coef()) ** 2
    )
    assert model.excess_risk(weight, bias) == pytest.approx(empirical, rel=0.02)
    bayes = np.mean((y - (x - model.mean) @ model.bayes_coef()) ** 2)
    assert model.bayes_risk() == pytest.approx(bayes, rel=0.01)


def test_factor_posterior_map_equals_sklearn_transform():
    rng = np.random.default_rng(1)
    model = make_factor_model(20, 3, strength=5.0, label_noise=0.5, noise_range=(0.5, 1.5), rng=rng)
    x, _ = model.sample(500, rng)
    fitted = FactorAnalysis(n_components=3, random_state=0).fit(x)
    matrix, center = factor_posterior_map(fitted)
    np.testing.assert_allclose((x - center) @ matrix.T, fitted.transform(x), atol=1e-10)


def test_true_representation_is_informative_up_to_rotation():
    """Population ERM on E[z | x], or on any invertible transform of it, reaches the Bayes risk."""
    rng = np.random.default_rng(2)
    model = make_factor_model(15, 3, strength=4.0, label_noise=0.5, noise_range=(0.5, 1.5), rng=rng)
    matrix, center = model.posterior_mean_map()
    rotation = np.linalg.qr(rng.standard_normal((3, 3)))[0] * [1.0, 2.0, 0.5]
    for transformed in (matrix, rotation @ matrix):
        weight, bias = model.best_linear_on(transformed, center)
        assert model.excess_risk(weight, bias) == pytest.approx(0.0, abs=1e-12)
    weight, bias = model.best_linear_on(matrix[:2], center)  # a lost factor costs risk
    assert model.excess_risk(weight, bias) > 1e-3


def test_least_squares_on_features_recovers_noiseless_predictor():
    rng = np.random.default_rng(3)
    matrix, center = rng.standard_normal((2, 5)), rng.standard_normal(5)
    x = rng.standard_normal((30, 5))
    features = (x - center) @ matrix.T
    y = features @ np.array([1.5, -2.0]) + 0.7
    weight, bias = least_squares_on(features, y, matrix, center)
    np.testing.assert_allclose(x @ weight + bias, y, atol=1e-10)


# ---- Gaussian mixture ----------------------------------------------------------------------------------


def test_mixture_label_probs_and_excess_risk_hand_case():
    # K = 2 in d = 1, means -1 and +1, label noise 0.2: at x = 0 both components are equally likely, so
    # P(y | 0) = (0.5, 0.5) and either prediction is Bayes-optimal; at x = 1 P(z = 1 | x) = 1 / (1 + e^-2).
    model = MixtureModel(np.array([[-1.0], [1.0]]), 0.2)
    np.testing.assert_allclose(model.label_probs(np.array([[0.0]])), [[0.5, 0.5]])
    p = 1 / (1 + np.exp(-2.0))
    np.testing.assert_allclose(model.label_probs(np.array([[1.0]]))[0, 1], 0.8 * p + 0.2 * (1 - p))
    x = np.array([[0.0], [1.0]])
    # Predicting 0 at x = 1 costs P(y=1|x) - P(y=0|x) = 0.6 (2p - 1); averaged over the two points.
    assert model.excess_risk(x, np.array([0, 0])) == pytest.approx(0.5 * 0.6 * (2 * p - 1))
    assert model.excess_risk(x, np.array([1, 1])) == pytest.approx(0.0)


def test_mixture_sampling_matches_label_probs():
    rng = np.random.default_rng(4)
    model = make_mixture_model(5, 3, separation=2.0, label_noise=0.1, rng=rng)
    means = model.means
    np.testing.assert_allclose(np.linalg.norm(means[0] - means[1]), 2.0)
    x, y = model.sample(200_000, rng)
    bayes_error = np.mean(model.label_probs(x).argmax(1) != y)
    assert model.bayes_risk(x) == pytest.approx(bayes_error, abs=0.005)


def test_majority_label_map_hand_case():
    clusters = np.array([0, 0, 0, 1, 1, 2])
    labels = np.array([2, 2, 1, 0, 1, 2])
    # Cluster 0: label 2 (2 votes); cluster 1: tie 0/1 -> 0; cluster 2: label 2; cluster 3 empty -> the most
    # frequent label overall (2).
    np.testing.assert_array_equal(majority_label_map(clusters, labels, 4), [2, 0, 2, 2])


def test_population_label_map_follows_the_true_probabilities():
    clusters = np.array([0, 0, 1])
    probs = np.array([[0.2, 0.8], [0.4, 0.6], [0.9, 0.1]])
    np.testing.assert_array_equal(population_label_map(clusters, probs), [1, 0])


def test_stored_mixture_predicts_exactly_like_the_fit():
    """The stage stores the fitted mixture's arrays (loadable with weights_only); the mixture rebuilt from
    them assigns every point to the same cluster as the fit itself."""
    rng = np.random.default_rng(5)
    model = make_mixture_model(6, 3, separation=2.0, label_noise=0.1, rng=rng)
    fitted = fit_mixture_mle(model.sample(400, rng)[0], 3, seed=0, max_iter=100, n_init=1)
    buffer = io.BytesIO()
    torch.save(mixture_parameters(fitted), buffer)
    buffer.seek(0)
    rebuilt = mixture_from_parameters(torch.load(buffer, weights_only=True))
    query = model.sample(2000, rng)[0]
    np.testing.assert_array_equal(rebuilt.predict(query), fitted.predict(query))
    np.testing.assert_array_equal(rebuilt.predict_proba(query), fitted.predict_proba(query))


# ---- runs through the harness --------------------------------------------------------------------------

TINY = ["protocol.repeats=1", "protocol.labeled_repeats=2", "runtime.progress=false", "logger=none"]


@pytest.mark.parametrize(
    ("experiment", "method", "extra"),
    [
        ("factor_unlabeled", "provable_pretrain_mle_erm", ["protocol.num_unlabeled=300"]),
        ("factor_labeled", "provable_pretrain_supervised", ["protocol.num_labeled=20"]),
        # mixture_unlabeled with MLE+ERM: test_mle_fit_is_a_stage_shared_by_cells_and_reused_on_rerun
        (
            "mixture_labeled",
            "provable_pretrain_oracle_erm",
            ["protocol.num_labeled=4", "data.num_eval=2000"],  # 4 labels for 4 clusters: some map wrong
        ),
        (
            "mixture_labeled",
            "provable_pretrain_supervised",
            ["protocol.num_labeled=20", "data.num_eval=2000"],
        ),
    ],
)
def test_runs_complete(experiment: str, method: str, extra: list[str], output_root: Path):
    cfg = compose([f"experiment=provable_pretrain/{experiment}", f"method={method}", *TINY, *extra,
                   f"runtime.output_root={output_root}"])  # fmt: skip
    record = execute(cfg)
    assert record.complete, record.reason
    # One MLE fit per unlabeled draw (repeats=1), a stage; the other methods have no shared work.
    fits = [MLE_STAGE] if method == "provable_pretrain_mle_erm" else []
    assert record.extra["stages_computed"] == fits and record.extra["stages_reused"] == []
    assert record.metrics["excess_risk"] > 0
    assert record.metrics["excess_risk_log10"] == pytest.approx(np.log10(record.metrics["excess_risk"]))
    # The ratio claim's metric: the scaled excess risk, halved in the supervised-only runs.
    scaled = (1e3 if "factor" in experiment else 100) * record.metrics["excess_risk"]
    factor = 0.5 if method == "provable_pretrain_supervised" else 1.0
    assert record.metrics["excess_risk_half_if_supervised"] == pytest.approx(factor * scaled)


def test_mle_fit_is_a_stage_shared_by_cells_and_reused_on_rerun(output_root: Path, monkeypatch):
    """The stage's config is what decides the fit (data setting with its seed, m, draw, fit settings), not n
    or the evaluation points: a cell with another n and num_eval reuses it, another seed computes its own,
    and a forced rerun reads it back and gives the same metrics bit for bit."""
    configs = []
    compute = Stages.compute

    def spy(self, name, config, fn, *, seed=None):
        configs.append((name, config, seed))
        return compute(self, name, config, fn, seed=seed)

    monkeypatch.setattr(Stages, "compute", spy)

    def run(*extra: str):
        table = ["experiment=provable_pretrain/mixture_unlabeled", "method=provable_pretrain_mle_erm"]
        cfg = compose(
            [*table, "protocol.num_unlabeled=300", *TINY, f"runtime.output_root={output_root}", *extra]
        )
        record = execute(cfg)
        assert record.complete, record.reason
        return cfg, record

    cfg, first = run("protocol.num_labeled=null", "data.num_eval=2000")
    assert (first.extra["stages_computed"], first.extra["stages_reused"]) == ([MLE_STAGE], [])
    assert first.metrics["excess_risk"] > 0
    assert first.metrics["excess_risk_half_if_supervised"] == pytest.approx(
        100 * first.metrics["excess_risk"]
    )
    data = cfg.data
    assert configs == [
        (
            MLE_STAGE,
            {
                "data": {
                    "kind": "mixture",
                    "source": "gaussian",
                    "seed": cfg.seed,
                    "dim": data.dim,
                    "num_components": data.num_components,
                    "separation": data.separation,
                    "label_noise": data.label_noise,
                },
                "num_unlabeled": 300,
                "repeat": 0,
                "fit": {
                    "max_iter": cfg.method.gmm_max_iter,
                    "n_init": cfg.method.n_init,
                    "random_state": cfg.seed * 1000,
                },
            },
            cfg.seed * 1000,
        )
    ]
    _, other_cell = run("protocol.num_labeled=20", "data.num_eval=1000")
    assert (other_cell.extra["stages_computed"], other_cell.extra["stages_reused"]) == ([], [MLE_STAGE])
    _, other_seed = run("protocol.num_labeled=null", "data.num_eval=2000", "seed=1")
    assert other_seed.extra["stages_computed"] == [MLE_STAGE]
    assert other_seed.metrics["excess_risk"] != first.metrics["excess_risk"]
    _, rerun = run("protocol.num_labeled=null", "data.num_eval=2000", "runtime.force=true")
    assert (rerun.extra["stages_computed"], rerun.extra["stages_reused"]) == ([], [MLE_STAGE])
    assert rerun.metrics == first.metrics


def test_pretraining_beats_supervised_with_few_labels(output_root: Path):
    """The paper's claim on one seed: with m >> n, MLE + ERM has a lower excess risk than supervised only."""
    risks = {}
    for method, extra in (("provable_pretrain_mle_erm", ["protocol.num_unlabeled=2000"]),
                          ("provable_pretrain_supervised", [])):  # fmt: skip
        cfg = compose(["experiment=provable_pretrain/factor_labeled", f"method={method}",
                       "protocol.num_labeled=40", *TINY, *extra,
                       f"runtime.output_root={output_root}"])  # fmt: skip
        risks[method] = execute(cfg).metrics["excess_risk"]
    assert risks["provable_pretrain_mle_erm"] < 0.5 * risks["provable_pretrain_supervised"]


def test_random_source_has_no_signal(output_root: Path):
    cfg = compose(["experiment=provable_pretrain/mixture_labeled", "method=provable_pretrain_supervised",
                   "data.source=random", "protocol.num_labeled=20", "data.num_eval=500", *TINY,
                   f"runtime.output_root={output_root}"])  # fmt: skip
    record = execute(cfg)
    assert record.complete, record.reason
    assert record.metrics["excess_risk"] == 0.0 and record.metrics["excess_risk_log10"] == -12.0
