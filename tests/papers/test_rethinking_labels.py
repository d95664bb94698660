"""Rethinking the Value of Labels (Yang & Xu, NeurIPS 2020): the unlabeled pool's class sizes, the schedule,
the tail-class groups, rotation pre-training and its weight transfer, and a tiny run of both pipelines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.backbones import build_backbone
from common.experiment import build_datamodule
from common.run import execute
from papers.rethinking_labels import (
    balanced_rotations,
    rank_shot_thresholds,
    select_per_class,
    transfer_backbone,
    unlabeled_class_counts,
)
from tests.conftest import compose

QUIET = ["runtime.progress=false", "logger=none", "trainer.max_epochs=2"]


def official_unlabeled_counts(labeled: list[int], imb_factor: float, size_factor: int = 5) -> list[int]:
    """dataset/imbalance_cifar.py get_img_num_per_cls_unlabeled, written out independently."""
    total = sum(labeled) * size_factor
    first = total // len(labeled)
    raw = [int(first * (imb_factor ** (i / (len(labeled) - 1.0)))) for i in range(len(labeled))]
    return [int(n * (total / sum(raw))) for n in raw]


def test_unlabeled_pool_sizes_follow_the_official_formula():
    # CIFAR-10-LT rho = 50 labeled counts (img_max 5000, int truncation as the official code).
    labeled = [int(5000 * 0.02 ** (c / 9)) for c in range(10)]
    assert labeled[0] == 5000 and labeled[-1] == 100
    for rho_u in (1, 25, 50, 100):
        assert unlabeled_class_counts(np.array(labeled), rho_u) == official_unlabeled_counts(
            labeled, 1 / rho_u
        )
    balanced = unlabeled_class_counts(np.array(labeled), 1)
    assert len(set(balanced)) == 1 and balanced[0] == sum(labeled) * 5 // 10
    skewed = unlabeled_class_counts(np.array(labeled), 100)
    assert skewed == sorted(skewed, reverse=True) and skewed[0] / skewed[-1] == pytest.approx(100, rel=0.02)


def test_select_per_class_draws_exact_counts_and_refuses_a_short_class():
    labels = np.repeat(np.arange(3), [10, 5, 2])
    chosen = select_per_class(labels, [4, 5, 1], seed=0)
    assert np.bincount(labels[chosen], minlength=3).tolist() == [4, 5, 1]
    assert np.array_equal(chosen, np.sort(chosen))
    with pytest.raises(Exception, match="class 2 has 2 examples"):
        select_per_class(labels, [1, 1, 3], seed=0)
    assert np.bincount(labels[select_per_class(labels, [1, 1, 3], seed=0, cap=True)]).tolist() == [1, 1, 2]


def test_rank_shot_thresholds_split_three_largest_and_smallest_classes():
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # CIFAR-10-LT rho = 100
    many, few = rank_shot_thresholds(counts, 3)
    assert (many, few) == (1796, 139)
    assert sum(c >= many for c in counts) == 3 and sum(c <= few for c in counts) == 3
    with pytest.raises(ValueError, match="too flat"):
        rank_shot_thresholds([10] * 10, 3)


def test_balanced_rotations_and_the_rotation_loss_gradient():
    torch.manual_seed(0)
    rotation = balanced_rotations(10)
    assert sorted(torch.bincount(rotation, minlength=4).tolist()) == [2, 2, 3, 3]
    # Rotation-prediction loss through the harness's backbone vs an explicit rot90 + log-softmax by hand.
    net = build_backbone("cnn_small", num_classes=4, in_chans=1, widths=[4, 8])
    x = torch.randn(6, 1, 8, 8)
    k = torch.tensor([0, 1, 2, 3, 1, 2])
    from common.data.transforms import rotate_batch

    loss = torch.nn.functional.cross_entropy(net(rotate_batch(x, k)), k)
    manual = torch.stack([torch.rot90(x[i], int(k[i]), (1, 2)) for i in range(6)])
    logits = net(manual)
    by_hand = -(logits.log_softmax(1)[torch.arange(6), k]).mean()
    assert torch.allclose(loss, by_hand)
    g1 = torch.autograd.grad(loss, list(net.parameters()))
    g2 = torch.autograd.grad(by_hand, list(net.parameters()))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g1, g2, strict=True))


def test_transfer_backbone_copies_everything_but_the_head():
    source = build_backbone("cnn_small", num_classes=4, in_chans=1, widths=[4, 8])
    target = build_backbone("cnn_small", num_classes=10, in_chans=1, widths=[4, 8])
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    head_before = target.head.weight.clone()
    missing = transfer_backbone(source, target)
    assert sorted(missing) == ["head.bias", "head.weight"]
    assert torch.equal(target.head.weight, head_before)
    for key, value in source.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(target.state_dict()[key], value), key


def test_semi_datamodule_pool_has_its_own_imbalance():
    cfg = compose(["experiment=rethinking_labels/table_semi", "data.unlabeled_imbalance_ratio=100"])
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    labeled = np.bincount(datamodule.train_labels, minlength=10)
    pool = np.bincount(datamodule.unlabeled_labels_clean, minlength=10)
    assert labeled[0] == 200 and labeled[0] // labeled[-1] >= 50 - 1
    assert pool.sum() == pytest.approx(5 * labeled.sum(), abs=10)
    assert pool.tolist() == unlabeled_class_counts(labeled, 100)
    merged = datamodule.labeled_and_pseudo_labeled(np.zeros(datamodule.num_unlabeled, dtype=np.int64))
    assert len(merged) == datamodule.num_train + datamodule.num_unlabeled


@pytest.mark.parametrize(
    ("experiment", "method", "column"),
    [
        ("table_semi", "rethinking_labels_semi", "data.unlabeled_imbalance_ratio=1"),
        ("table_ssp", "rethinking_labels_ssp", "data.imbalance_ratio=100"),
    ],
)
def test_pipelines_run_through_the_harness(experiment: str, method: str, column: str, output_root: Path):
    cfg = compose([f"experiment=rethinking_labels/{experiment}", f"method={method}", column, *QUIET,
                   "cell.row=r", "cell.column=c", f"runtime.output_root={output_root}"])  # fmt: skip
    record = execute(cfg)
    assert record.complete, record.reason
    for key in ("test/acc", "test/error", "test/acc_few", "test/acc_many"):
        assert key in record.metrics
    assert record.metrics["test/error"] == pytest.approx(100 - record.metrics["test/acc"])
    assert len(record.curves["val/acc"]) == 2
    if method == "rethinking_labels_semi":
        assert record.metrics["pseudo/kept_fraction"] == 1.0
        assert sum(record.extra["pseudo_label_counts"]) == sum(record.extra["unlabeled_class_counts"])
    else:
        assert "pretrain/rotation_acc" in record.metrics
