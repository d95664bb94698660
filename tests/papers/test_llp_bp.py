"""llp_bp: loopy BP against exact enumeration (a tree, a loopy graph, hand-computed cases; bag cliques alone
and joined by kNN edges, under several dampings: issue 15), the Gibbs expansion against the direct energy, the
kNN graph, the LLP losses (hand values, EasyLLP's unbiasedness), the bagged data, a run as a stage (computed
once, reused, keyed by what decides it), and runs through the harness (mini and paper shapes)."""

from __future__ import annotations

import functools
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from common.experiment import build_datamodule, build_trainer
from common.lit import RunContext
from common.lit.stages import Stages
from common.run import execute
from papers.llp_bp import (
    ClassifierFit,
    DLLPPipeline,
    LLPTabularDataModule,
    SimilarityGraph,
    bag_pairs,
    brute_force_marginals,
    dllp_loss,
    easyllp_loss,
    gibbs_log_score,
    knn_similarity_graph,
    llp_bp_mrf,
    log_score,
    loopy_bp,
    loopy_bp_marginals,
)
from papers.llp_bp.bp import as_mrf
from tests.conftest import compose

# ---- loopy BP ----------------------------------------------------------------------------------------------


def _random_tree(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    edges = np.array([[int(rng.integers(0, i)), i] for i in range(1, n)])
    return rng.normal(0, 1.5, n), edges, rng.normal(0, 3.0, n - 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bp_is_exact_on_a_tree(seed: int):
    unary, edges, weights = _random_tree(11, seed)
    mrf = as_mrf(unary, edges, weights)
    exact = brute_force_marginals(mrf).numpy()
    bp64 = loopy_bp_marginals(mrf, num_iters=150, damping=0.5, dtype=torch.float64).numpy()
    np.testing.assert_allclose(bp64, exact, atol=1e-10)
    bp32 = loopy_bp_marginals(mrf, num_iters=150, damping=0.5).numpy()
    np.testing.assert_allclose(bp32, exact, atol=1e-5)
    # undamped flooding BP is exact after diameter-many iterations
    undamped = loopy_bp_marginals(mrf, num_iters=len(unary), damping=0.0, dtype=torch.float64).numpy()
    np.testing.assert_allclose(undamped, exact, atol=1e-12)


def test_bp_single_edge_matches_hand_computation():
    h1, h2, w = 0.3, -1.1, 2.0
    mrf = as_mrf([h1, h2], [[0, 1]], [w])
    z = 1 + math.exp(h1) + math.exp(h2) + math.exp(h1 + h2 + w)
    expected = [(math.exp(h1) + math.exp(h1 + h2 + w)) / z, (math.exp(h2) + math.exp(h1 + h2 + w)) / z]
    got = loopy_bp_marginals(mrf, num_iters=60, dtype=torch.float64).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_bp_without_couplings_is_the_unary_sigmoid():
    unary = np.array([-2.0, 0.0, 0.5, 3.0])
    mrf = as_mrf(unary, [[0, 1], [1, 2], [2, 3], [3, 0]], np.zeros(4))
    got = loopy_bp_marginals(mrf, num_iters=60, dtype=torch.float64).numpy()
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-unary)), atol=1e-12)


def test_bp_is_close_to_exact_on_a_weakly_coupled_loopy_graph():
    rng = np.random.default_rng(3)
    n = 9
    cycle = [[i, (i + 1) % n] for i in range(n)]
    chords = [[0, 4], [2, 7], [3, 8]]
    edges = np.array(cycle + chords)
    mrf = as_mrf(rng.normal(0, 1, n), edges, rng.normal(0, 0.5, len(edges)))
    exact = brute_force_marginals(mrf).numpy()
    bp = loopy_bp_marginals(mrf, num_iters=200, dtype=torch.float64).numpy()
    assert np.abs(bp - exact).max() < 0.02
    # and BP has converged: one more iteration changes nothing
    more = loopy_bp_marginals(mrf, num_iters=201, dtype=torch.float64).numpy()
    np.testing.assert_allclose(bp, more, atol=1e-9)


