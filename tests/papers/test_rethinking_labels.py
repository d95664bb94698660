"""Rethinking the Value of Labels (Yang & Xu, NeurIPS 2020): the unlabeled pool's class sizes, the schedule,
the tail-class groups, rotation pre-training and its weight transfer, the stages' configs, and a tiny run of
both pipelines with its rerun from the stored stages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.backbones import build_backbone
from common.experiment import build_datamodule
from common.lit import RunContext
from common.run import execute
from papers.rethinking_labels import (
    SelfSupervisedPretrainPipeline,
    SemiSupervisedPipeline,
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


def run_context(overrides: list[str]) -> RunContext:
    """The context a pipeline gets for the run config `overrides`: the data set up, nothing to train with."""
    cfg = compose(overrides)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    return RunContext(cfg=cfg, datamodule=datamodule, make_module=None, make_trainer=None)


@pytest.fixture(scope="module")
def semi_contexts() -> dict[int, RunContext]:
    """table_semi's data at rho_U = 1 and 100 (one labeled set, two pools), seed 3."""
    semi = ["experiment=rethinking_labels/table_semi", "method=rethinking_labels_semi", "seed=3"]
    return {rho: run_context([*semi, f"data.unlabeled_imbalance_ratio={rho}"]) for rho in (1, 100)}


def test_semi_datamodule_pool_has_its_own_imbalance(semi_contexts: dict[int, RunContext]):
    datamodule = semi_contexts[100].datamodule
    labeled = np.bincount(datamodule.train_labels, minlength=10)
    pool = np.bincount(datamodule.unlabeled_labels_clean, minlength=10)
    assert labeled[0] == 200 and labeled[0] // labeled[-1] >= 50 - 1
    assert pool.sum() == pytest.approx(5 * labeled.sum(), abs=10)
    assert pool.tolist() == unlabeled_class_counts(labeled, 100)
    merged = datamodule.labeled_and_pseudo_labeled(np.zeros(datamodule.num_unlabeled, dtype=np.int64))
    assert len(merged) == datamodule.num_train + datamodule.num_unlabeled
    # The same labeled set under another pool: one labeled split hash, two split hashes.
    balanced = semi_contexts[1].datamodule
    assert np.array_equal(balanced.train_labels, datamodule.train_labels)
    assert balanced.labeled_split_hash == datamodule.labeled_split_hash
    assert balanced.split_hash != datamodule.split_hash


def test_semi_stage_configs_share_the_base_model_across_pools(semi_contexts: dict[int, RunContext]):
    balanced = SemiSupervisedPipeline().stage_configs(semi_contexts[1])
    skewed = SemiSupervisedPipeline().stage_configs(semi_contexts[100])
    # The base model sees the labeled set only: one stage for every rho_U column of a seed.
    assert balanced["semi_base"] == skewed["semi_base"]
    base = balanced["semi_base"]
    assert base["split_hash"] == semi_contexts[1].datamodule.labeled_split_hash
    assert base["seed"] == 3 and base["data"]["imbalance_ratio"] == 50 and base["model"]["backbone"] == "mlp"
    assert base["optim"]["optimizer"]["lr"] == 0.05 and base["trainer"]["max_epochs"] == 30
    assert not set(base["data"]) & {"unlabeled_imbalance_ratio", "unlabeled_size_factor"}
    # The pool's probabilities and the retrain depend on the pool: its split hash and rho_U.
    for stage in ("semi_pool_probs", "semi_retrain"):
        assert balanced[stage] != skewed[stage]
        assert balanced[stage]["pool"]["unlabeled_imbalance_ratio"] == 1
        assert balanced[stage]["split_hash"] == semi_contexts[1].datamodule.split_hash
    # The threshold decides only which pseudo-labels the retrain keeps; shot_fraction only groups metrics;
    # the input noise changes every fit.
    other = SemiSupervisedPipeline(threshold=0.9, shot_fraction=0.2).stage_configs(semi_contexts[1])
    assert other["semi_base"] == base and other["semi_pool_probs"] == balanced["semi_pool_probs"]
    assert other["semi_retrain"]["threshold"] == 0.9 != balanced["semi_retrain"]["threshold"]
    noisy = SemiSupervisedPipeline(noise_std=0.5).stage_configs(semi_contexts[1])
    assert noisy["semi_base"]["augment"]["noise_std"] == 0.5 != base["augment"]["noise_std"]


