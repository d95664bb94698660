"""DDFA (lls): the factorise / adjust steps against hand-computed cases, the data protocol, a run as a stage
(computed once, shared by the tables of one training, keyed by its config), and smoke runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from common.experiment import build_datamodule
from common.lit import RunContext
from common.lit.stages import Stages
from common.run import execute
from papers.lls import KMeansPipeline, ddfa, make_subcluster_mixture, official_samples_per_domain
from tests.conftest import compose

TINY = [
    "data.source_kwargs.train_per_class=200",
    "data.source_kwargs.test_per_class=100",
    "data.num_domains=10",
    "data.alpha=0.5",
    "data.max_condition_number=4",
    "trainer.max_epochs=2",
    "runtime.progress=false",
    "logger=none",
]


def test_domain_adjustment_matches_hand_computation():
    # p(y|d) (K=2, D=2); equal domain sizes give p(y) = (0.55, 0.45).
    p_y_given_d = np.array([[0.8, 0.3], [0.2, 0.7]])
    p_d_given_y = ddfa.p_d_given_y(p_y_given_d)
    np.testing.assert_allclose(p_d_given_y, [[0.8 / 1.1, 0.2 / 0.9], [0.3 / 1.1, 0.7 / 0.9]])
    # An x with p(y|x) = (0.5, 0.5) has p(d|x) = sum_y p(d|y) p(y|x); the pseudo-inverse recovers p(y|x).
    p_d_given_x = (p_d_given_y @ np.array([0.5, 0.5]))[None, :]
    p_y_given_x = ddfa.posterior_uniform(p_d_given_x, p_y_given_d)
    np.testing.assert_allclose(p_y_given_x, [[0.5, 0.5]], atol=1e-12)
    # In domain 0: p_0(y|x) prop. to p(y|x) p_0(y) / p(y) = (0.5 * 0.8 / 0.55, 0.5 * 0.2 / 0.45).
    expected = np.array([0.4 / 0.55, 0.1 / 0.45])
    adjusted = ddfa.domain_adjust(p_y_given_x, p_y_given_d, np.array([0]))
    np.testing.assert_allclose(adjusted[0], expected / expected.sum(), atol=1e-12)


def test_factorize_recovers_priors_from_anchor_clusters():
    rng = np.random.default_rng(0)
    # 20 domains with well-spread priors: NMF (random init, 200 iterations, as official) finds the anchors.
    num_classes, num_domains, num_clusters = 3, 20, 9
    p_y_given_d = rng.dirichlet(np.full(num_classes, 0.3), size=num_domains).T  # (K, D)
    # Separable p(cluster|y): clusters 3k..3k+2 belong to class k only (anchor words).
    p_cluster_given_y = np.zeros((num_clusters, num_classes))
    for k in range(num_classes):
        p_cluster_given_y[3 * k : 3 * k + 3, k] = rng.dirichlet(np.ones(3))
    histogram = p_cluster_given_y @ p_y_given_d  # p(cluster|d), columns sum to one
    factors = ddfa.factorize(histogram, num_classes, seed=0)
    np.testing.assert_allclose(factors.p_y_given_d.sum(0), 1.0)
    np.testing.assert_allclose(factors.p_cluster_given_y.sum(0), 1.0)
    # The normalisation keeps the product: p(cluster|y) p(y|d) reconstructs p(cluster|d).
    np.testing.assert_allclose(factors.p_cluster_given_y @ factors.p_y_given_d, histogram, atol=5e-3)
    # Match topics to classes by their anchor clusters, then compare.
    owner = [int(np.argmax(factors.p_cluster_given_y[3 * k : 3 * k + 3].sum(0))) for k in range(num_classes)]
    assert sorted(owner) == list(range(num_classes))
    np.testing.assert_allclose(factors.p_y_given_d[owner], p_y_given_d, atol=0.02)
    np.testing.assert_allclose(factors.p_cluster_given_y[:, owner], p_cluster_given_y, atol=0.02)


def test_evaluate_is_invariant_to_a_relabelling_of_classes():
    targets = np.array([0, 0, 1, 1, 2, 2, 2])
    truth = np.array([[0.5, 0.2, 0.3], [0.1, 0.1, 0.8]])  # (D, K)
    perm = np.array([2, 0, 1])  # predicted class c is true class perm[c]
    inverse = np.argsort(perm)
    estimate = truth.T[perm]  # row c of the estimate is true class perm[c]
    metrics = ddfa.evaluate(inverse[targets], targets, estimate, truth)
    assert metrics["test/acc"] == pytest.approx(100.0)
    assert metrics["test/pyd_l1"] == pytest.approx(0.0)
    # One wrong prediction: 6 of 7; a perturbed estimate: the summed absolute error.
    predicted = inverse[targets].copy()
    predicted[0] = inverse[1]
    noisy = estimate.copy()
    noisy[:, 0] += [0.1, -0.1, 0.0]
    metrics = ddfa.evaluate(predicted, targets, noisy, truth)
    assert metrics["test/acc"] == pytest.approx(600 / 7)
    assert metrics["test/pyd_l1"] == pytest.approx(0.2)
    assert metrics["test/pyd_l1_per_domain"] == pytest.approx(0.1)


def test_full_matching_completes_unpredicted_classes():
    perm = ddfa.full_matching(np.array([1, 1, 1]), np.array([2, 2, 0]), 3)
    assert perm[1] == 2 and sorted(perm) == [0, 1, 2]


def test_official_samples_per_domain_rule():
    labels = np.repeat([0, 1], [100, 60])
    priors = np.array([[0.9, 0.1], [0.5, 0.5]])  # mean over domains: (0.7, 0.3)
    # (min count - D) / (D * max mean prior) = (60 - 2) / (2 * 0.7) = 41.4
    assert official_samples_per_domain(labels, priors) == 41


def test_crossed_layout_puts_blobs_next_to_the_next_class():
    data = make_subcluster_mixture(
        num_classes=3, subclusters=2, layout="crossed", cross_offset=1.5, train_per_class=2000, split_seed=1
    )
    means = {}
    for k in range(3):
        x = data.x_train[data.y_train == k]
        means[k] = KMeans(2, n_init=3, random_state=0).fit(x).cluster_centers_
    # Every class has a blob within ~cross_offset of a blob of another class.
    for k in range(3):
        others = np.concatenate([means[j] for j in range(3) if j != k])
        gaps = np.linalg.norm(means[k][:, None] - others[None], axis=-1)
        assert gaps.min() < 2.0


def test_domains_follow_priors_and_share_them_across_splits():
    cfg = compose(["experiment=lls/shift", *TINY])
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    assert datamodule.priors.shape == (10, 10) and np.linalg.cond(datamodule.priors) <= 4
    for split in datamodule.splits.values():
        counts = np.bincount(split.domains, minlength=10)
        assert len(set(counts)) == 1  # equal-size domains
        empirical = np.zeros((10, 10))
        np.add.at(empirical, (split.domains, split.classes), 1.0)
        np.testing.assert_allclose(
            empirical / counts[:, None], datamodule.priors, atol=1.0 / counts[0] + 1e-9
        )
    batch = next(iter(datamodule.train_dataloader()))
    assert set(batch) == {"x", "y", "y_clean", "index"} and int(batch["y"].max()) < 10


def _kmeans_run(stages: Stages | None, *overrides: str) -> dict[str, float]:
    cfg = compose(["experiment=lls/shift", "method=lls_kmeans", *TINY, *overrides])
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")

    def no_training(*args, **kwargs):
        raise AssertionError("k-means builds no module and no trainer")

    return KMeansPipeline().run(RunContext(cfg, datamodule, no_training, no_training, stages=stages))


def test_a_run_is_a_stage_computed_once_and_keyed_by_what_it_trains(tmp_path: Path):
    stages = Stages(root=tmp_path / "stages", code_hash="test")
    first = _kmeans_run(stages)
    assert stages.computed == ["training"]
    # The p(y|d) table trains the same thing: its run is the stored stage, not a recomputation.
    assert _kmeans_run(stages, "experiment=lls/shift_pyd") == first and stages.computed == ["training"]
    # Another seed or another data setting is another stage.
    _kmeans_run(stages, "seed=1")
    _kmeans_run(stages, "data.alpha=0.3")
    assert stages.computed == ["training"] * 3
    assert len(list((tmp_path / "stages" / "training").glob("*/result.pt"))) == 3
    # Without stages (outside the runner) the run is computed directly, to the same values.
    assert _kmeans_run(None) == first


@pytest.mark.parametrize("method", ["lls_ddfa", "lls_kmeans", "lls_naive"])
def test_run_completes_and_is_a_stage_shared_across_tables(method: str, output_root: Path):
    records = []
    for table in ("shift", "shift_pyd"):
        cfg = compose(
            [f"experiment=lls/{table}", f"method={method}", *TINY, f"runtime.output_root={output_root}"]
        )
        records.append(execute(cfg))
    first, second = records
    assert first.complete and second.complete, (first.reason, second.reason)
    assert 0 <= first.metrics["test/acc"] <= 100 and first.metrics["test/pyd_l1"] >= 0
    # The p(y|d) table reads the accuracy table's stage: one stored training, the same metrics and curves.
    assert first.metrics == second.metrics and first.curves == second.curves
    stored = list((output_root / "stages" / "lls" / "training").glob("*/result.pt"))
    assert len(stored) == 1
    assert torch.load(stored[0], weights_only=True)["value"]["metrics"] == first.metrics
    if method == "lls_ddfa":
        assert len(first.curves["val/domain_loss"]) == 2
        assert first.metrics["disc/best_epoch"] in (0.0, 1.0)
