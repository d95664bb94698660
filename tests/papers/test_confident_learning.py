"""Confident learning through the harness: a tiny run's record, its two stages (the shared cross-validation
and the retrain, reused by a rerun), the class weights of the retrain."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import common.experiment
from common.experiment import build_datamodule, build_module, build_trainer
from common.lit import RunContext
from common.lit.cross_val import STAGE_NAME, cross_val_predict_proba, cross_val_stage_config
from common.lit.stages import Stages
from common.run import execute
from papers.confident_learning import (
    FILTER_METHODS,
    ClassWeightedCEModule,
    ConfidentLearningPipeline,
    class_weights_from_noise_matrix,
    estimate_noise_matrices,
    find_label_issues,
    label_issue_metrics,
)
from papers.confident_learning.pipeline import RETRAIN_STAGE
from tests.conftest import compose

TINY = [
    "experiment=confident_learning/table2",
    "method=confident_learning",
    "data.noise_type=class_conditional",
    "data.noise_rate=0.4",
    "data.noise_sparsity=0.2",
    "trainer.max_epochs=2",
    "runtime.progress=false",
    "logger=none",
    "seed=1",
]
DETECT_METRICS = {"detect/precision", "detect/recall", "detect/f1", "detect/num_flagged"}


def _run(output_root: Path, filter_by: str, *extra: str):
    cell = [f"cell.row={filter_by}", "cell.column=tiny"]
    return execute(
        compose([*TINY, f"method.filter_by={filter_by}", f"runtime.output_root={output_root}", *cell, *extra])
    )


def _context(cfg, tmp_path: Path) -> RunContext:
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    make_trainer = lambda **kw: build_trainer(cfg, tmp_path, checkpoint=False, **kw)  # noqa: E731
    return RunContext(
        cfg=cfg,
        datamodule=datamodule,
        make_module=lambda method=None: build_module(cfg, datamodule, method),
        make_trainer=make_trainer,
        stages=Stages(root=tmp_path / "stages", code_hash="test", make_trainer=make_trainer),
    )


def _cached_probs(output_root: Path) -> np.ndarray:
    files = list((output_root / "stages" / "confident_learning" / STAGE_NAME).glob("*/result.pt"))
    assert len(files) == 1, files
    return torch.load(files[0], weights_only=True)["value"].numpy()


def test_pipeline_writes_a_complete_record_and_caches_the_cross_validation(
    output_root: Path, monkeypatch: pytest.MonkeyPatch
):
    record = _run(output_root, "prune_by_noise_rate")
    assert record.complete, record.reason
    assert set(record.metrics) >= {"test/acc", "test/acc_best", "train/kept_fraction", *DETECT_METRICS}
    assert len(record.curves["val/acc"]) == 2 and record.curves["val/acc"][-1] == record.metrics["test/acc"]
    assert 0 < record.metrics["detect/num_flagged"] < 1257 and 0 < record.metrics["detect/f1"] <= 1
    kept = record.metrics["train/kept_fraction"]
    assert kept == pytest.approx(1 - record.metrics["detect/num_flagged"] / 1257)
    assert record.metrics["noise/actual"] == pytest.approx(0.4, abs=0.05)
    probs = _cached_probs(output_root)
    assert probs.shape == (1257, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)

    # Another rule on the same data reads the cache: no trainer may be built (retrain off).
    def no_trainer(*args, **kwargs):
        raise AssertionError("cross-validation was recomputed instead of read from the cache")

    monkeypatch.setattr(common.experiment, "build_trainer", no_trainer)  # run.py imports it per run
    again = _run(output_root, "predicted_neq_given", "method.retrain=false")
    assert again.complete, again.reason
    assert DETECT_METRICS <= set(again.metrics) and "test/acc" not in again.metrics
    assert again.metrics["detect/num_flagged"] != record.metrics["detect/num_flagged"]


def test_retrain_does_not_depend_on_whether_the_stages_were_stored(
    output_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    cold = _run(output_root, "both")
    assert cold.extra["stages_computed"] == [STAGE_NAME, RETRAIN_STAGE]
    warm_root = tmp_path / "warm"
    _run(warm_root, "confident_learning", "method.retrain=false")  # fills the cache
    warm = _run(warm_root, "both")
    assert warm.extra["stages_reused"] == [STAGE_NAME] and warm.extra["stages_computed"] == [RETRAIN_STAGE]
    assert np.array_equal(_cached_probs(output_root), _cached_probs(warm_root))
    assert warm.metrics == cold.metrics and warm.curves == cold.curves

    # A rerun (a requeued task, a forced rerun) trains nothing: both stages are read back, same record.
    def no_trainer(*args, **kwargs):
        raise AssertionError("a stored stage was trained again")

    monkeypatch.setattr(common.experiment, "build_trainer", no_trainer)  # run.py imports it per run
    rerun = _run(output_root, "both", "runtime.force=true")
    assert rerun.extra["stages_reused"] == [STAGE_NAME, RETRAIN_STAGE] and not rerun.extra["stages_computed"]
    assert rerun.metrics == cold.metrics and rerun.curves == cold.curves


def test_class_weights_are_inverse_noise_diagonal_normalised_to_mean_one(output_root: Path):
    noise = np.array([[0.8, 0.3, 0.0], [0.2, 0.5, 0.0], [0.0, 0.2, 0.0005]])
    inverse_diagonal = 1 / np.array([0.8, 0.5, 1e-3])  # the diagonal is floored at 1e-3
    assert np.allclose(class_weights_from_noise_matrix(noise), inverse_diagonal / inverse_diagonal.mean())
    with pytest.raises(ValueError, match="square"):
        class_weights_from_noise_matrix(np.ones((2, 3)))

    record = _run(output_root, "prune_by_class")
    datamodule = build_datamodule(compose([*TINY, f"runtime.output_root={output_root}"]))
    datamodule.setup("fit")
    noise_matrix, _, _ = estimate_noise_matrices(
        datamodule.train_labels, _cached_probs(output_root), converge_latent_estimates=False
    )
    inverse_diagonal = 1 / np.maximum(noise_matrix.diagonal(), 1e-3)
    weights = np.asarray(record.extra["class_weights"])
    assert np.allclose(weights, inverse_diagonal / inverse_diagonal.mean())
    assert weights.mean() == pytest.approx(1.0) and np.ptp(weights) > 0


def test_weighted_module_loss_and_bad_weights():
    cfg = compose(TINY)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    weights = [0.5 + k / 10 for k in range(10)]
    module = build_module(cfg, datamodule, {"name": "cl_class_weighted_ce", "class_weights": weights})
    assert isinstance(module, ClassWeightedCEModule)
    logits, y = torch.randn(16, 10), torch.randint(0, 10, (16,))
    expected = F.cross_entropy(logits, y, weight=torch.tensor(weights))
    assert torch.allclose(module.compute_loss(logits, {"y": y}), expected)
    with pytest.raises(ValueError, match="10 positive numbers"):
        ClassWeightedCEModule(
            torch.nn.Linear(2, 10), 10, 4, optimizer=torch.optim.SGD, class_weights=[1.0] * 9
        )
    with pytest.raises(ValueError, match="filter_by must be one of"):
        ConfidentLearningPipeline(filter_by="argmax")


def test_cross_val_is_a_stage_keyed_by_data_and_training_config(tmp_path: Path):
    cfg = compose([*TINY, "trainer.max_epochs=1"])
    context = _context(cfg, tmp_path)
    before = torch.get_rng_state()
    probs = cross_val_predict_proba(context, n_folds=3, seed=0)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random state is untouched
    assert probs.shape == (context.datamodule.num_train, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)

    def no_trainer(**kwargs):
        raise AssertionError("recomputed")

    cached = RunContext(cfg, context.datamodule, context.make_module, no_trainer, stages=context.stages)
    again = cross_val_predict_proba(cached, n_folds=3, seed=0)
    assert np.array_equal(probs, again) and context.stages.computed == [STAGE_NAME]
    assert not list((tmp_path / "stages").rglob(".*.tmp"))  # no temporary files left behind

    def key(ctx, n_folds=3, seed=0):
        return ctx.stages.locate(STAGE_NAME, cross_val_stage_config(ctx, n_folds=n_folds, seed=seed)).path

    assert key(context) != key(context, n_folds=4) and key(context) != key(context, seed=1)
    other_lr = _context(compose([*TINY, "trainer.max_epochs=1", "optim.optimizer.lr=0.01"]), tmp_path)
    assert key(context) != key(other_lr)
    # Both tables of the paper train the same way, so they share the probabilities.
    detection = compose(
        [*TINY, "trainer.max_epochs=1", "experiment=confident_learning/label_error_detection"]
    )
    assert key(context) == key(_context(detection, tmp_path))
    shutil.rmtree(tmp_path / "stages")


# 12 examples, 3 classes. x2 (a 1 labelled 0) and x10 (a 0 labelled 2) are confidently wrong; x3 (a 1 labelled
# 0) is wrong but the model is unsure (argmax 1 by a hair); x7 is a correct 1 with argmax 0.
SUBSET_LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
SUBSET_PROBS = np.array(
    [
        [0.90, 0.05, 0.05],
        [0.80, 0.10, 0.10],
        [0.10, 0.85, 0.05],  # x2
        [0.40, 0.45, 0.15],  # x3
        [0.05, 0.90, 0.05],
        [0.10, 0.80, 0.10],
        [0.15, 0.75, 0.10],
        [0.45, 0.40, 0.15],  # x7
        [0.05, 0.05, 0.90],
        [0.10, 0.10, 0.80],
        [0.80, 0.05, 0.15],  # x10
        [0.30, 0.30, 0.40],
    ]
)
SUBSET_TRUTH = np.isin(np.arange(12), [2, 3, 10])


def test_c_confusion_recall_is_at_least_every_rule_by_construction():
    """Formerly the claim `c_confusion_recall_beats_pbnr` (label_error_detection): every rule un-flags the
    examples whose given label is the argmax, so its flags are a subset of C_confusion's (argmax != label) and
    its recall can never exceed C_confusion's, whatever the data."""
    confusion = find_label_issues(SUBSET_LABELS, SUBSET_PROBS, method="predicted_neq_given")
    np.testing.assert_array_equal(np.flatnonzero(confusion), [2, 3, 7, 10])
    # t0 = (0.9 + 0.8 + 0.1 + 0.4) / 4 = 0.55, t1 = (0.9 + 0.8 + 0.75 + 0.4) / 4 = 0.7125: x3 and x7 reach no
    # threshold, so the confident joint counts only x2 at (0, 1) and x10 at (2, 0); PBNR flags just those.
    pbnr = find_label_issues(SUBSET_LABELS, SUBSET_PROBS, method="prune_by_noise_rate")
    np.testing.assert_array_equal(np.flatnonzero(pbnr), [2, 10])
    assert label_issue_metrics(confusion, SUBSET_TRUTH)["recall"] == pytest.approx(1.0)
    assert label_issue_metrics(pbnr, SUBSET_TRUTH)["recall"] == pytest.approx(2 / 3)

    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = np.concatenate([np.arange(4), rng.integers(0, 4, size=56)])
        probs = rng.dirichlet(np.full(4, 0.5), size=60)
        probs[np.arange(60), labels] += rng.uniform(0, 1, size=60)
        probs /= probs.sum(1, keepdims=True)
        truth = rng.random(60) < 0.3
        confusion = find_label_issues(labels, probs, method="predicted_neq_given")
        for method in FILTER_METHODS:
            flagged = find_label_issues(labels, probs, method=method)
            assert not np.any(flagged & ~confusion), method
            recall = label_issue_metrics(flagged, truth)["recall"]
            assert recall <= label_issue_metrics(confusion, truth)["recall"], method
