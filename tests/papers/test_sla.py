"""SLA: losses against hand-computed values and an independent transcription of the official trainers,
aggregated / single inference of the modules, the ResNet-32 backbone, and tiny runs through the harness."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from common.experiment import build_datamodule, build_module
from common.lit import ClassificationModule
from common.results.record import config_hash
from common.run import execute
from papers.sla import (
    CifarResNet,
    JointLabelModule,
    RotationModule,
    SelfDistillationModule,
    data_augmentation_loss,
    joint_label_loss,
    multi_task_loss,
    self_distillation_loss,
)
from tests.conftest import compose

TINY = ["experiment=sla/main", "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1",
        "runtime.progress=false", "logger=none"]  # fmt: skip


def _official_sla_sd(joint: torch.Tensor, single_all: torch.Tensor, labels: torch.Tensor, n: int, t: float):
    """hankook/SLA trainers.py:130-147 transcribed with loops: single head on every row, then [::n]."""
    single = single_all[::n]
    joint_labels = torch.stack([labels * n + i for i in range(n)], 1).view(-1)
    joint_loss = F.cross_entropy(joint, joint_labels)
    single_loss = F.cross_entropy(single, labels)
    agg = 0
    for i in range(n):
        agg = agg + joint[i::n, i::n] / n
    distill = F.kl_div(F.log_softmax(single / t, 1), F.softmax(agg.detach() / t, 1), reduction="batchmean")
    return joint_loss + single_loss + distill * t**2


def test_joint_label_loss_by_hand():
    # One example of class 1 among N=2 classes, M=4 rotations: 8 joint labels, target of row j is 1 * 4 + j.
    joint = torch.zeros(4, 8)
    assert joint_label_loss(joint, torch.tensor([1])).item() == pytest.approx(math.log(8))
    # Put logit 2 on each row's own joint label: CE = -log(e^2 / (e^2 + 7)) for all four rows.
    for j in range(4):
        joint[j, 4 + j] = 2.0
    expected = -math.log(math.exp(2) / (math.exp(2) + 7))
    assert joint_label_loss(joint, torch.tensor([1])).item() == pytest.approx(expected)
    assert joint_label_loss(joint, torch.tensor([1]), sum_over_transforms=True).item() == pytest.approx(
        4 * expected
    )


def test_data_augmentation_and_multi_task_losses_by_hand():
    # Two examples (labels 0, 2) of N=3 classes; zero class logits give log 3 per row.
    y = torch.tensor([0, 2])
    class_logits = torch.zeros(8, 3)
    assert data_augmentation_loss(class_logits, y).item() == pytest.approx(math.log(3))
    # Rotation head: logit 1 on the true rotation of every row -> -log(e / (e + 3)).
    rotation_logits = torch.zeros(8, 4)
    rotation_logits[torch.arange(8), torch.arange(4).repeat(2)] = 1.0
    expected = math.log(3) - math.log(math.e / (math.e + 3))
    assert multi_task_loss(class_logits, rotation_logits, y).item() == pytest.approx(expected)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_self_distillation_matches_official_formula_and_gradients(temperature: float):
    gen = torch.Generator().manual_seed(0)
    n_classes, batch = 5, 6
    joint = torch.randn(batch * 4, n_classes * 4, generator=gen, dtype=torch.float64, requires_grad=True)
    single_all = torch.randn(batch * 4, n_classes, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, n_classes, (batch,), generator=gen)

    ours = self_distillation_loss(joint, single_all[::4], labels, temperature=temperature)["total"]
    ours_grads = torch.autograd.grad(ours, (joint, single_all))
    reference = _official_sla_sd(joint, single_all, labels, 4, temperature)
    ref_grads = torch.autograd.grad(reference, (joint, single_all))
    assert ours.item() == pytest.approx(reference.item(), rel=1e-12)
    for a, b in zip(ours_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b)


def test_distillation_target_is_detached():
    gen = torch.Generator().manual_seed(1)
    joint = torch.randn(8, 12, generator=gen, requires_grad=True)
    single = torch.randn(2, 3, generator=gen, requires_grad=True)
    parts = self_distillation_loss(joint, single, torch.tensor([0, 2]))
    (grad_joint,) = torch.autograd.grad(parts["distill"], joint, allow_unused=True)
    assert grad_joint is None or grad_joint.abs().max() == 0
    # KL of a distribution with itself is zero: single logits equal to the aggregated ones.
    agg = torch.stack([joint[j::4, j::4] for j in range(4)]).mean(0).detach()
    distill = self_distillation_loss(joint, agg, torch.tensor([0, 2]))["distill"]
    assert distill.item() == pytest.approx(0.0, abs=1e-6)


def _module(method: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    cfg = compose([*TINY, f"method={method}"])
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    module = build_module(cfg, datamodule).eval()
    return module, next(iter(datamodule.val_dataloader()))


def test_single_and_aggregated_inference_of_the_joint_head():
    module, batch = _module("sla")
    assert isinstance(module, JointLabelModule)
    x = batch["x"][:16]
    with torch.no_grad():
        joint_per_rotation = [module.joint_head(module.backbone(torch.rot90(x, r, (2, 3)))) for r in range(4)]
        # Aggregated: class c averages the logit of joint label c * 4 + r on the image rotated by r.
        expected = torch.stack([z[:, r::4] for r, z in enumerate(joint_per_rotation)]).mean(0)
        torch.testing.assert_close(module.aggregated_logits(x), expected)
        # Single inference: the identity-rotation joint labels c * 4 + 0 of the unrotated image.
        torch.testing.assert_close(module(x), joint_per_rotation[0][:, ::4])


def test_heads_replace_the_backbone_classifier():
    module, batch = _module("sla_sd")
    assert isinstance(module, SelfDistillationModule)
    n = module.num_classes
    assert module.joint_head.out_features == 4 * n and module.single_head.out_features == n
    with torch.no_grad():
        assert module.backbone(batch["x"][:2]).shape == (2, module.backbone.num_features)
        assert module(batch["x"][:2]).shape == (2, n)
    mt, _ = _module("sla_mt")
    assert mt.rotation_head.out_features == 4 and mt.class_head.out_features == mt.num_classes


def test_cifar_resnet32_matches_the_official_architecture():
    model = CifarResNet(depth=32, num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 31  # stem + 3 stages x 5 blocks x 2 (option-A shortcuts have no weights)
    assert sum(p.numel() for p in model.parameters()) == 464_154  # the 0.46M of He et al. (2016), Table 6
    with torch.no_grad():
        assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 64)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(("method", "extra"), [("sla", ["method.inference=aggregated"]), ("sla_sd", [])])
def test_run_through_the_harness(method: str, extra: list[str], output_root: Path):
    record = execute(compose([*TINY, f"method={method}", *extra, f"runtime.output_root={output_root}"]))
    assert record.complete, record.reason
    metrics = record.metrics
    assert {"test/acc", "test/acc_single", "test/acc_agg"} <= set(metrics)
    chosen = metrics["test/acc_agg"] if method == "sla" else metrics["test/acc_single"]
    assert metrics["test/acc"] == chosen
    assert len(record.curves["val/acc"]) == 2


def test_baseline_and_sla_si_cells_are_separate_trainings(output_root: Path):
    """results/sla/mini has the same three Baseline and SLA+SI accuracies in another order. That is a
    coincidence of counts (about 1460 of 1528 test images), not a mix-up or an identity: the two cells have
    their own run folders and config hashes, build different modules, and the seed reaches the initial
    weights of both (their learning curves differ at every evaluation)."""
    cells = {"Baseline": ["method=ce"], "SLA+SI": ["method=sla", "method.inference=single"]}
    cfgs = {
        (row, seed): compose(
            [
                *TINY,
                f"seed={seed}",
                f"cell.row='{row}'",
                "cell.column=rotation",
                f"runtime.output_root={output_root}",
                *extra,
            ]
        )
        for row, extra in cells.items()
        for seed in (0, 2)
    }
    assert len({str(cfg.runtime.run_dir) for cfg in cfgs.values()}) == 4
    assert len({config_hash(cfg) for cfg in cfgs.values()}) == 4

    datamodule = build_datamodule(cfgs["Baseline", 0])  # the split is fixed (data.split_seed); seeds differ
    datamodule.setup("fit")
    modules = {}
    for key, cfg in cfgs.items():
        L.seed_everything(int(cfg.seed), verbose=False)  # as common.run.execute before building the module
        modules[key] = build_module(cfg, datamodule)
    for seed in (0, 2):
        base, sla = modules["Baseline", seed], modules["SLA+SI", seed]
        assert type(base) is ClassificationModule and not isinstance(base, RotationModule)
        assert isinstance(sla, JointLabelModule) and sla.inference == "single"
    for row in cells:  # the seed reaches the initial weights of both methods
        w0, w2 = (modules[row, s].backbone.state_dict() for s in (0, 2))
        assert any(not torch.equal(w0[k], w2[k]) for k in w0 if w0[k].is_floating_point())
