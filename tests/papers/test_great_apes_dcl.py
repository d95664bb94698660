"""DCL (great_apes_dcl): the five policy schedules against the official code's arrays, the loss against a
hand-computed case and autograd of an independent implementation, the labelled split, and a smoke run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from common.experiment import build_datamodule
from common.reproduce import run_overrides
from common.results.paper_spec import load_paper
from common.run import execute
from papers.great_apes_dcl import POLICIES, CurriculumSchedule, DCLModule, Phases, dcl_loss
from tests.conftest import compose


def official_linear(start: float, end: float, epochs: int, warmup: int, post: int) -> np.ndarray:
    """main.py::dealwithpolicies (youshyee/DCL-Detection @0edf0ab): head, linspace, tail."""
    return np.concatenate(
        (np.ones(warmup) * start, np.linspace(start, end, epochs - warmup - post), np.ones(post) * end)
    )


def official_cosine(base: float, final: float, epochs: int, warmup: int) -> np.ndarray:
    """util/misc.py::cosine_scheduler with niter_per_ep=1 and start_warmup_value=0."""
    iters = np.arange(epochs - warmup)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((np.linspace(0, base, warmup), cosine))


def test_schedules_match_the_official_arrays():
    phases = Phases.from_fractions(120, 40 / 120, 20 / 120)
    schedule = CurriculumSchedule(
        frozenset(POLICIES), phases, threshold=(0.3, 0.5), unsup_weight=(0.1, 1.0), momentum=(0.998, 0.9998)
    )
    got = {p: np.array([schedule.value(p, s) for s in range(120)]) for p in POLICIES}
    np.testing.assert_allclose(got["threshold"], official_linear(0.3, 0.5, 120, 40, 20))
    np.testing.assert_allclose(got["unsup_weight"], official_linear(0.1, 1.0, 120, 40, 20))
    np.testing.assert_allclose(got["sampling"], official_linear(0.0, 1.0, 120, 40, 20))  # data_stragety 'up'
    np.testing.assert_allclose(got["momentum"], official_cosine(0.998, 0.9998, 120, 40))


def test_static_policies_hold_their_end_value():
    schedule = CurriculumSchedule(frozenset({"threshold"}), Phases.from_fractions(100, 0.3, 0.2))
    for step in (0, 37, 99):
        values = schedule.values(step)
        assert values["sampling"] == 1.0  # the code's 'fix' strategy: the whole pool from the start
        assert values["unsup_weight"] == 1.0 and values["momentum"] == 0.99 and values["augmentation"] == 1.0
    assert schedule.value("threshold", 0) == 0.7 and schedule.value("threshold", 99) == pytest.approx(0.9)
    with pytest.raises(ValueError):
        CurriculumSchedule(frozenset({"teacher"}), Phases.from_fractions(10, 0.1, 0.1))


def test_catalog_static_row_is_the_pre_registered_baseline():
    """The catalog's static pseudo-labelling: every policy static, tau 0.9, w_u 1 and EMA 0.999."""
    paper = load_paper("great_apes_dcl")
    for scale in ("mini", "paper"):
        cfg = compose(
            run_overrides(
                paper, paper.tables["table_panaf"], "Static, EMA 0.999 (catalog)", "5% labels", 0, scale
            )
        )
        method = cfg.method
        assert list(method.dynamic) == []
        assert (method.threshold_end, method.unsup_weight_end, method.momentum_end) == (0.9, 1.0, 0.999)
    schedule = CurriculumSchedule(frozenset(), Phases.from_fractions(100, 0.3, 0.2), momentum=(0.95, 0.999))
    for step in (0, 50, 99):
        values = schedule.values(step)
        assert (values["threshold"], values["unsup_weight"], values["momentum"]) == (0.9, 1.0, 0.999)


