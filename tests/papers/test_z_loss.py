"""The Z-loss paper: loss values on hand-computed cases, gradients against an independent implementation and
the closed form, shift/scale invariance, spherical-family membership, top-k against torchmetrics, the
next-token data and a smoke run of each table through the harness."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from common.backbones import build_backbone
from common.run import execute
from papers.z_loss import losses
from papers.z_loss.data import (
    NextTokenDataModule,
    build_vocabulary,
    encode_stream,
    windows_from_sequences,
)
from papers.z_loss.module import (
    SCALE,
    SHIFT,
    LogSoftmaxModule,
    LogSphericalSoftmaxModule,
    LogTaylorSoftmaxModule,
    ZLossModule,
    target_rank,
)
from tests.conftest import compose

LOGITS = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64)
TARGET = torch.tensor([2])
SPHERICAL = {
    "z_loss": lambda o, t: losses.z_loss(o, t, a=0.7, b=3.0),
    "mse": losses.mse_loss,
    "log_taylor_softmax": losses.log_taylor_softmax_loss,
    "log_spherical_softmax": losses.log_spherical_softmax_loss,
}


def test_losses_on_a_hand_computed_case():
    # Logits (0, 1, 2), target 2: mean 1, population std sqrt(2/3), so z_c = 1 / sqrt(2/3) = sqrt(1.5).
    z_c = math.sqrt(1.5)
    assert losses.z_loss(LOGITS, TARGET, a=1.0, b=0.0).item() == pytest.approx(math.log1p(math.exp(-z_c)))
    assert losses.z_loss(LOGITS, TARGET, a=2.0, b=1.0).item() == pytest.approx(
        math.log1p(math.exp(2.0 * (1.0 - z_c))) / 2.0
    )
    # Taylor softmax: f(o) = 1 + o + o^2/2 = (1, 2.5, 5), so p_c = 5 / 8.5.
    assert losses.log_taylor_softmax_loss(LOGITS, TARGET).item() == pytest.approx(math.log(8.5 / 5.0))
    # Squared error to the one-hot (0, 0, 1): 0 + 1 + 1.
    assert losses.mse_loss(LOGITS, TARGET).item() == pytest.approx(2.0)
    # Spherical softmax: (o_c^2 + eps) / sum_k (o_k^2 + eps) = 4.01 / 5.03.
    assert losses.log_spherical_softmax_loss(LOGITS, TARGET, eps=0.01).item() == pytest.approx(
        math.log(5.03 / 4.01)
    )
    assert losses.log_softmax_loss(LOGITS, TARGET).item() == pytest.approx(
        math.log(1.0 + math.e + math.e**2) - 2.0
    )


def test_losses_average_over_the_batch():
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, -1.0, 0.5]], dtype=torch.float64)
    target = torch.tensor([2, 1])
    for name, loss_fn in {**SPHERICAL, "log_softmax": losses.log_softmax_loss}.items():
        each = [loss_fn(logits[i : i + 1], target[i : i + 1]) for i in range(2)]
        assert loss_fn(logits, target).item() == pytest.approx(float(sum(each) / 2)), name


def reference_z_loss(logits: torch.Tensor, target: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """The Z-loss written independently: centred logits over their population standard deviation."""
    centred = logits - logits.mean(dim=1, keepdim=True)
    z = centred / centred.square().mean(dim=1, keepdim=True).sqrt()
    z_c = z[torch.arange(len(target)), target]
    return (torch.log1p(torch.exp(a * (b - z_c))) / a).mean()


@pytest.mark.parametrize(("a", "b"), [(1.0, 0.0), (0.3, 10.0), (5.0, 2.0)])
def test_z_loss_gradient_matches_independent_implementation_and_closed_form(a: float, b: float):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 40, generator=generator, dtype=torch.float64) * 3 + 1
    target = torch.randint(40, (6,), generator=generator)
    ours = logits.clone().requires_grad_(True)
    theirs = logits.clone().requires_grad_(True)
    loss = losses.z_loss(ours, target, a=a, b=b)
    reference = reference_z_loss(theirs, target, a, b)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-12)
    loss.backward()
    reference.backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-10, atol=1e-12)
    # dL/do_k = -sigmoid(a (b - z_c)) / sigma * (1[k = c] - 1/D - z_c z_k / D), averaged over the batch.
    n, d = logits.shape
    sigma = logits.std(dim=1, unbiased=False, keepdim=True)
    z = (logits - logits.mean(dim=1, keepdim=True)) / sigma
    z_c = z[torch.arange(n), target].unsqueeze(1)
    one_hot = torch.nn.functional.one_hot(target, d).double()
    closed = -torch.sigmoid(a * (b - z_c)) / sigma * (one_hot - 1.0 / d - z_c * z / d) / n
    torch.testing.assert_close(ours.grad, closed, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda o: losses.z_loss(o, target, a=a, b=b), (logits.clone().requires_grad_(),)
    )


def test_shift_and_scale_invariance():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 500, generator=generator, dtype=torch.float64)
    target = torch.randint(500, (8,), generator=generator)
    base = losses.z_loss(logits, target, a=0.3, b=10.0)
    for alpha in (0.01, 0.5, 3.0, 100.0):
        for beta in (-7.0, 0.0, 5.0, 1e3):
            moved = losses.z_loss(alpha * logits + beta, target, a=0.3, b=10.0)
            # S2/D - mu^2 cancels when |mean| >> std (1e3 vs 1e-2 here): exact up to that rounding.
            assert moved.item() == pytest.approx(base.item(), rel=1e-7), (alpha, beta)
    # A negative scale reverses the ranking, so it is not an invariance.
    assert abs(losses.z_loss(-logits, target, a=0.3, b=10.0).item() - base.item()) > 0.1
    # Log-softmax: shift invariant, not scale invariant.
    ce = losses.log_softmax_loss(logits, target).item()
    assert losses.log_softmax_loss(logits + 5.0, target).item() == pytest.approx(ce, rel=1e-12)
    assert abs(losses.log_softmax_loss(3.0 * logits, target).item() - ce) > 0.1
    # MSE and log-Taylor-softmax: neither; log-spherical-softmax: scale invariant only as eps -> 0.
    for loss_fn in (losses.mse_loss, losses.log_taylor_softmax_loss):
        value = loss_fn(logits, target).item()
        assert abs(loss_fn(logits + 5.0, target).item() - value) > 0.1
        assert abs(loss_fn(3.0 * logits, target).item() - value) > 0.1
    spherical = losses.log_spherical_softmax_loss(logits, target, eps=1e-12).item()
    assert losses.log_spherical_softmax_loss(3.0 * logits, target, eps=1e-12).item() == pytest.approx(
        spherical
    )
    assert abs(losses.log_spherical_softmax_loss(logits + 5.0, target, eps=1e-12).item() - spherical) > 0.1


def test_invariances_of_the_run_metrics_on_float32_logits():
    """The former claims zloss_shift_invariant, zloss_scale_invariant and log_softmax_not_scale_invariant
    of conf/papers/z_loss/paper.yaml: properties of the losses' definitions, which no run can fail. Checked on
    float32 logits of the mini vocabulary size with the table's Z-loss (a = 0.3, b = 10) and the runs'
    transformations (o + SHIFT, SCALE * o, SCALE * o + SHIFT)."""
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(64, 2000, generator=generator) * 2.0 - 1.0
    target = torch.randint(2000, (64,), generator=generator)
    z_loss = partial(losses.z_loss, a=0.3, b=10.0)
    base = z_loss(logits, target)
    assert (z_loss(logits + SHIFT, target) - base).abs().item() <= 1e-4
    assert (z_loss(SCALE * logits, target) - base).abs().item() <= 1e-4
    assert (z_loss(SCALE * logits + SHIFT, target) - base).abs().item() < 1e-6
    ce = losses.log_softmax_loss(logits, target)
    assert (losses.log_softmax_loss(logits + SHIFT, target) - ce).abs().item() <= 1e-4
    assert (losses.log_softmax_loss(SCALE * logits, target) - ce).abs().item() >= 0.01
    assert (losses.log_softmax_loss(SCALE * logits + SHIFT, target) - ce).abs().item() >= 0.01


def test_spherical_losses_depend_only_on_target_sum_and_sum_of_squares():
    # Rotating three non-target logits about the (1, 1, 1) axis keeps o_c, S1 and S2 but changes the logits.
    logits = torch.tensor([[0.3, -1.2, 2.0, 0.7, 1.5]], dtype=torch.float64)
    target = torch.tensor([0])
    axis = torch.ones(3, dtype=torch.float64) / math.sqrt(3.0)
    theta = 1.0
    cross = torch.tensor([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    rotation = (
        math.cos(theta) * torch.eye(3, dtype=torch.float64)
        + math.sin(theta) * cross.double()
        + (1 - math.cos(theta)) * torch.outer(axis, axis)
    )
    rotated = logits.clone()
    rotated[0, 1:4] = rotation @ logits[0, 1:4]
    assert not torch.allclose(rotated, logits)
    for got, want in zip(
        losses.spherical_statistics(rotated, target), losses.spherical_statistics(logits, target), strict=True
    ):
        torch.testing.assert_close(got, want)
    for name, loss_fn in SPHERICAL.items():
        assert loss_fn(rotated, target).item() == pytest.approx(loss_fn(logits, target).item(), rel=1e-12), (
            name
        )
    # The log-softmax is not spherical: it needs every exp(o_k).
    assert (
        abs(losses.log_softmax_loss(rotated, target).item() - losses.log_softmax_loss(logits, target).item())
        > 1e-3
    )


def test_z_loss_is_finite_for_equal_logits_and_rejects_bad_arguments():
    value = losses.z_loss(torch.zeros(2, 7), torch.tensor([0, 3]), a=2.0, b=1.5)
    assert value.item() == pytest.approx(math.log1p(math.exp(3.0)) / 2.0)
    with pytest.raises(ValueError, match="a > 0"):
        losses.z_loss(LOGITS, TARGET, a=0.0)
    with pytest.raises(ValueError, match="eps > 0"):
        losses.log_spherical_softmax_loss(LOGITS, TARGET, eps=0.0)
    with pytest.raises(ValueError, match="integer class indices"):
        losses.mse_loss(LOGITS, TARGET.double())


def test_z_loss_half_precision_matches_float32():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(16, 300, generator=generator) * 4 + 20  # a large mean: S2/D - mu^2 cancels
    target = torch.randint(300, (16,), generator=generator)
    full = losses.z_loss(logits, target, a=1.0, b=5.0)
    half = losses.z_loss(logits.bfloat16(), target, a=1.0, b=5.0)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), rel=0.05)


def test_topk_from_target_rank_matches_torchmetrics():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(256, 60, generator=generator)
    target = torch.randint(60, (256,), generator=generator)
    rank = target_rank(logits, target)
    for k in (1, 5, 10, 20):
        reference = MulticlassAccuracy(num_classes=60, top_k=k, average="micro")(logits, target)
        assert (rank < k).float().mean().item() == pytest.approx(reference.item(), abs=1e-6), k
    # A tie with the target counts against it: constant logits put every target last.
    assert target_rank(torch.zeros(2, 4), torch.tensor([0, 3])).tolist() == [3, 3]


def test_each_loss_ranks_classes_by_what_it_models():
    def module(cls: type, **kwargs: float):
        optimizer = partial(torch.optim.SGD, lr=0.1)
        return cls(
            torch.nn.Linear(2, 4),
            num_classes=4,
            num_train_examples=8,
            optimizer=optimizer,
            top_k=[1, 2],
            **kwargs,
        )

    logits = torch.tensor([[-4.0, 0.5, 1.0, 0.0]])
    # Increasing in the logit: rank by the logits (class 2 first, class 0 last).
    for cls, kwargs in ((LogSoftmaxModule, {}), (ZLossModule, {"a": 1.0, "b": 5.0})):
        assert target_rank(module(cls, **kwargs).scores(logits), torch.tensor([0])).item() == 3
    # 1 + o + o^2/2 and o^2 + eps are largest at o = -4: the Taylor and spherical softmaxes put class 0 first.
    assert target_rank(module(LogTaylorSoftmaxModule).scores(logits), torch.tensor([0])).item() == 0
    spherical = module(LogSphericalSoftmaxModule, eps=0.01)
    assert target_rank(spherical.scores(logits), torch.tensor([0])).item() == 0


def test_windows_vocabulary_and_stream():
    windows = windows_from_sequences(torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]), context_size=2)
    assert windows.x.tolist()[:3] == [[1, 2], [2, 3], [3, 4]] and windows.y.tolist() == [3, 4, 5, 8, 9, 10]
    sentences = ["the cat sat", "the <unk> ran", "the cat"]
    vocabulary = build_vocabulary(sentences)
    assert vocabulary["the"] == 0 and vocabulary["<eos>"] == 1  # most frequent first
    stream = encode_stream(["the dog sat"], vocabulary)
    assert stream.tolist() == [vocabulary["the"], vocabulary["<unk>"], vocabulary["sat"], vocabulary["<eos>"]]
    capped = build_vocabulary(["a a a b b c d"], max_size=3)
    assert capped == {"a": 0, "b": 1, "<unk>": 2}


def test_markov_source_depends_on_data_seed_only_and_has_context():
    def corpus(seed: int, data_seed: int) -> NextTokenDataModule:
        module = NextTokenDataModule(
            seed=seed, data_seed=data_seed, vocab_size=300, num_train_tokens=3000, num_validation_tokens=500,
            num_test_tokens=3000,
        )  # fmt: skip
        module.setup("fit")
        return module

    first, other_run, other_data = corpus(0, 0), corpus(5, 0), corpus(0, 1)
    assert first.split_hash == other_run.split_hash != other_data.split_hash
    assert first.num_classes == 300 and first.splits["train"].x.shape[1] == 3
    # The source's own predictions beat the frequency (unigram) ranking: the context carries information.
    test = first.splits["test"]
    oracle = (first.oracle_logits("test").argmax(1) == test.y).float().mean()
    unigram = (test.y == 0).float().mean()  # token 0 is the most frequent word
    assert oracle > unigram + 0.05


def test_mini_task_is_uncertain_like_language():
    module = NextTokenDataModule(
        **{k: v for k, v in compose(["experiment=z_loss/lm_topk"]).data.items() if k != "datamodule"}
    )
    module.setup("fit")
    test = module.splits["test"]
    oracle = target_rank(module.oracle_logits("test"), test.y)
    frequency = target_rank(module.teacher.log_prior.expand(len(test.y), -1), test.y)
    # Even the generating source misses the next word at top-1 most of the time, yet it ranks far better than
    # word frequency alone: a context-dependent, uncertain next-word distribution.
    assert (oracle < 1).float().mean() < 0.5
    assert (oracle < 10).float().mean() > (frequency < 10).float().mean() + 0.2


def test_nplm_backbone_shapes():
    model = build_backbone("zl_nplm", num_classes=50, context_size=4, embedding_dim=8, hidden_dims=[16])
    assert model(torch.randint(50, (3, 4))).shape == (3, 50) and model.num_features == 16
    bag = build_backbone("zl_nplm", num_classes=50, context_size=4, embedding_dim=8, combine="mean")
    assert bag(torch.randint(50, (3, 4))).shape == (3, 50) and bag.num_features == 8
    with pytest.raises(ValueError, match="token windows"):
        model(torch.randint(50, (3, 5)))


TINY = ["data.num_train_tokens=2000", "data.num_validation_tokens=600", "data.num_test_tokens=600",
        "trainer.max_epochs=2", "runtime.progress=false", "logger=none"]  # fmt: skip


def test_smoke_run_records_topk_and_invariance(output_root: Path):
    record = execute(
        compose(["experiment=z_loss/lm_topk", "method=z_loss", *TINY, f"runtime.output_root={output_root}"])
    )
    assert record.complete, record.reason
    metrics = record.metrics
    assert metrics["test/top1"] <= metrics["test/top5"] <= metrics["test/top10"] <= metrics["test/top20"]
    assert metrics["test/acc"] == metrics["test/top1"]
    assert metrics["test/loss_change_shift"] < 1e-4 and metrics["test/loss_change_scale"] < 1e-4
    assert metrics["test/loss_change_affine"] < 1e-4
    assert len(record.curves["val/top20"]) == 2


def test_smoke_run_of_the_hyperparameter_table_reads_the_validation_split(output_root: Path):
    overrides = [
        "experiment=z_loss/zloss_ab",
        "method=zl_log_softmax",
        *TINY,
        f"runtime.output_root={output_root}",
    ]
    record = execute(compose(overrides))
    assert record.complete, record.reason
    assert "validation/top5" in record.metrics and "test/top5" not in record.metrics
    assert record.metrics["validation/loss_change_shift"] < 1e-4  # log-softmax is shift invariant
    assert record.metrics["validation/loss_change_scale"] > 1e-3  # but not scale invariant
    assert record.metrics["validation/loss_change_affine"] > 1e-3