def _lone_bag(size: int, count: int, bag_lambda: float = 10.0):
    """One bag and no kNN edge: the LLP-BP potentials of a bag clique alone."""
    empty = SimilarityGraph(edges=np.zeros((0, 2), dtype=int), similarities=np.zeros(0))
    return llp_bp_mrf(size, empty, np.zeros(size, dtype=int), np.array([count]), bag_lambda=bag_lambda)


def test_bp_oscillates_on_a_strongly_coupled_bag_as_flooding_bp_does():
    """A lone bag of 8 with count 2 under the official lambdas: exact marginals are about 2/8, damped
    flooding BP with the official damping 0.5 (network.py; PGMax's default) alternates between two states
    (why the official defaults give poor pseudo-labels); its last iteration still moves messages by > 1."""
    mrf = _lone_bag(8, 2)
    np.testing.assert_allclose(brute_force_marginals(mrf).numpy(), 0.25, atol=1e-4)
    even = loopy_bp_marginals(mrf, num_iters=100).numpy()
    odd = loopy_bp_marginals(mrf, num_iters=101).numpy()
    assert even.max() < 0.01 and odd.min() > 0.99
    official = loopy_bp(mrf, num_iters=100, damping=0.5)
    assert official.iterations == 100 and official.final_delta > 1.0 and not official.converged
    # undamped flooding BP oscillates as well
    assert loopy_bp(mrf, num_iters=400, damping=0.0, tol=1e-6, dtype=torch.float64).final_delta > 1.0


@pytest.mark.parametrize("size, count", [(8, 2), (12, 3)])
def test_stronger_damping_makes_bp_converge_on_a_lone_bag_but_not_to_the_exact_marginals(
    size: int, count: int
):
    """Issue 15. The symmetric flooding update of a bag clique of size k has slope about -(k - 2) at its fixed
    point, so damping d is stable iff d - (1 - d)(k - 2) > -1, i.e. d > (k - 3) / (k - 1) (0.714 at k = 8,
    0.818 at k = 12): just below it BP still oscillates, just above it BP converges. But it converges to the
    one symmetric fixed point, the Bethe approximation, whose marginals are about 0.5 (exact: count / k =
    0.25), the same for every damping: no damping makes pairwise loopy BP match this bag's marginals."""
    mrf = _lone_bag(size, count)
    exact = brute_force_marginals(mrf).numpy()
    np.testing.assert_allclose(exact, count / size, atol=1e-3)
    threshold = (size - 3) / (size - 1)
    below = loopy_bp(mrf, num_iters=3000, damping=threshold - 0.02, tol=1e-8, dtype=torch.float64)
    assert not below.converged and below.final_delta > 0.1
    fixed_points = []
    for damping in (threshold + 0.02, 0.9, 0.95):
        result = loopy_bp(mrf, num_iters=3000, damping=damping, tol=1e-8, dtype=torch.float64)
        assert result.converged, (damping, result.final_delta)
        fixed_points.append(result.marginals.numpy())
    for marginals in fixed_points[1:]:
        np.testing.assert_allclose(marginals, fixed_points[0], atol=1e-6)
    np.testing.assert_allclose(fixed_points[0], 0.5, atol=0.01)
    assert np.abs(fixed_points[0] - exact).min() > 0.2


def test_bp_is_accurate_on_a_lone_bag_only_when_the_bag_term_is_weak():
    """Same bag (8, count 2): with bag_lambda = 0.1 the official BP (damping 0.5) converges to the exact
    marginals; with bag_lambda = 1 it converges within 0.05 of them; with the official 10 it oscillates."""
    for bag_lambda, tolerance in ((0.1, 1e-3), (1.0, 0.05)):
        mrf = _lone_bag(8, 2, bag_lambda)
        result = loopy_bp(mrf, num_iters=100, damping=0.5, tol=1e-6, dtype=torch.float64)
        assert result.converged and result.iterations < 100
        np.testing.assert_allclose(
            result.marginals.numpy(), brute_force_marginals(mrf).numpy(), atol=tolerance
        )
    assert not loopy_bp(_lone_bag(8, 2), num_iters=100, damping=0.5, tol=1e-6).converged


