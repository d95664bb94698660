"""RCAL: the distributional-calibration steps against hand-computed values and
scikit-learn, the individual-calibration loss against autograd of an independent implementation, and a
smoke run of every row through the harness."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.run import execute
from papers.rcal import (
    ClassGaussians,
    IndividualCalibrationModule,
    calibrate_tail,
    class_balanced_weights,
    class_gaussians,
    lof_inliers,
    mixup_cross_entropy,
    representation_distance,
    sample_to_balance,
)
from tests.conftest import compose


def test_lof_drops_a_far_point_and_keeps_small_classes():
    rng = np.random.default_rng(0)
    cluster = rng.normal(0, 0.1, size=(30, 2))
    features = np.concatenate([cluster, [[5.0, 5.0]], rng.normal(3, 0.1, size=(3, 2))])
    labels = np.array([0] * 31 + [1] * 3)
    keep = lof_inliers(features, labels, 2, n_neighbors=10, min_examples=5)
    assert not keep[30]  # the isolated point labelled 0
    assert keep[:30].mean() > 0.8 and keep[31:].all()  # class 1 is too small for LOF and kept whole


def test_class_gaussians_match_numpy_and_ledoit_wolf():
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(1)
    features = rng.normal(size=(40, 3))
    labels = np.array([0] * 25 + [1] * 14 + [2])
    stats = class_gaussians(features, labels, 4, covariance="empirical")
    assert np.allclose(stats.means[0], features[:25].mean(0))
    assert np.allclose(stats.covariances[1], np.cov(features[25:39].T, bias=True))
    assert np.all(stats.covariances[2] == 0) and np.all(stats.means[3] == 0)
    assert stats.counts.tolist() == [25, 14, 1, 0]
    shrunk = class_gaussians(features, labels, 4)
    assert np.allclose(shrunk.covariances[0], LedoitWolf().fit(features[:25]).covariance_)


def test_tail_borrows_from_nearest_head_classes():
    eye = np.eye(2)
    stats = ClassGaussians(
        means=np.array([[0.0, 0.0], [10.0, 0.0], [1.0, 0.0], [9.0, 0.0]]),
        covariances=np.stack([1 * eye, 2 * eye, 3 * eye, 0 * eye]),
        counts=np.array([50, 40, 5, 1]),
        borrowed=np.zeros(4, dtype=bool),
    )
    out = calibrate_tail(stats, head_fraction=0.5, num_borrowed=1, blend_means=False)
    # Class 2 (tail, 5 examples) is nearest to head class 0: covariance (3 + 1) / 2; its mean is kept.
    assert np.allclose(out.covariances[2], 2 * eye) and np.allclose(out.means[2], [1.0, 0.0])
    # Class 3 (one example) has no covariance of its own: it takes head class 1's.
    assert np.allclose(out.covariances[3], 2 * eye)
    assert out.borrowed.tolist() == [False, False, True, True]
    blended = calibrate_tail(stats, head_fraction=0.5, num_borrowed=1, blend_means=True)
    assert np.allclose(blended.means[2], [0.5, 0.0]) and np.allclose(blended.means[3], [9.5, 0.0])
    assert np.allclose(out.covariances[:2], stats.covariances[:2])  # head classes untouched


def test_sampling_balances_the_classes():
    stats = ClassGaussians(
        np.array([[0.0, 0.0], [5.0, 5.0], [9.0, 9.0]]),
        np.stack([np.eye(2)] * 3),
        np.array([10, 3, 0]),
        np.zeros(3, dtype=bool),
    )
    points, labels = sample_to_balance(stats, np.array([10, 3, 0]), np.random.default_rng(0))
    assert labels.tolist() == [1] * 7  # class 1 filled up to 10; empty class 2 gets nothing
    many, many_labels = sample_to_balance(stats, np.array([10, 3, 0]), np.random.default_rng(0), target=5000)
    assert np.allclose(many[many_labels == 1].mean(0), [5.0, 5.0], atol=0.05)


def test_class_balanced_weights_hand_computed():
    weights = class_balanced_weights(np.array([100, 10, 0]), beta=0.9)
    raw = np.array([0.1 / (1 - 0.9**100), 0.1 / (1 - 0.9**10), 0.0])
    assert np.allclose(weights, raw * 3 / raw.sum())


def test_individual_calibration_loss_matches_autograd_of_a_reference():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
    head = nn.Linear(6, 3)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0])
    lam, perm = 0.7, torch.tensor([2, 0, 1, 4, 3])
    # Hand-computed mixup cross entropy on fixed logits.
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    lse = np.log(np.exp(2) + 2)
    expected = 0.7 * (lse - 2.0) + 0.3 * lse
    assert mixup_cross_entropy(logits, torch.tensor([0]), torch.tensor([1]), 0.7).item() == pytest.approx(
        expected
    )
    # Gradients of the module's terms vs an independent formulation (explicit soft targets, explicit norms).
    frozen = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
    mixed = lam * x + (1 - lam) * x[perm]
    h = F.normalize(encoder(mixed), dim=1)
    anchor = F.normalize(frozen(mixed), dim=1).detach()
    loss = mixup_cross_entropy(head(h), y, y[perm], lam) + 0.5 * representation_distance(h, anchor)
    grads = torch.autograd.grad(loss, [*encoder.parameters(), *head.parameters()])
    h2 = encoder(mixed)
    soft = lam * F.one_hot(y, 3) + (1 - lam) * F.one_hot(y[perm], 3)
    log_p = torch.log_softmax(head(h2 / h2.norm(dim=1, keepdim=True)), dim=1)
    u2 = h2 / h2.norm(dim=1, keepdim=True)
    a2 = frozen(mixed).detach()
    a2 = a2 / a2.norm(dim=1, keepdim=True)
    ref = -(soft * log_p).sum(1).mean() + 0.5 * torch.mean(torch.sum((u2 - a2) ** 2, 1))
    ref_grads = torch.autograd.grad(ref, [*encoder.parameters(), *head.parameters()])
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.allclose(g, r, atol=1e-6)


def test_individual_calibration_keeps_the_anchor_frozen():
    module = IndividualCalibrationModule(
        nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6)),
        nn.Linear(6, 3),
        (torch.randn(7, 6), torch.randint(0, 3, (7,))),
        num_real=10,
    )
    module.train()
    assert not module.frozen.training and all(not p.requires_grad for p in module.frozen.parameters())
    batch = {"x": torch.randn(10, 4), "y": torch.randint(0, 3, (10,))}
    loss = module.training_step(batch, 0)
    loss.backward()
    assert all(p.grad is None for p in module.frozen.parameters())
    assert module.head.weight.grad is not None


def test_a_resumed_calibration_module_continues_its_draws():
    def make():
        return IndividualCalibrationModule(
            nn.Linear(4, 6), nn.Linear(6, 3), (torch.randn(7, 6), torch.randint(0, 3, (7,))), seed=5
        )

    first = make()
    torch.randperm(10, generator=first.generator)  # draws made before the checkpoint
    checkpoint: dict = {}
    first.on_save_checkpoint(checkpoint)
    resumed = make()
    resumed.on_load_checkpoint(checkpoint)
    assert torch.equal(
        torch.randperm(10, generator=resumed.generator), torch.randperm(10, generator=first.generator)
    )


def test_linear_head_is_reproducible_from_its_seed_alone():
    """The classifier loop is a documented exception to the shared Trainer (papers/rcal/README.md, "Stages
    and resumption"): a rerun after a kill recomputes it, so its seed alone must decide it, bit for bit."""
    from papers.rcal.pipeline import train_linear_head

    features, labels = torch.randn(300, 8), torch.randint(0, 4, (300,))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # milliseconds; intra-op threads on the shared cores would take seconds
    try:
        first = train_linear_head(features, labels, 4, epochs=3, batch_size=64, seed=5)
        torch.manual_seed(123)  # the global random state does not enter
        again = train_linear_head(features, labels, 4, epochs=3, batch_size=64, seed=5)
        other = train_linear_head(features, labels, 4, epochs=3, batch_size=64, seed=6)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first.weight, again.weight) and torch.equal(first.bias, again.bias)
    assert not torch.equal(first.weight, other.weight)