def test_ssp_stage_configs_follow_the_tail_and_the_pretraining():
    ssp = ["experiment=rethinking_labels/table_ssp", "method=rethinking_labels_ssp"]
    rho10, rho100 = (run_context([*ssp, f"data.imbalance_ratio={rho}"]) for rho in (10, 100))
    configs = SelfSupervisedPretrainPipeline().stage_configs(rho10)
    assert configs["ssp_pretrain"]["split_hash"] == rho10.datamodule.split_hash
    assert configs["ssp_pretrain"]["data"]["imbalance_ratio"] == 10
    assert SelfSupervisedPretrainPipeline().stage_configs(rho100)["ssp_pretrain"] != configs["ssp_pretrain"]
    assert configs["ssp_finetune"] == {"pretrain": configs["ssp_pretrain"]}
    short = SelfSupervisedPretrainPipeline(pretrain_epochs=5).stage_configs(rho10)
    assert short["ssp_pretrain"]["pretrain_epochs"] == 5 and short["ssp_finetune"] != configs["ssp_finetune"]


STAGES = {
    "rethinking_labels_semi": ["semi_base", "semi_pool_probs", "semi_retrain"],
    "rethinking_labels_ssp": ["ssp_pretrain", "ssp_finetune"],
}


@pytest.mark.parametrize(
    ("experiment", "method", "column"),
    [
        ("table_semi", "rethinking_labels_semi", "data.unlabeled_imbalance_ratio=1"),
        ("table_ssp", "rethinking_labels_ssp", "data.imbalance_ratio=100"),
    ],
)
def test_pipelines_run_through_the_harness(experiment: str, method: str, column: str, output_root: Path):
    overrides = [f"experiment=rethinking_labels/{experiment}", f"method={method}", column, *QUIET,
                 "cell.row=r", "cell.column=c", f"runtime.output_root={output_root}"]  # fmt: skip
    record = execute(compose(overrides))
    assert record.complete, record.reason
    assert record.extra["stages_computed"] == STAGES[method] and record.extra["stages_reused"] == []
    for key in ("test/acc", "test/error", "test/acc_few", "test/acc_many"):
        assert key in record.metrics
    assert record.metrics["test/error"] == pytest.approx(100 - record.metrics["test/acc"])
    assert len(record.curves["val/acc"]) == 2
    if method == "rethinking_labels_semi":
        assert record.metrics["pseudo/kept_fraction"] == 1.0
        assert sum(record.extra["pseudo_label_counts"]) == sum(record.extra["unlabeled_class_counts"])
    else:
        assert "pretrain/rotation_acc" in record.metrics
    # A rerun (a requeued task, a forced rerun) reads every stage back and reports the same numbers, the
    # tail-class metrics (kept with the weights) included.
    again = execute(compose([*overrides, "runtime.force=true"]))
    assert again.extra["stages_reused"] == STAGES[method] and again.extra["stages_computed"] == []
    assert again.metrics == record.metrics and again.curves == record.curves
    if method == "rethinking_labels_semi":
        assert again.extra["pseudo_label_counts"] == record.extra["pseudo_label_counts"]
        # Another pool of the same labeled set reuses the base model and computes the rest.
        other = execute(compose([*overrides, "data.unlabeled_imbalance_ratio=100", "cell.column=c100"]))
        assert other.extra["stages_reused"] == ["semi_base"]
        assert other.extra["stages_computed"] == ["semi_pool_probs", "semi_retrain"]
        assert {k: v for k, v in other.metrics.items() if k.startswith("base/")} == {
            k: v for k, v in record.metrics.items() if k.startswith("base/")
        }
