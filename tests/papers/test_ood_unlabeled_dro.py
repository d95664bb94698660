"""ood_unlabeled_dro: the RSS losses on hand cases and against closed forms, the simulation's exact accuracy
against Monte Carlo, and runs through the harness."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from common.run import execute
from papers.ood_unlabeled_dro import (
    TwoGaussianDataModule,
    clipped_hinge,
    dro_perturb,
    robust_loss,
    rss_linear_loss,
    rss_loss,
)
from papers.ood_unlabeled_dro.histopathology import FeatureHead, _labeled_subset
from tests.conftest import compose


def test_clipped_hinge_hand_values():
    # margins -1, 0, 0.25, 2 with scale 2: 1 - 2 m = 3, 1, 0.5, -3 -> clamped 1, 1, 0.5, 0 -> mean 0.625
    assert clipped_hinge(torch.tensor([-1.0, 0.0, 0.25, 2.0]), 2.0).item() == pytest.approx(0.625)


def test_rss_linear_loss_uses_self_labelled_margins():
    scores, labels = torch.tensor([0.5, -0.5]), torch.tensor([1.0, 1.0])
    unlabeled = torch.tensor([-0.2, 0.1, 3.0])
    # labelled: 1 - 0.5 = 0.5, 1 + 0.5 = 1.5 -> 1; mean 0.75. Unlabeled with sign pseudo-labels:
    # |f| = .2, .1, 3, scale 1 -> 0.8, 0.9, 0 -> mean 0.5667; lam 2 -> 1.1333.
    loss = rss_linear_loss(scores, labels, unlabeled, gamma=1.0, gamma_unlabeled=1.0, lam=2.0)
    assert loss.item() == pytest.approx(0.75 + 2 * (1.7 / 3))
    assert rss_linear_loss(scores, labels, None, 1.0, 1.0, 2.0).item() == pytest.approx(0.75)


class _Linear(nn.Module):
    """f(z) = a^T z per row: the 'loss' sum_i a^T z_i makes the inner sup a closed form."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.a


def _linear_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return outputs.sum()


def test_dro_perturb_reaches_the_closed_form_sup():
    """sup_Z a^T Z - gamma ||Z - X||^2 is attained at Z = X + a / (2 gamma) with value
    a^T X + |a|^2 / (4 gamma); with step size 1 / (2 gamma) the first ascent step lands there and stays."""
    a, gamma = torch.tensor([1.0, -2.0, 0.5]), 0.8
    model, x = _Linear(a), torch.randn(4, 3)
    z = dro_perturb(
        model, x, torch.zeros(4), steps=5, step_size=1 / (2 * gamma), gamma=gamma, loss_fn=_linear_loss
    )
    torch.testing.assert_close(z, x + a / (2 * gamma))
    phi = robust_loss(
        model, x, torch.zeros(4), steps=5, step_size=1 / (2 * gamma), gamma=gamma, loss_fn=_linear_loss
    )
    expected = ((x @ a).sum() + 4 * (a @ a) / (4 * gamma)) / 4
    torch.testing.assert_close(phi, expected)


def test_robust_loss_gradient_matches_envelope_theorem():
    """At the inner optimum, d phi / d a = Z*^T 1 / len(X) (Danskin): autograd through the fixed Z* agrees."""
    a, gamma = torch.tensor([0.3, 0.7]), 1.5
    model, x = _Linear(a.clone()), torch.randn(5, 2)
    phi = robust_loss(
        model, x, torch.zeros(5), steps=3, step_size=1 / (2 * gamma), gamma=gamma, loss_fn=_linear_loss
    )
    phi.backward()
    z_star = x + a / (2 * gamma)
    torch.testing.assert_close(model.a.grad, z_star.sum(0) / 5)


def test_robust_cross_entropy_is_at_least_the_plain_loss():
    torch.manual_seed(0)
    head = FeatureHead(6, [8], 3)
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    plain = nn.functional.cross_entropy(head(x), y)
    robust = robust_loss(head, x, y, steps=10, step_size=0.05, gamma=1.0)
    assert robust.item() >= plain.item() - 1e-6  # Z = X is feasible and the ascent steps do not go down much
    total = rss_loss(
        head, x, y, torch.randn(7, 6), gamma=1.0, gamma_unlabeled=1.0, lam=0.5, steps=3, step_size=0.05
    )
    total.backward()
    assert all(p.grad is not None for p in head.parameters())


def test_simulation_accuracy_is_exact():
    data = TwoGaussianDataModule(seed=3, dim=20)
    weight = np.random.default_rng(0).standard_normal(20)
    x, y = data.labeled(200_000, np.random.default_rng(1))
    assert data.accuracy(weight) == pytest.approx(np.mean(np.sign(x @ weight) == y), abs=0.004)
    assert data.accuracy(data.mean) == pytest.approx(data.bayes_accuracy())
    assert data.bayes_accuracy() == pytest.approx(0.8413, abs=1e-4)  # Phi(1)


def test_shifted_unlabeled_mean():
    same, shifted = TwoGaussianDataModule(seed=1, shift=0.0), TwoGaussianDataModule(seed=1, shift=0.5)
    np.testing.assert_allclose(same.unlabeled_mean, same.mean)
    assert np.linalg.norm(shifted.unlabeled_mean - shifted.mean) == pytest.approx(0.5)


def test_balanced_labeled_subset():
    labels = np.array([0] * 50 + [1] * 10)
    chosen = _labeled_subset(np.arange(60), labels, 8, balanced=True, rng=np.random.default_rng(0))
    assert len(chosen) == 8 and np.sum(labels[chosen] == 1) == 4
    strat = _labeled_subset(np.arange(60), labels, 12, balanced=False, rng=np.random.default_rng(0))
    assert len(strat) == 12 and np.sum(labels[strat] == 1) == 2


TINY = ["method.search=grid", "method.restarts=1", "method.epochs=5", "runtime.progress=false", "logger=none"]


@pytest.mark.parametrize("method", ["ood_unlabeled_dro_linear_erm", "ood_unlabeled_dro_linear_rss"])
def test_simulation_runs_complete(method: str, output_root: Path):
    cfg = compose(["experiment=ood_unlabeled_dro/sim_m10", f"method={method}", "protocol.num_unlabeled=200",
                   "data.shift=0.5", *TINY, f"runtime.output_root={output_root}"])  # fmt: skip
    record = execute(cfg)
    assert record.complete, record.reason
    assert 50.0 <= record.metrics["test/acc"] <= record.metrics["bayes_acc"]
    assert record.extra["selected_hyperparameters"]
