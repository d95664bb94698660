"""Confident learning through the harness: a tiny run's record, the shared cross-validation cache, the
class weights of the retrain."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import common.run
from common.experiment import build_datamodule, build_module, build_trainer
from common.lit import RunContext
from common.lit.cross_val import cross_val_cache_key, cross_val_predict_proba
from common.run import execute
from papers.confident_learning import (
    ClassWeightedCEModule,
    ConfidentLearningPipeline,
    class_weights_from_noise_matrix,
    estimate_noise_matrices,
)
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
    return RunContext(
        cfg=cfg,
        datamodule=datamodule,
        make_module=lambda method=None: build_module(cfg, datamodule, method),
        make_trainer=lambda **kw: build_trainer(cfg, tmp_path, checkpoint=False, **kw),
    )


def _cached_probs(output_root: Path) -> np.ndarray:
    files = list((output_root / "cache").glob("cross_val_proba_*.npy"))
    assert len(files) == 1, files
    return np.load(files[0])


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

    monkeypatch.setattr(common.run, "build_trainer", no_trainer)
    again = _run(output_root, "predicted_neq_given", "method.retrain=false")
    assert again.complete, again.reason
    assert DETECT_METRICS <= set(again.metrics) and "test/acc" not in again.metrics
    assert again.metrics["detect/num_flagged"] != record.metrics["detect/num_flagged"]


def test_retrain_does_not_depend_on_whether_the_cache_was_warm(output_root: Path, tmp_path: Path):
    cold = _run(output_root, "both")
    warm_root = tmp_path / "warm"
    _run(warm_root, "confident_learning", "method.retrain=false")  # fills the cache
    warm = _run(warm_root, "both")
    assert np.array_equal(_cached_probs(output_root), _cached_probs(warm_root))
    assert warm.metrics == cold.metrics and warm.curves == cold.curves


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


def test_cross_val_is_cached_by_data_and_training_config(tmp_path: Path):
    cfg = compose([*TINY, "trainer.max_epochs=1"])
    context = _context(cfg, tmp_path)
    before = torch.get_rng_state()
    probs = cross_val_predict_proba(context, n_folds=3, seed=0, cache_dir=tmp_path / "cache")
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random state is untouched
    assert probs.shape == (context.datamodule.num_train, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)

    def no_trainer(**kwargs):
        raise AssertionError("recomputed")

    cached = RunContext(cfg, context.datamodule, context.make_module, no_trainer)
    again = cross_val_predict_proba(cached, n_folds=3, seed=0, cache_dir=tmp_path / "cache")
    assert np.array_equal(probs, again)
    assert not list((tmp_path / "cache").glob(".*"))  # no temporary files left behind

    key = cross_val_cache_key(context, n_folds=3, seed=0)
    assert key != cross_val_cache_key(context, n_folds=4, seed=0)
    assert key != cross_val_cache_key(context, n_folds=3, seed=1)
    other_lr = _context(compose([*TINY, "trainer.max_epochs=1", "optim.optimizer.lr=0.01"]), tmp_path)
    assert key != cross_val_cache_key(other_lr, n_folds=3, seed=0)
    # Both tables of the paper train the same way, so they share the probabilities.
    detection = compose(
        [*TINY, "trainer.max_epochs=1", "experiment=confident_learning/label_error_detection"]
    )
    assert key == cross_val_cache_key(_context(detection, tmp_path), n_folds=3, seed=0)
    shutil.rmtree(tmp_path / "cache")
