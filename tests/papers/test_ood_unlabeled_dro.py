"""ood_unlabeled_dro: the RSS losses on hand cases and against closed forms, the simulation's exact accuracy
against Monte Carlo, and runs through the harness."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from common.lit.stages import Stages
from common.results.cache import load_torch
from common.run import execute
from papers.ood_unlabeled_dro import (
    TwoGaussianDataModule,
    clipped_hinge,
    dro_perturb,
    robust_loss,
    rss_linear_loss,
    rss_loss,
)
from papers.ood_unlabeled_dro.histopathology import FeatureHead, RobustHead, _HistoPipeline, _labeled_subset
from papers.ood_unlabeled_dro.simulation import TrainSettings, _LinearSimulation
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


def _simulation(method: str, output_root: Path, *overrides: str):
    record = execute(compose(["experiment=ood_unlabeled_dro/sim_m10", f"method={method}", *TINY,
                              f"runtime.output_root={output_root}", *overrides]))  # fmt: skip
    assert record.complete, record.reason
    assert 50.0 <= record.metrics["test/acc"] <= record.metrics["bayes_acc"]
    assert record.extra["selected_hyperparameters"]
    return record


def test_simulation_runs_and_its_search_is_a_stage_the_erm_row_shares(output_root: Path):
    shifted = ["protocol.num_unlabeled=200", "data.shift=0.5"]
    erm = _simulation("ood_unlabeled_dro_linear_erm", output_root, *shifted)
    assert erm.extra["stages_computed"] == ["search"] and not erm.extra["stages_reused"]
    assert erm.metrics["num_unlabeled"] == 0
    # ERM ignores n and the shift: another column of its row reads the same search.
    column = _simulation("ood_unlabeled_dro_linear_erm", output_root, "protocol.num_unlabeled=10")
    assert column.extra["stages_reused"] == ["search"] and not column.extra["stages_computed"]
    assert column.metrics["test/acc"] == erm.metrics["test/acc"]
    assert column.extra["selected_hyperparameters"] == erm.extra["selected_hyperparameters"]
    # RSS uses the unlabeled sample: its own search; a forced rerun trains nothing and gives the same record.
    rss = _simulation("ood_unlabeled_dro_linear_rss", output_root, *shifted)
    assert rss.extra["stages_computed"] == ["search"] and rss.metrics["num_unlabeled"] == 200
    rerun = _simulation("ood_unlabeled_dro_linear_rss", output_root, *shifted, "runtime.force=true")
    assert rerun.extra["stages_reused"] == ["search"] and not rerun.extra["stages_computed"]
    assert rerun.metrics == rss.metrics
    assert rerun.extra["selected_hyperparameters"] == rss.extra["selected_hyperparameters"]


def test_search_stage_config_holds_what_decides_it(tmp_path: Path):
    stages = Stages(root=tmp_path, code_hash="test")
    settings = TrainSettings(epochs=5, restarts=1)

    def config(seed: int, shift: float, n: int | None) -> dict:
        data = TwoGaussianDataModule(seed=seed, shift=shift, dim=20)
        return _LinearSimulation.search_config(data, settings, 10, n)

    rss = config(1, 0.5, 200)
    assert rss["data"]["seed"] == 1 and rss["num_labeled"] == 10 and rss["settings"]["restarts"] == 1
    assert rss["unlabeled"] == {"num": 200, "shift": 0.5}
    erm = config(1, 0.5, None)
    assert erm["unlabeled"] is None and erm == config(1, 0.0, None)  # the ERM row shares its search
    path = lambda c: stages.locate("search", c).path  # noqa: E731
    assert (
        len({path(rss), path(config(1, 0.0, 200)), path(config(1, 0.5, 100)), path(config(2, 0.5, 200))}) == 4
    )


# Histopathology on random 16-px inputs with a small CNN: the paper-scale code path in a few seconds.
HISTO = ["experiment=ood_unlabeled_dro/histo_same", "scale=paper", "method=ood_unlabeled_dro_histo_rss",
         "data.source=random", "data.num_workers=0", "data.image_size=16", "data.input_shape=[3,16,16]",
         "+data.source_kwargs={num_samples:120}", "model.backbone=cnn_small", "model.pretrained=false",
         "protocol.num_labeled=20", "protocol.num_unlabeled=30", "method.epochs=3", "method.hidden=[16]",
         "method.perturbation_steps=2", "trainer.accelerator=cpu", "logger=none",
         "runtime.progress=false"]  # fmt: skip


def test_histopathology_embeddings_config_holds_what_decides_them():
    cfg = compose([*HISTO, "data.batch_size=7"])
    rss = _HistoPipeline.embeddings_config(cfg, 20, 30, smoke=False)
    erm = _HistoPipeline.embeddings_config(cfg, 20, None, smoke=False)
    assert rss["seed"] == cfg.seed and rss["num_labeled"] == 20 and rss["model"]["backbone"] == "cnn_small"
    assert rss["unlabeled"] == {"num": 30, "source": "same", "data": None} and erm["unlabeled"] is None
    assert rss["data"]["source"] == "random" and "batch_size" not in rss["data"]  # embedded in eval batches
    shifted = compose(["experiment=ood_unlabeled_dro/histo_shifted", *HISTO[1:]])
    other = _HistoPipeline.embeddings_config(shifted, 20, 30, smoke=False)["unlabeled"]
    assert other["source"] == "other" and other["data"]["hub_id"] == "1aurent/PatchCamelyon"


def test_histopathology_head_resumes_after_a_kill_and_a_rerun_reuses_both_stages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    whole = execute(compose([*HISTO, f"runtime.output_root={tmp_path / 'whole'}"]))
    assert whole.complete, whole.reason
    assert whole.extra["stages_computed"] == ["embeddings", "head"]
    assert whole.metrics["num_labeled"] == 20 and whole.metrics["num_unlabeled"] == 30
    # A rerun reads both stages back: no backbone pass, no training, the same metrics.
    monkeypatch.setattr(RobustHead, "training_step", _never)
    rerun = execute(compose([*HISTO, f"runtime.output_root={tmp_path / 'whole'}", "runtime.force=true"]))
    assert rerun.extra["stages_reused"] == ["embeddings", "head"] and rerun.metrics == whole.metrics
    monkeypatch.undo()

    # Killed at the start of the last epoch, then rerun: it resumes from the checkpoint as if uninterrupted.
    start = RobustHead.on_train_epoch_start

    def killed(self: RobustHead) -> None:
        if self.current_epoch == 2:
            raise RuntimeError("killed")
        start(self)

    root = f"runtime.output_root={tmp_path / 'killed'}"
    monkeypatch.setattr(RobustHead, "on_train_epoch_start", killed)
    assert not execute(compose([*HISTO, root])).complete
    assert len(list((tmp_path / "killed").rglob("head/*/checkpoints/last.ckpt"))) == 1
    monkeypatch.undo()
    resumed = execute(compose([*HISTO, root, "runtime.force=true"]))
    assert resumed.extra["stages_reused"] == ["embeddings"] and resumed.extra["stages_computed"] == ["head"]
    assert resumed.metrics == whole.metrics
    # The stored heads agree bitwise: best weights, per-epoch curves, the random state the fit left.
    (a,), (b,) = (
        [load_torch(p) for p in (tmp_path / run).rglob("head/*/result.pt")] for run in ("whole", "killed")
    )
    assert a["curves"] == b["curves"] and len(a["curves"]["val/acc"]) == 3
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert torch.equal(a["random_state_after"]["torch"], b["random_state_after"]["torch"])


def _never(*args, **kwargs):
    raise AssertionError("a stored stage was trained again")
