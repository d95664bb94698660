"""PU-MLC: the per-class variational PU loss (hand-computed values, the official formula, the shared VPU
losses), its MixUp regulariser, the partial-label data and a tiny run through the harness."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.data.weak_labels import UNKNOWN
from common.experiment import build_datamodule
from common.losses import vpu_loss, vpu_mixup_regularizer
from common.run import execute
from papers.pu_mlc import (
    adaptive_temperature,
    flip_missed_positives,
    known_label_bce,
    pu_mlc_mixup_regularizer,
    pu_mlc_variational_loss,
)
from tests.conftest import compose

TINY = ["experiment=pu_mlc/table_mlc_pl", "trainer.max_epochs=2", "runtime.progress=false", "logger=none"]


def official_vpu_loss(inp: torch.Tensor, target: torch.Tensor, gamma: float, alpha: float) -> torch.Tensor:
    """TAKELAMAG/PU-MLC src/loss_functions/vpu_loss.py vpuLoss.forward, re-typed line by line."""
    output_mean = torch.mean(inp, dim=0)
    std = alpha * ((torch.sum((inp - output_mean).pow(2), dim=0) / inp.size(0)).pow(0.5))
    std = torch.where(std > 1.0, 1.0, std).detach()
    positive = (target == 1).float()
    unlabeled = torch.ones_like(positive)
    num_p_rec = torch.sum(positive, dim=0).pow(-1)
    num_x_rec = torch.sum(unlabeled, dim=0).pow(-1)
    num_p_rec = torch.where(torch.isinf(num_p_rec), torch.zeros_like(num_p_rec), num_p_rec)
    output_all_log = torch.log(torch.sigmoid(inp * std.pow(-1)) + 1e-10)
    output_p_log = output_all_log * positive
    output_all_sig = torch.sigmoid(inp * std.pow(-1))
    with torch.no_grad():
        pt1 = torch.sum((1 - output_all_sig) * unlabeled, dim=0) * num_x_rec
        weight = torch.pow(1 - pt1, gamma)
    p_loss = (torch.log(torch.exp(output_p_log) + 1e-10) * num_p_rec).sum()
    u_loss = (torch.log(torch.sum(torch.exp(output_all_log), dim=0) * num_x_rec + 1e-10) * weight).sum()
    return u_loss - p_loss


def test_variational_loss_hand_computed():
    # One class, Phi = (0.5, 0.75), the first example an observed positive.
    logits = torch.tensor([[0.0], [math.log(3.0)]])
    observed = torch.tensor([[1], [UNKNOWN]])
    plain = pu_mlc_variational_loss(logits, observed, temperature=False, rebalance=False)
    assert plain.item() == pytest.approx(math.log(0.625) - math.log(0.5), abs=1e-6)
    # Re-balance with gamma = 1: w = mean Phi = 0.625 multiplies the log-mean term only.
    weighted = pu_mlc_variational_loss(logits, observed, gamma=1.0, temperature=False)
    assert weighted.item() == pytest.approx(0.625 * math.log(0.625) - math.log(0.5), abs=1e-6)


def test_variational_loss_matches_official_formula_and_its_gradient():
    torch.manual_seed(0)
    logits = (torch.randn(16, 5) * 0.8).requires_grad_(True)
    observed = torch.full((16, 5), UNKNOWN)
    observed[torch.rand(16, 5) < 0.3] = 1
    observed[:, 4] = 0  # a class with no positive in the batch: only its unlabeled term counts
    ours = pu_mlc_variational_loss(logits, observed, alpha=1.0, gamma=0.55)
    reference = official_vpu_loss(logits, observed, gamma=0.55, alpha=1.0)
    assert ours.item() == pytest.approx(reference.item(), abs=1e-5)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-5, rtol=1e-4)


def test_temperature_is_clamped_and_detached():
    logits = torch.tensor([[0.0, 0.0], [4.0, 0.2]], requires_grad=True)
    tau = adaptive_temperature(logits, alpha=1.0)
    torch.testing.assert_close(tau, torch.tensor([1.0, 0.1]))  # population std 2.0 -> 1; 0.1 stays
    assert not tau.requires_grad


def test_reduces_to_shared_vpu_loss_per_class():
    torch.manual_seed(1)
    logits = torch.randn(12, 3)
    observed = torch.zeros(12, 3, dtype=torch.long)
    observed[:4] = 1
    ours = pu_mlc_variational_loss(logits, observed, temperature=False, rebalance=False)
    shared = sum(
        vpu_loss(F.logsigmoid(logits[:, c]), F.logsigmoid(logits[observed[:, c] == 1, c])) for c in range(3)
    )
    assert ours.item() == pytest.approx(float(shared), abs=1e-5)


def test_mixup_regularizer_reduces_to_shared_one_when_the_second_input_is_positive():
    torch.manual_seed(2)
    log_phi_mixed = F.logsigmoid(torch.randn(6, 4))
    targets_first = torch.rand(6, 4)
    ours = pu_mlc_mixup_regularizer(log_phi_mixed, targets_first, torch.ones(6, 4), 0.3)
    shared = vpu_mixup_regularizer(log_phi_mixed.flatten(), targets_first.flatten(), 0.3)
    assert ours.item() == pytest.approx(4 * shared.item(), rel=1e-5)  # sum over classes of per-class means


def test_known_label_bce_ignores_unknown_entries():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.3, 1.0, -2.0]])
    observed = torch.tensor([[1, UNKNOWN, 0], [UNKNOWN, UNKNOWN, 1]])
    known = observed != UNKNOWN
    expected = F.binary_cross_entropy_with_logits(logits[known], (observed[known] == 1).float())
    assert known_label_bce(logits, observed).item() == pytest.approx(expected.item(), abs=1e-6)


def test_flip_missed_positives_marks_unannotated_positives_absent():
    rng = np.random.default_rng(0)
    targets = (rng.random((50, 6)) < 0.3).astype(np.int64)
    observed = np.where(targets == 1, 1, UNKNOWN)
    observed[::2] = UNKNOWN  # half the rows unannotated
    flipped = flip_missed_positives(observed, targets, 0.2, seed=0)
    changed = flipped != observed
    assert changed.sum() == int(np.floor(0.2 * targets.sum() + 0.5))
    assert (targets[changed] == 1).all() and (flipped[changed] == 0).all() and (observed[changed] != 1).all()


def test_datamodule_keeps_the_label_proportion():
    cfg = compose([*TINY, "data.label_proportion=0.3", "data.positive_flip=0.3"])
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    true, observed = datamodule.train_true, datamodule.train_observed
    assert datamodule.observed_positive_rate == pytest.approx(0.3, abs=1e-3)
    negatives = true == 0
    assert ((observed == 0) & negatives).sum() == int(np.floor(0.3 * negatives.sum() + 0.5))
    assert ((observed == 0) & (true == 1)).sum() == int(np.floor(0.3 * true.sum() + 0.5))
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["y"].shape == batch["y_true"].shape == (64, datamodule.num_classes)


def test_single_label_reduction_is_the_official_loss_on_the_binary_score():
    """On a PU batch (y 1: labelled positive, 0: unlabelled) the upu row's loss, MixUp off, is the official
    vpuLoss on the one column s = logit_1 - logit_0; its gradient reaches both logits."""
    from papers.pu_mlc import PUMLCSingleLabelModule, single_label_observed

    torch.manual_seed(0)
    logits = torch.randn(12, 2, requires_grad=True)
    y = torch.tensor([1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0])
    assert single_label_observed(y)[:, 0].tolist() == [1 if v else UNKNOWN for v in y.tolist()]
    module = PUMLCSingleLabelModule.__new__(PUMLCSingleLabelModule)
    module.alpha, module.gamma, module.mixup = 2.0, 0.85, False
    loss = PUMLCSingleLabelModule.compute_loss(module, logits, {"y": y})
    scores = (logits[:, 1] - logits[:, 0])[:, None]
    expected = official_vpu_loss(scores, (y == 1).long()[:, None], gamma=0.85, alpha=2.0)
    assert torch.allclose(loss, expected, atol=1e-5)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.allclose(grad[:, 0], -grad[:, 1]) and grad.abs().sum() > 0


def test_paper_scale_voc_reads_trainval_and_test_from_the_hub(monkeypatch):
    """The paper's VOC 2007 split: trainval (the hub's train+validation) for training, test for evaluation;
    labels from class-index lists. The hub is replaced by a stand-in that records what was asked."""
    import datasets
    from PIL import Image

    import papers.pu_mlc.data as data_module

    asked = []

    def fake_hub(hub_id, *, split, **kwargs):
        asked.append((hub_id, split, kwargs["name"], kwargs["revision"]))
        sizes = {"train+validation": 5, "test": 3}
        rows = {
            "image": [Image.new("RGB", (8, 8))] * sizes[split],
            "classes": [[0, 14], [19], [3, 3], [7], [1]],
        }
        return datasets.Dataset.from_dict(
            {"image": rows["image"], "classes": rows["classes"][: sizes[split]]}
        )

    monkeypatch.setattr(data_module, "load_hub_dataset", fake_hub)
    cfg = compose(["experiment=pu_mlc/table_mlc_pl", "scale=paper", "runtime.progress=false"])
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    assert [a[1] for a in asked] == ["train+validation", "test"]
    assert {(a[0], a[2], a[3]) for a in asked} == {
        ("fuliucansheng/pascal_voc", "voc2007_main", "refs/convert/parquet")
    }
    assert datamodule.num_train == 5 and datamodule.test_true.shape == (3, 20)
    assert datamodule.train_true[0].nonzero()[0].tolist() == [0, 14] and datamodule.train_true[2].sum() == 1


@pytest.mark.parametrize("method", ["pu_mlc", "pu_mlc_an_bce", "pu_mlc_known_bce"])
def test_run_completes(method: str, output_root: Path):
    record = execute(
        compose(
            [*TINY, f"method={method}", "data.label_proportion=0.1", f"runtime.output_root={output_root}"]
        )
    )
    assert record.complete, record.reason
    assert len(record.curves["val/mAP"]) == 2
    assert 0.0 < record.metrics["test/mAP"] <= 100.0