def test_loss_hand_computed():
    # Labelled: logits (0, 0) for class 0 -> CE = log 2. Unlabelled: two examples, one kept with logits
    # (log 3, 0) and pseudo-label 0 -> CE = log(4/3); the dropped one does not count in the mean.
    logits_l = torch.zeros(1, 2)
    logits_u = torch.tensor([[math.log(3.0), 0.0], [5.0, -5.0]])
    loss, sup, unsup = dcl_loss(
        logits_l, torch.tensor([0]), logits_u, torch.tensor([0, 1]), torch.tensor([1.0, 0.0]), 0.5
    )
    assert sup.item() == pytest.approx(math.log(2.0))
    assert unsup.item() == pytest.approx(math.log(4.0 / 3.0))
    assert loss.item() == pytest.approx((math.log(2.0) + 0.5 * math.log(4.0 / 3.0)) / 1.5)
    none_kept = dcl_loss(logits_l, torch.tensor([0]), logits_u, torch.tensor([0, 1]), torch.zeros(2), 2.0)
    assert none_kept[0].item() == pytest.approx(math.log(2.0) / 3.0)


def test_loss_gradients_match_an_independent_implementation():
    torch.manual_seed(0)
    logits_l = torch.randn(4, 5, requires_grad=True)
    logits_u = torch.randn(6, 5, requires_grad=True)
    y_l, pseudo = torch.randint(0, 5, (4,)), torch.randint(0, 5, (6,))
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    loss, _, _ = dcl_loss(logits_l, y_l, logits_u, pseudo, mask, 0.7)
    grads = torch.autograd.grad(loss, (logits_l, logits_u))

    a, b = logits_l.detach().clone().requires_grad_(), logits_u.detach().clone().requires_grad_()
    sup = -torch.log_softmax(a, 1)[torch.arange(4), y_l].mean()
    nll = -torch.log_softmax(b, 1)[torch.arange(6), pseudo]
    unsup = nll[mask.bool()].mean()
    reference = (sup + 0.7 * unsup) / 1.7
    ref_grads = torch.autograd.grad(reference, (a, b))
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want)
    assert grads[1][~mask.bool()].abs().sum() == 0  # dropped pseudo-labels pass no gradient


def test_labeled_split_and_unlabeled_order():
    paper = load_paper("great_apes_dcl")
    cfg = compose(
        run_overrides(paper, paper.tables["table_panaf"], "Static (all five)", "5% labels", 0, "mini")
    )
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    lab, unl = datamodule.labeled_indices, datamodule.unlabeled_indices
    assert len(np.intersect1d(lab, unl)) == 0 and len(lab) + len(unl) == datamodule.num_train
    assert np.bincount(datamodule.train_labels[lab]).tolist() == [6] * 10  # round(0.05 * 1257 / 10)
    rank = datamodule.unlabeled_rank.numpy()
    assert (rank[lab] == -1).all() and sorted(rank[unl].tolist()) == list(range(len(unl)))
    batch = next(iter(datamodule.train_dataloader()["unlabeled"]))
    assert batch["x"].shape == (64, 1, 8, 8)


def test_strong_view_scales_with_strength():
    module = DCLModule.__new__(DCLModule)
    torch.nn.Module.__init__(module)
    module.flip, module.max_shift, module.noise_std = False, 1, 0.1
    x = torch.rand(16, 1, 8, 8)
    assert torch.equal(module.strong_view(x, 0.0), x)
    assert (module.strong_view(x, 0.2) - x).std() < (module.strong_view(x, 1.0) - x).std()


def test_run_completes_and_teacher_follows_the_momentum(output_root: Path):
    paper = load_paper("great_apes_dcl")
    overrides = run_overrides(
        paper, paper.tables["table_panaf"], "All five dynamic (DCL)", "5% labels", 0, "mini"
    )
    record = execute(compose([*overrides, "trainer.max_epochs=3", "runtime.progress=false", "logger=none",
                              f"runtime.output_root={output_root}"]))  # fmt: skip
    assert record.complete, record.reason
    assert len(record.curves["val/acc"]) == 3
    # Dynamic sampling: the first third of the run is supervised warm-up, no unlabelled example is used.
    assert record.curves["ssl/mask_rate"][0] == 0.0
    momentum = record.curves["policy/momentum"]  # value at each epoch's last step
    assert momentum[0] == pytest.approx(0.95) and momentum[0] < momentum[-1] <= 0.99
    assert record.metrics["ssl/collapsed"] in (0.0, 100.0)