def _two_bags_with_weak_knn_edges(seed: int):
    """Two bags of 8 (counts 2 and 3) joined by 12 random weak kNN edges (similarity 0.03-0.15, the range of
    the mini data's nearest neighbours), official lambdas."""
    rng = np.random.default_rng(seed)
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < 12:
        i, j = sorted(rng.choice(16, 2, replace=False))
        pairs.add((int(i), int(j)))
    edges = np.array(sorted(pairs))
    graph = SimilarityGraph(edges=edges, similarities=rng.uniform(0.03, 0.15, len(edges)))
    return llp_bp_mrf(16, graph, np.repeat([0, 1], 8), np.array([2, 3]))


def test_weak_knn_edges_between_bags_keep_damped_bp_from_converging():
    """With weak kNN edges between two bags the official damping 0.5 and damping 0.9 (stable on each bag
    alone) both keep oscillating; damping 0.99 settles only after thousands of iterations, and then it is more
    than 0.3 away from the exact marginals (brute force over the 2^16 labelings). The instances of seeds 0-7
    all behaved so when this test was written; it keeps seed 1."""
    mrf = _two_bags_with_weak_knn_edges(1)
    exact = brute_force_marginals(mrf).numpy()
    for damping in (0.5, 0.9):
        result = loopy_bp(mrf, num_iters=2000, damping=damping, tol=1e-6, dtype=torch.float64)
        assert not result.converged and result.final_delta > 0.1, (damping, result.final_delta)
    heavy = loopy_bp(mrf, num_iters=20000, damping=0.99, tol=1e-6, dtype=torch.float64)
    assert heavy.converged and heavy.iterations > 1000
    assert np.abs(heavy.marginals.numpy() - exact).max() > 0.3


# ---- the Gibbs distribution --------------------------------------------------------------------------------


def test_expanded_potentials_equal_the_direct_energy_up_to_a_constant():
    rng = np.random.default_rng(0)
    n = 10
    bag_of = np.array([0, 0, 0, 0, 1, 1, 1, 1, -1, -1])  # two bags of 4, two examples out of every bag
    counts = np.array([1, 3])
    # kNN-like edges, two of them inside a bag (their potentials add to the bag pair's)
    edges = np.array([[0, 1], [1, 5], [2, 8], [3, 9], [4, 6], [7, 8], [5, 9]])
    graph = SimilarityGraph(edges=edges, similarities=rng.uniform(0.05, 1.0, len(edges)))
    mrf = llp_bp_mrf(n, graph, bag_of, counts, sim_lambda=2.5, bag_lambda=1.5)
    labelings = np.array(list(itertools.product((0, 1), repeat=n)))
    expanded = log_score(mrf, torch.as_tensor(labelings)).numpy()
    direct = gibbs_log_score(labelings, graph, bag_of, counts, sim_lambda=2.5, bag_lambda=1.5)
    np.testing.assert_allclose(expanded - direct, 1.5 * (counts**2).sum(), atol=1e-9)
    # the merged edge list has one entry per pair: 7 kNN + 2 * 6 bag pairs - 2 shared
    assert len(mrf.edges) == 7 + 12 - 2
    assert len(np.unique(mrf.edges.numpy(), axis=0)) == len(mrf.edges)


def test_bag_pairs_are_all_within_bag_pairs():
    bag_of = np.array([2, 0, 1, 0, 2, 1, 0, -1, 1, 2, 0, 1])
    pairs = bag_pairs(bag_of)
    expected = {
        (i, j) for i in range(12) for j in range(i + 1, 12) if bag_of[i] >= 0 and bag_of[i] == bag_of[j]
    }
    assert {tuple(p) for p in pairs.tolist()} == expected and len(pairs) == len(expected)


