"""Bayes-error optimisation (unlearnable_bayes): the kernel estimator against a hand-computed case and the
official analytic gradient, the exact two-Gaussian Bayes error, the perturbations' budgets, error-minimising
noise resumed from a checkpoint, and tiny runs of the mixed table (its rerun reusing the stored stages, the
stages keyed by what decides them) and the estimator check through the harness."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

import common.experiment
from common.experiment import ResumableState
from common.run import execute
from papers.unlearnable_bayes import (
    ErrorMinimisingNoise,
    bayes_error_pga,
    kernel_bayes_error,
    kernel_posterior,
    knn_posterior,
    random_noise,
    two_gaussians_bayes_error,
    two_gaussians_distance,
)
from tests.conftest import compose


def test_kernel_posterior_hand_computed():
    # 1-d points 0, 1, 3 with labels 0, 1, 1 and sigma 1: k(a, b) = exp(-(a - b)^2 / 2).
    x = torch.tensor([[0.0], [1.0], [3.0]])
    y = torch.tensor([0, 1, 1])
    post = kernel_posterior(x, y, 2, sigma=1.0)
    w01, w03, w13 = math.exp(-0.5), math.exp(-4.5), math.exp(-2.0)
    expected = torch.tensor(
        [
            [0.0, 1.0],  # both neighbours of x=0 are class 1
            [w01 / (w01 + w13), w13 / (w01 + w13)],
            [w03 / (w03 + w13), w13 / (w03 + w13)],
        ]
    )
    assert torch.allclose(post, expected, atol=1e-6)
    be = (0.0 + min(expected[1]) + min(expected[2])) / 3
    assert float(kernel_bayes_error(x, y, 2, sigma=1.0)) == pytest.approx(float(be), abs=1e-6)


def _official_gradient(x: np.ndarray, y: np.ndarray, sigma: float, num_classes: int) -> np.ndarray:
    """bayeslap._numpy.x_gradient_rbf_kernel.bayes_error_grad_numpy (cat-claws/bayes-error-local-averaging
    @52d5901), re-typed: the gradient of sum_i (1 - max_c p(c | x_i)) with the argmax held fixed."""
    n = len(x)
    diff = x[:, None, :] - x[None, :, :]
    sims = np.exp(-(diff**2).sum(-1) / (2 * sigma**2))
    np.fill_diagonal(sims, 0)
    z = sims.sum(1)
    post = np.stack([(sims * (y == c)[None, :]).sum(1) / z for c in range(num_classes)], 1)
    y_max = post.argmax(1)
    grad = np.zeros_like(x)
    for i in range(n):
        n_hat = np.sum(sims[i] * (y == y_max[i]))
        for j in range(n):
            if i == j:
                continue
            coeff = ((y[j] == y_max[i]) * z[i] - n_hat) / z[i] ** 2
            step = coeff * sims[i, j] * diff[i, j] / sigma**2
            grad[i] += step
            grad[j] -= step
    return grad


def test_kernel_bayes_error_gradient_matches_official_analytic_gradient():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3))
    y = rng.integers(0, 3, 12)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    (len(x) * kernel_bayes_error(xt, torch.tensor(y), 3, sigma=0.8)).backward()
    assert np.allclose(xt.grad.numpy(), _official_gradient(x, y, 0.8, 3), atol=1e-10)


def test_knn_posterior_is_neighbour_label_share():
    x = torch.tensor([[0.0], [0.1], [0.2], [5.0]])
    y = torch.tensor([0, 0, 1, 1])
    post = knn_posterior(x, y, 2, k=2)
    assert torch.allclose(post[0], torch.tensor([0.5, 0.5]))  # neighbours 0.1 (class 0) and 0.2 (class 1)
    assert torch.allclose(post[3], torch.tensor([0.5, 0.5]))  # neighbours 0.2 (class 1) and 0.1 (class 0)


def test_two_gaussians_bayes_error():
    assert two_gaussians_bayes_error(2.0) == pytest.approx(0.158655254, abs=1e-8)  # Phi(-1)
    for target in (0.05, 0.15, 0.3):
        assert two_gaussians_bayes_error(two_gaussians_distance(target)) == pytest.approx(target, abs=1e-10)


def test_random_noise_respects_budget():
    x = torch.rand(50, 1, 4, 4)
    out = random_noise(x, 0.1, torch.Generator().manual_seed(0))
    assert (out - x).abs().max() <= 0.1 + 1e-7 and out.min() >= 0 and out.max() <= 1
    assert (out - x).abs().mean() > 0.02


def test_bayes_error_pga_ascends_within_budget():
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    x = (0.5 + 0.15 * (2 * y[:, None].float() - 1) + 0.05 * torch.randn(40, 6, generator=gen)).clamp(0, 1)
    result = bayes_error_pga(
        x, y, 2, eps=0.1, steps=10, step_size=0.02, sigma=0.1, normalise=False, generator=gen
    )
    assert len(result.history) == 11
    assert result.history[0] < 0.01 and result.history[-1] > 0.05  # separated classes made to overlap
    assert (result.x - x).abs().max() <= 0.1 + 1e-6 and result.x.min() >= 0 and result.x.max() <= 1


def _error_minimising_noise(x: torch.Tensor, y: torch.Tensor, **options) -> ErrorMinimisingNoise:
    torch.manual_seed(0)
    return ErrorMinimisingNoise(
        x, y, nn.Linear(8, 4), eps=0.3, step_size=0.03, lr=0.5, pgd_steps=10, train_steps=5, batch_size=64,
        generator_seed=0, **options,
    )  # fmt: skip


def _fit_rounds(module: ErrorMinimisingNoise, rounds: int, checkpoints: Path | None = None, resume=None):
    callbacks = []
    if checkpoints is not None:
        callbacks = [ModelCheckpoint(dirpath=checkpoints, filename="last", monitor=None), ResumableState()]
    trainer = L.Trainer(
        max_epochs=rounds, accelerator="cpu", logger=False, callbacks=callbacks,
        enable_checkpointing=checkpoints is not None, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, ErrorMinimisingNoise.one_batch_per_round(), ckpt_path=resume)


def test_error_minimising_noise_makes_data_easy_within_budget():
    torch.manual_seed(0)
    x = torch.rand(64, 8)
    y = torch.randint(0, 4, (64,))  # random labels: hard to fit without the noise
    noise = _error_minimising_noise(x, y, stop_error=0.25)
    _fit_rounds(noise, 30)
    assert (noise.perturbed - x).abs().max() <= 0.3 + 1e-6
    assert noise.curves["train_error"][-1] < 0.25 and noise.rounds < 30  # stopped once the error was low


def test_error_minimising_noise_resumes_as_if_uninterrupted(tmp_path: Path):
    torch.manual_seed(0)
    x, y = torch.rand(64, 8), torch.randint(0, 4, (64,))
    straight = _error_minimising_noise(x, y, stop_error=0.0)
    _fit_rounds(straight, 4)
    _fit_rounds(_error_minimising_noise(x, y, stop_error=0.0), 2, tmp_path)  # "killed" after round 2
    resumed = _error_minimising_noise(x, y, stop_error=0.0)
    _fit_rounds(resumed, 4, tmp_path, resume=tmp_path / "last.ckpt")
    assert torch.equal(resumed.delta, straight.delta) and resumed.curves == straight.curves


# The mixed table's mini setting (generated shapes, cnn_small) made tiny: 150 training images, a narrow net.
TINY = ["data.source_kwargs.num_samples=200", "model.widths=[4,8,8]", "data.batch_size=50"]


def _run(overrides: list[str], output_root: Path, tiny: bool = True):
    cfg = compose(
        [
            *overrides,
            *(TINY if tiny else []),
            "runtime.progress=false",
            "logger=none",
            f"runtime.output_root={output_root}",
        ]
    )
    record = execute(cfg)
    assert record.complete, record.reason
    return record


def test_mixed_table_beo_run_reuses_its_stages(output_root: Path, monkeypatch: pytest.MonkeyPatch):
    overrides = [
        "experiment=unlearnable_bayes/mixed",
        "method=unlearnable_bayes_beo",
        "trainer.max_epochs=2",
        "protection.beo.rounds=1",
        "protection.beo.steps_per_round=3",
        "protection.beo.surrogate_epochs=1",
    ]
    record = _run(overrides, output_root)
    metrics = record.metrics
    assert metrics["protection/linf"] <= 8 + 1e-3  # eps = 8/255
    assert metrics["protection/protected_fraction"] == pytest.approx(0.5, abs=1e-3)
    assert metrics["beo/objective_end"] > metrics["beo/objective_start"]
    assert len(record.curves["val/acc"]) == 2 and len(record.curves["beo/be_hat"]) == 4
    assert record.extra["stages_computed"] == ["beo_surrogate", "beo_round", "victim"]

    # A rerun (a requeued task, a forced rerun) trains nothing: the round and the victim are read back.
    def no_trainer(*args, **kwargs):
        raise AssertionError("a stored stage was trained again")

    monkeypatch.setattr(common.experiment, "build_trainer", no_trainer)  # run.py imports it per run
    rerun = _run([*overrides, "runtime.force=true"], output_root)
    assert rerun.extra["stages_reused"] == ["beo_round", "victim"] and not rerun.extra["stages_computed"]
    assert rerun.metrics == record.metrics and rerun.curves == record.curves


def test_clean_only_drops_the_protected_share(output_root: Path):
    record = _run(
        [
            "experiment=unlearnable_bayes/clean_only",
            "method=unlearnable_bayes_clean_only",
            "trainer.max_epochs=1",
        ],
        output_root,
    )
    assert record.metrics["train_size"] == pytest.approx(150 - round(0.5 * 150))
    assert record.metrics["protection/linf"] == 0


def test_estimator_check_run(output_root: Path):
    record = _run(
        [
            "experiment=unlearnable_bayes/estimator_check",
            "method=unlearnable_bayes_estimator",
            "data.bayes_error=0.2",
        ],
        output_root,
        tiny=False,
    )
    assert record.metrics["be_exact"] == pytest.approx(20.0)
    assert abs(record.metrics["be_hat"] - 20.0) < 5


def test_stages_are_keyed_by_what_decides_them(output_root: Path):
    error_min = [
        "experiment=unlearnable_bayes/mixed",
        "method=unlearnable_bayes_error_min",
        "trainer.max_epochs=1",
        "protection.error_min.max_rounds=2",
        "protection.error_min.pgd_steps=2",
        "protection.error_min.train_steps=2",
    ]
    first = _run(error_min, output_root)
    assert first.extra["stages_computed"] == ["error_min_noise", "victim"]
    assert 1 <= first.metrics["error_min/rounds"] <= 2

    # The victim's schedule does not decide the noise: a longer victim reuses it (and gets the same data).
    longer = _run([*error_min, "trainer.max_epochs=2"], output_root)
    assert longer.extra["stages_reused"] == ["error_min_noise"] and longer.extra["stages_computed"] == [
        "victim"
    ]
    protection = ("error_min/", "be_hat_pixels/", "protection/")  # be_hat/: the victim's features
    assert {k: v for k, v in longer.metrics.items() if k.startswith(protection)} == {
        k: v for k, v in first.metrics.items() if k.startswith(protection)
    }
    # The budget does: a smaller eps (binding after 2 steps of 0.8/255) is new noise and a new victim.
    smaller = _run([*error_min, "protection.eps=0.005"], output_root)
    assert smaller.extra["stages_computed"] == ["error_min_noise", "victim"]
    assert smaller.metrics["protection/linf"] <= 0.005 * 255 + 1e-3

    # The victim is keyed by its training set: the clean row's two columns train on the same data, one fit.
    clean = ["experiment=unlearnable_bayes/mixed", "method=unlearnable_bayes_none", "trainer.max_epochs=1"]
    half = _run([*clean, "protection.protected_fraction=0.5"], output_root)
    full = _run([*clean, "protection.protected_fraction=1.0"], output_root)
    assert half.extra["stages_computed"] == ["victim"] and full.extra["stages_reused"] == ["victim"]
    assert full.metrics["test/acc"] == half.metrics["test/acc"] and full.curves == half.curves