TINY = [
    "experiment=rcal/table1_2",
    "data.imbalance_ratio=10",
    "data.noise_rate=0.4",
    "trainer.max_epochs=2",
    "method.head_epochs=5",
    "method.ic_epochs=1",
    "runtime.progress=false",
    "logger=none",
]


@pytest.mark.parametrize(
    "row",
    [
        ["method.calibration=none"],
        ["method.calibration=none", "method.class_weighting=class_balanced"],
        ["method.calibration=distributional", "method.individual_calibration=true"],
    ],
)
def test_rcal_rows_run_through_the_harness(row: list[str], output_root: Path):
    record = execute(compose([*TINY, *row, f"runtime.output_root={output_root}"]))
    assert record.complete, record.reason
    metrics = record.metrics
    assert 30 < metrics["noise/actual"] < 50  # 40% of the labels flipped (exact count over the kept images)
    for key in ("test/acc", "test/balanced_acc", "test/many_acc", "test/medium_acc", "test/group_acc"):
        assert 0 <= metrics[key] <= 100
    # The stage-1 encoder is a stage of the run: one stored encoder; DC+IC also stores its stage 3.
    assert len(list(output_root.glob("stages/rcal/encoder/*/result.pt"))) == 1
    calibrated = list(output_root.glob("stages/rcal/individual_calibration/*/result.pt"))
    assert len(calibrated) == ("method.individual_calibration=true" in row)