def test_knn_graph_edges_and_matern_similarities():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 5))
    graph = knn_similarity_graph(x, n_neighbors=4, neigh_thresh=2.0)
    assert (graph.edges[:, 0] < graph.edges[:, 1]).all()
    assert len(np.unique(graph.edges, axis=0)) == len(graph.edges)
    distances, neighbours = NearestNeighbors(n_neighbors=5, metric="cosine").fit(x).kneighbors(x)
    expected = {tuple(sorted((i, int(j)))) for i in range(60) for j in neighbours[i] if j != i}
    assert {tuple(e) for e in graph.edges.tolist()} == expected
    i, j = graph.edges[:, 0], graph.edges[:, 1]
    np.testing.assert_allclose(graph.similarities, np.exp(-np.linalg.norm(x[i] - x[j], axis=1)))
    # a distance threshold drops far neighbours; a bag-count filter drops edges sent from high-count bags
    tight = knn_similarity_graph(x, n_neighbors=4, neigh_thresh=0.3)
    assert len(tight.edges) < len(graph.edges)
    counts = np.where(np.arange(60) < 30, 0, 2)
    filtered = knn_similarity_graph(x, n_neighbors=4, bag_counts=counts, max_bag_count=1)
    senders = {i for i in range(30) for j in neighbours[i] if j != i}
    assert all(a in senders or b in senders for a, b in filtered.edges.tolist())


# ---- losses ------------------------------------------------------------------------------------------------


def test_dllp_loss_hand_value():
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(1 / 3), 0.0]])  # probabilities (.5,.75), (.25,.5)
    proportions = torch.tensor([0.5, 0.0])
    expected = (-(0.5 * math.log(0.625) + 0.5 * math.log(0.375)) - math.log(1 - 0.375)) / 2
    assert dllp_loss(logits, proportions).item() == pytest.approx(expected, rel=1e-6)


