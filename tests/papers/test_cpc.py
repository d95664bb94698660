"""CPC: the prototype cleaner's pieces against hand-computed values and autograd, the class-aware split on
a case where a global threshold fails, DivideMix's MixMatch pieces, and runs through the harness."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.experiment import build_datamodule, build_module
from common.run import execute
from papers.cpc import (
    CPCModule,
    class_prototypes,
    clean_probability,
    ema_prototypes,
    partition_quality,
    prototype_nll,
)
from papers.cpc.mixmatch import (
    linear_rampup,
    mixmatch_losses,
    negative_entropy,
    prior_penalty,
    refine_labels,
    sharpen,
)
from tests.conftest import compose

TINY = [
    "experiment=cpc/cifar10",
    "method=cpc",
    "data.noise_type=asymmetric_cifar10",
    "data.noise_rate=0.4",
    "method.warmup_epochs=1",
    "trainer.max_epochs=3",
    "runtime.progress=false",
    "logger=none",
]
PAPER_SHAPES = [
    "experiment=cpc/cifar10",
    "scale=paper",
    "method=cpc",
    "method.warmup_epochs=1",
    "data.source=random",
    "+data.source_kwargs={num_samples:16}",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.max_epochs=2",
    "+trainer.limit_train_batches=1",
    "+trainer.limit_val_batches=1",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "runtime.checkpoint=false",
    "runtime.progress=false",
    "logger=none",
]


# ---- prototype cleaner -------------------------------------------------------------------------------
def test_class_prototypes_are_normalised_weighted_means_of_unit_features():
    features = torch.tensor([[3.0, 0.0], [0.0, 2.0], [0.0, 5.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    weights = torch.tensor([1.0, 3.0, 1.0, 0.0])
    protos, mass = class_prototypes(features, labels, 3, weights)
    # class 0: 1 * (1, 0) + 3 * (0, 1) -> (1, 3) / sqrt(10); class 1: (0, 1) (the weight-0 example drops out)
    assert torch.allclose(protos[0], torch.tensor([1.0, 3.0]) / math.sqrt(10.0))
    assert torch.allclose(protos[1], torch.tensor([0.0, 1.0]))
    assert torch.equal(protos[2], torch.zeros(2))  # no example: a zero row
    assert torch.allclose(mass, torch.tensor([4.0, 1.0, 0.0]))


def test_ema_prototypes_mix_normalise_and_keep_absent_classes():
    previous = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    current = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    present = torch.tensor([True, True, False])
    out = ema_prototypes(previous, current, 0.5, present)
    assert torch.allclose(out[0], torch.tensor([1.0, 1.0]) / math.sqrt(2.0))  # normalise(0.5 a + 0.5 b)
    assert torch.equal(out[1], current[1])  # no previous prototype: take the current one
    assert torch.equal(out[2], previous[2])  # absent from this division: unchanged


def test_prototype_nll_matches_hand_computation_and_autograd():
    features = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([1, 0])
    tau = 0.5
    nll = prototype_nll(features, labels, protos, tau)
    # example 0: cosines (1, 0) -> logits (2, 0), label 1: log(1 + e^2); example 1: cosines equal -> log 2
    assert torch.allclose(nll, torch.tensor([math.log(1 + math.e**2), math.log(2.0)], dtype=torch.float64))
    feats = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    protos = F.normalize(torch.randn(3, 4, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 1, 2, 1, 0])
    assert torch.autograd.gradcheck(lambda f: prototype_nll(f, labels, protos, 0.2).sum(), (feats,))
    # The same loss written independently: -log softmax of cosine / tau.
    cos = (feats / feats.norm(dim=1, keepdim=True)) @ protos.T / 0.2
    independent = -(cos.gather(1, labels[:, None]).squeeze(1) - torch.logsumexp(cos, dim=1))
    ours = prototype_nll(feats, labels, protos, 0.2)
    g_ours = torch.autograd.grad(ours.sum(), feats, retain_graph=True)[0]
    g_ind = torch.autograd.grad(independent.sum(), feats)[0]
    assert torch.allclose(ours, independent) and torch.allclose(g_ours, g_ind)


def test_class_aware_split_finds_the_clean_examples_of_a_hard_class():
    rng = np.random.default_rng(0)
    # Class 0 is easy (clean losses ~0.1, noisy ~1.5), class 1 is hard (clean ~2.0, noisy ~4.0): one global
    # threshold flags all of class 1 as noisy, one GMM per class separates both.
    clean0, noisy0 = rng.normal(0.1, 0.05, 300), rng.normal(1.5, 0.1, 100)
    clean1, noisy1 = rng.normal(2.0, 0.1, 300), rng.normal(4.0, 0.1, 100)
    losses = torch.tensor(np.concatenate([clean0, noisy0, clean1, noisy1]).clip(0))
    labels = torch.tensor([0] * 400 + [1] * 400)
    truly_clean = np.array(([True] * 300 + [False] * 100) * 2)
    quality = {}
    for cleaner in ("global_gmm", "per_class_gmm"):
        selected = clean_probability(cleaner, losses, labels, 2) > 0.5
        quality[cleaner] = partition_quality(selected, truly_clean, labels.numpy(), 2)
    assert quality["per_class_gmm"]["f1"] > 99.0 and quality["per_class_gmm"]["f1_worst_class"] > 99.0
    assert quality["global_gmm"]["f1_worst_class"] < 1.0  # the hard class is pruned wholesale
    # The cpc score adds the prototype loss; with zero prototype losses it is the per-class split.
    cpc = clean_probability("cpc", losses, labels, 2, prototype_losses=torch.zeros_like(losses))
    assert np.allclose(cpc, clean_probability("per_class_gmm", losses, labels, 2))
    with pytest.raises(ValueError, match="prototype_losses"):
        clean_probability("cpc", losses, labels, 2)


def test_partition_quality_hand_computed():
    selected = np.array([1, 1, 1, 0, 0, 1], bool)
    truly_clean = np.array([1, 1, 0, 1, 0, 1], bool)
    labels = np.array([0, 0, 0, 1, 1, 1])
    q = partition_quality(selected, truly_clean, labels, 2)
    # 3 of 4 selected are clean; 3 of 4 clean are selected; class 0: P 2/3 R 1 -> F1 0.8; class 1: P 1 R 1/2
    assert q["precision"] == pytest.approx(75.0) and q["recall"] == pytest.approx(75.0)
    assert q["f1"] == pytest.approx(75.0) and q["selected"] == pytest.approx(400.0 / 6)
    assert q["f1_worst_class"] == pytest.approx(100.0 * 2 * 0.5 / 1.5)


# ---- DivideMix's MixMatch step ------------------------------------------------------------------------
def test_sharpen_refine_ramp_and_penalties_hand_computed():
    p = torch.tensor([[0.5, 0.25, 0.25]])
    assert torch.allclose(sharpen(p, 0.5), torch.tensor([[4.0, 1.0, 1.0]]) / 6.0)  # squares, renormalised
    refined = refine_labels(torch.tensor([[0.2, 0.8]]), torch.tensor([0]), torch.tensor([0.5]), 1.0)
    assert torch.allclose(refined, torch.tensor([[0.6, 0.4]]))  # 0.5 * onehot + 0.5 * p
    assert (
        linear_rampup(10.0, 10) == 0.0 and linear_rampup(18.0, 10) == 0.5 and linear_rampup(40.0, 10) == 1.0
    )
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    mean = torch.tensor([0.7, 0.3])
    assert prior_penalty(logits) == pytest.approx(float(torch.sum(0.5 * torch.log(0.5 / mean))))
    probs = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    assert negative_entropy(logits) == pytest.approx(float((probs * probs.log()).sum(1).mean()))


def test_mixmatch_losses_match_formulas_and_gradients():
    torch.manual_seed(0)
    logits = torch.randn(6, 4, requires_grad=True)
    targets = F.softmax(torch.randn(6, 4), dim=1)
    lx, lu = mixmatch_losses(logits, targets, 4)
    with torch.no_grad():
        assert lx.item() == pytest.approx(float(-(F.log_softmax(logits[:4], 1) * targets[:4]).sum(1).mean()))
        assert lu.item() == pytest.approx(float(((F.softmax(logits[4:], 1) - targets[4:]) ** 2).mean()))
    # Soft cross entropy: d Lx / d logits = (softmax - target) / n for the labeled rows, zero elsewhere.
    (grad,) = torch.autograd.grad(lx, logits)
    expected = torch.zeros(6, 4)
    expected[:4] = (F.softmax(logits[:4].detach(), 1) - targets[:4]) / 4
    assert torch.allclose(grad, expected, atol=1e-6)
    empty_x, only_u = mixmatch_losses(logits, targets, 0)
    assert empty_x.item() == 0.0 and only_u.item() > 0


# ---- through the harness -----------------------------------------------------------------------------
def test_cpc_run_records_partition_quality(output_root: Path):
    record = execute(
        compose([*TINY, "cell.row=CPC", "cell.column=asym-40%", f"runtime.output_root={output_root}"])
    )
    assert record.complete, record.reason
    assert len(record.curves["val/acc"]) == 3
    assert record.metrics["partition/divisions"] == 2.0  # epochs 1 and 2 divide, epoch 0 warms up
    assert len(record.curves["partition/f1"]) == 2
    for key in ("f1_first", "precision_last", "recall_mean", "f1_worst_class_first"):
        assert 0.0 <= record.metrics[f"partition/{key}"] <= 100.0


def test_divide_sets_posterior_mask_and_prototypes():
    cfg = compose([*TINY, "method.proto_momentum=0.0"])
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    assert isinstance(module, CPCModule) and module.cleaner == "cpc"
    loader = datamodule.loader(datamodule.train_dataset(), shuffle=False, train=False)
    quality = module.divide(loader)
    assert torch.equal(module.clean_mask, module.clean_prob > 0.5)
    assert torch.allclose(module.prototypes.norm(dim=1), torch.ones(datamodule.num_classes))
    # Momentum 0 and all-one weights at the first division: prototypes are the plain class means.
    feats = torch.cat([module.backbone.forward_features(b["x"]) for b in loader])
    labels = torch.as_tensor(datamodule.train_labels)
    expected, _ = class_prototypes(feats.detach(), labels, datamodule.num_classes)
    assert torch.allclose(module.prototypes, expected, atol=1e-5)
    assert quality["selected"] == pytest.approx(100.0 * float(module.clean_mask.float().mean()))
    state = module.state_dict()
    assert {"clean_prob", "clean_mask", "prototypes"} <= set(state)  # resumed runs keep the division


@pytest.mark.slow
def test_ssl_step_runs_on_the_paper_backbone(output_root: Path):
    """The divide-and-MixMatch step at the paper's shapes (PreAct ResNet-18, 3x32x32), on random inputs."""
    cell = ["cell.row=CPC", "cell.column=x", f"runtime.output_root={output_root}"]
    record = execute(compose([*PAPER_SHAPES, *cell]))
    assert record.complete, record.reason
    assert record.metrics["partition/divisions"] == 1.0