def test_individual_calibration_as_a_stage_equals_the_direct_fit(output_root: Path):
    row = ["method.calibration=distributional", "method.individual_calibration=true"]
    staged = execute(compose([*TINY, *row, f"runtime.output_root={output_root}"]))
    direct = execute(compose([*TINY, *row, "method.cache=false", f"runtime.output_root={output_root}"]))
    assert staged.complete and direct.complete
    assert (
        staged.metrics == direct.metrics and staged.curves["train/ic_loss"] == direct.curves["train/ic_loss"]
    )


def test_encoder_is_trained_once_for_every_noise_rate(output_root: Path):
    def run(*overrides: str):
        overrides = ("method.calibration=none", *overrides, f"runtime.output_root={output_root}")
        return execute(compose([*TINY, *overrides]))

    first = run()
    [stored] = output_root.glob("stages/rcal/encoder/*/result.pt")
    written = stored.stat().st_mtime_ns
    other = run("data.noise_rate=0.2")
    assert other.complete, other.reason
    # The second noise rate reuses the stored encoder: not retrained, same stage-1 loss.
    assert list(output_root.glob("stages/rcal/encoder/*/result.pt")) == [stored]
    assert stored.stat().st_mtime_ns == written
    assert other.metrics["stage1/loss"] == first.metrics["stage1/loss"]
    # Without the stage (method.cache=false) the encoder is trained in the run, to the same result.
    assert run("method.cache=false").metrics == first.metrics
    assert list(output_root.glob("stages/rcal/encoder/*/result.pt")) == [stored]


def test_encoder_stage_config_ignores_the_label_noise_not_the_seed(output_root: Path):
    from common.experiment import build_datamodule
    from common.lit.pipeline import RunContext
    from papers.rcal import RCALPipeline

    configs = {}
    for rate, seed in (("0.2", 0), ("0.4", 0), ("0.4", 1)):
        overrides = [f"data.noise_rate={rate}", f"seed={seed}", f"runtime.output_root={output_root}"]
        cfg = compose([*TINY, *overrides])
        datamodule = build_datamodule(cfg)
        datamodule.setup("fit")
        context = RunContext(cfg=cfg, datamodule=datamodule, make_module=None, make_trainer=None)
        configs[rate, seed] = RCALPipeline().encoder_stage_config(context)
    assert configs["0.2", 0] == configs["0.4", 0] != configs["0.4", 1]
    assert "noise_rate" not in configs["0.4", 0]["data"]