def test_easyllp_reduces_to_bce_for_bags_of_one_and_is_unbiased():
    logits = torch.tensor([0.3, -1.2, 2.0])
    labels = torch.tensor([1.0, 0.0, 1.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    assert easyllp_loss(logits, labels, 1, 0.4).item() == pytest.approx(bce.item(), rel=1e-6)
    # E over the other k-1 iid Bernoulli(p) members of the bag: weights average to the instance's label
    k, p, logit = 4, 0.3, torch.tensor([0.7])
    for label in (0, 1):
        expected_loss = 0.0
        for others in itertools.product((0, 1), repeat=k - 1):
            prob = math.prod(p if o else 1 - p for o in others)
            alpha = torch.tensor([(label + sum(others)) / k])
            expected_loss += prob * easyllp_loss(logit, alpha, k, p).item()
        target = torch.nn.functional.binary_cross_entropy_with_logits(logit, torch.tensor([float(label)]))
        assert expected_loss == pytest.approx(target.item(), rel=1e-6)


# ---- data --------------------------------------------------------------------------------------------------


def test_bagged_data_counts_match_hidden_labels():
    data = LLPTabularDataModule(
        "synthetic", bag_size=16, seed=0, synthetic={"n_samples": 1000, "n_features": 6, "weights": [0.7]}
    )
    data.setup()
    assert [len(data.split(s)[1]) for s in ("train", "valid", "test")] == [810, 90, 100]
    x, y, bag_of, counts = data.bagged()
    assert len(y) == 810 // 16 * 16 and np.bincount(bag_of).tolist() == [16] * (810 // 16)
    np.testing.assert_array_equal(np.bincount(bag_of, weights=y).astype(int), counts)
    np.testing.assert_allclose(data.split("train")[0].mean(0), 0.0, atol=1e-5)


# ---- runs through the harness ------------------------------------------------------------------------------


def _mini(method: str, root: Path, bag_size: int = 8) -> list[str]:
    return [
        "experiment=llp_bp/tabular",
        f"method={method}",
        f"data.bag_size={bag_size}",
        "data.synthetic.n_samples=600",
        "trainer.max_epochs=3",
        "runtime.progress=false",
        "logger=none",
        f"runtime.output_root={root}",
    ]


def _dllp_run(stages: Stages | None, root: Path, *overrides: str) -> tuple[dict[str, float], dict]:
    cfg = compose([*_mini("llp_bp_dllp", root, bag_size=32), *overrides])
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    make_trainer = functools.partial(build_trainer, cfg, None, checkpoint=False)
    if stages is not None:
        stages.make_trainer = make_trainer

    def no_module(*args, **kwargs):
        raise AssertionError("the LLP methods build their own classifier module")

    context = RunContext(cfg, datamodule, no_module, make_trainer, stages=stages)
    return DLLPPipeline().run(context), context.curves


def test_a_run_is_a_stage_computed_once_and_keyed_by_what_decides_it(tmp_path: Path):
    stages = Stages(root=tmp_path / "stages", code_hash="test")
    before = torch.get_rng_state()
    first = _dllp_run(stages, tmp_path)
    assert torch.equal(torch.get_rng_state(), before)  # seeded inside the stage, the caller's state untouched
    assert stages.computed == ["classifier", "llp_bp_dllp"] and len(first[1]["dllp/valid_auc"]) >= 1
    # The pseudo-label table's run of the same method and setting is the stored stage, curves included.
    assert _dllp_run(stages, tmp_path, "experiment=llp_bp/pseudo_labels") == first
    assert stages.computed == ["classifier", "llp_bp_dllp"]
    # The seed, the data and the optimiser each decide the result: another value is another stage.
    for override in ("seed=1", "data.bag_size=8", "optim.optimizer.lr=0.01"):
        _dllp_run(stages, tmp_path, override)
    assert stages.computed == ["classifier", "llp_bp_dllp"] * 4
    assert len(list((tmp_path / "stages" / "llp_bp_dllp").glob("*/result.pt"))) == 4
    assert len(list((tmp_path / "stages" / "classifier").glob("*/result.pt"))) == 4
    # Without stages (outside the runner) the run is computed directly, to the same values.
    assert _dllp_run(None, tmp_path) == first


@pytest.mark.parametrize("kill", ["in_epoch_1", "after_the_last_epoch"])
def test_a_killed_classifier_fit_resumes_to_the_uninterrupted_result(kill: str, tmp_path: Path, monkeypatch):
    """A run killed inside its classifier stage (after epoch 1's checkpoint, or after the last epoch's, when
    early stopping has ended the fit but its result is not stored) resumes the stage from its checkpoint and
    ends with the uninterrupted run's metrics and curves, bit for bit."""
    overrides = [
        *_mini("llp_bp_dllp", tmp_path, bag_size=8),
        "trainer.max_epochs=8",
        "early_stopping.patience=1",
    ]
    whole = execute(compose([*overrides, f"runtime.output_root={tmp_path / 'whole'}"]))
    assert whole.complete, whole.reason
    assert whole.metrics["train/epochs"] < 8  # early stopping ended the fit
    end_of_epoch, end_of_fit = ClassifierFit.on_train_epoch_end, ClassifierFit.on_train_end

    def killed_in_epoch_1(self):
        end_of_epoch(self)
        if self.current_epoch == 1:
            raise RuntimeError("killed")

    def killed_at_the_end(self):
        raise RuntimeError("killed")

    if kill == "in_epoch_1":
        monkeypatch.setattr(ClassifierFit, "on_train_epoch_end", killed_in_epoch_1)
    else:
        monkeypatch.setattr(ClassifierFit, "on_train_end", killed_at_the_end)
    root = tmp_path / "killed"
    killed = execute(compose([*overrides, f"runtime.output_root={root}"]))
    assert not killed.complete
    assert list((root / "stages" / "llp_bp" / "classifier").glob("*/checkpoints/last.ckpt"))
    monkeypatch.setattr(ClassifierFit, "on_train_epoch_end", end_of_epoch)
    monkeypatch.setattr(ClassifierFit, "on_train_end", end_of_fit)
    resumed = execute(compose([*overrides, f"runtime.output_root={root}"]))
    assert resumed.complete, resumed.reason
    assert resumed.extra["stages_computed"] == ["classifier", "llp_bp_dllp"]
    assert resumed.metrics == whole.metrics and resumed.curves == whole.curves


def test_llp_bp_run_stores_its_first_round_as_the_ablation_and_it_equals_a_fresh_ablation(tmp_path: Path):
    full = execute(compose(_mini("llp_bp", tmp_path / "a")))
    assert full.complete, full.reason
    expected_keys = {"test/auc", "pseudo/auc", "round0/test/auc", "round1/pseudo/auc", "prior/auc"}
    expected_keys |= {"bp/final_delta", "bp/converged", "round0/bp/final_delta"}
    assert expected_keys <= set(full.metrics)
    stored = tmp_path / "a" / "stages" / "llp_bp" / "llp_bp"
    assert len(list(stored.glob("*/result.pt"))) == 2  # the two-round run and its first round
    reused = execute(compose(_mini("llp_bp_no_refine", tmp_path / "a")))
    assert len(list(stored.glob("*/result.pt"))) == 2  # the ablation read the first round, computed nothing
    fresh = execute(compose(_mini("llp_bp_no_refine", tmp_path / "b")))
    assert reused.complete and fresh.complete
    assert reused.metrics == fresh.metrics and reused.curves == fresh.curves
    assert fresh.metrics["test/auc"] == full.metrics["round0/test/auc"]
    (fresh_stage,) = (tmp_path / "b" / "stages" / "llp_bp" / "llp_bp").glob("*/result.pt")
    assert fresh_stage.parent.name in {path.parent.name for path in stored.glob("*/result.pt")}  # same key
    assert torch.load(fresh_stage, weights_only=True)["value"]["metrics"] == fresh.metrics
    # Each round's classifier is a stage of its own (the ablation's is round 0's): with the runs' stages
    # gone, a rerun recomputes BP and reads both trained classifiers back, to the same record bit for bit.
    classifiers = tmp_path / "a" / "stages" / "llp_bp" / "classifier"
    assert len(list(classifiers.glob("*/result.pt"))) == 2
    for path in stored.glob("*/result.pt"):
        path.unlink()
    again = execute(compose([*_mini("llp_bp", tmp_path / "a"), "runtime.force=true"]))
    assert again.extra["stages_reused"] == ["classifier", "classifier"]
    assert again.metrics == full.metrics and again.curves == full.curves


@pytest.mark.parametrize("method", ["llp_bp_dllp", "llp_bp_easyllp", "llp_bp_bag_prior", "llp_bp_oracle"])
def test_baselines_run(method: str, tmp_path: Path):
    record = execute(compose(_mini(method, tmp_path, bag_size=32)))
    assert record.complete, record.reason
    assert 0.0 <= record.metrics["test/auc"] <= 100.0


@pytest.mark.parametrize("table", ["tabular", "tabular_adult"])
def test_paper_scale_one_step_on_random_data_of_the_paper_shapes(table: str, tmp_path: Path):
    cfg = compose(
        [
            f"experiment=llp_bp/{table}",
            "scale=paper",
            "method=llp_bp",
            "data.source=random",
            "data.bag_size=8",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=1",
            "trainer.accelerator=cpu",
            "runtime.checkpoint=false",
            "runtime.progress=false",
            "logger=none",
            f"runtime.output_root={tmp_path}",
        ]
    )
    assert list(cfg.model.hidden_dims) == [5040, 1280, 320, 128, 64]
    assert cfg.data.batch_size == 1024 and cfg.trainer.max_epochs == 1
    record = execute(cfg)
    assert record.complete, record.reason
    assert record.metrics["round1/train/epochs"] == 1.0


def test_validation_selection_returns_the_best_validation_candidate(tmp_path: Path):
    record = execute(compose([*_mini("llp_bp_val_select", tmp_path), "method.bag_lambda_grid=[10.0,0.5]"]))
    assert record.complete, record.reason
    by_value = {
        value: execute(compose([*_mini("llp_bp", tmp_path), f"method.bag_lambda={value}"]))
        for value in (10.0, 0.5)
    }
    best = max(by_value, key=lambda v: by_value[v].metrics["valid/auc"])
    assert record.metrics["select/bag_lambda"] == best
    assert record.metrics["test/auc"] == by_value[best].metrics["test/auc"]
    assert record.metrics["select/valid_auc_bag_lambda_0.5"] == by_value[0.5].metrics["valid/auc"]
