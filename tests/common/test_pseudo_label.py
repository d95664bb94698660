"""Tests of common.lit.pseudo_label on hand-computed cases (FixMatch, ramps, FlexMatch, FreeMatch, DA)."""

from __future__ import annotations

import math

import pytest
import torch

from common.lit.pseudo_label import (
    DistributionAlignment,
    FlexMatchThreshold,
    FreeMatchThreshold,
    confidence_pseudo_labels,
    scheduled_threshold,
)


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# ------------------------------------------------------------------------------------------ fixed
def test_confidence_threshold_is_inclusive() -> None:
    probs = t([[0.96, 0.04], [0.6, 0.4], [0.05, 0.95], [0.3, 0.7]])
    labels, mask = confidence_pseudo_labels(probs, threshold=0.95)
    assert labels.tolist() == [0, 0, 1, 1]
    assert mask.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert mask.dtype == probs.dtype


def test_confidence_detaches() -> None:
    logits = torch.randn(5, 3, requires_grad=True)
    _, mask = confidence_pseudo_labels(logits.softmax(1), 0.0)
    assert not mask.requires_grad and mask.tolist() == [1.0] * 5


@pytest.mark.parametrize(
    "bad", [torch.rand(4), torch.rand(4, 1), torch.ones(2, 3, dtype=torch.long), [[0.5]]]
)
def test_confidence_bad_probs(bad: object) -> None:
    with pytest.raises(ValueError):
        confidence_pseudo_labels(bad)  # type: ignore[arg-type]


def test_confidence_bad_threshold() -> None:
    with pytest.raises(ValueError):
        confidence_pseudo_labels(t([[0.5, 0.5]]), 1.5)


# ------------------------------------------------------------------------------------------ ramps
def test_linear_and_cosine_ramps() -> None:
    assert scheduled_threshold(0, 100, 0.5, 0.9) == pytest.approx(0.5)
    assert scheduled_threshold(50, 100, 0.5, 0.9) == pytest.approx(0.7)
    assert scheduled_threshold(100, 100, 0.5, 0.9) == pytest.approx(0.9)
    assert scheduled_threshold(500, 100, 0.5, 0.9) == pytest.approx(0.9)
    assert scheduled_threshold(50, 100, 0.5, 0.9, "cosine") == pytest.approx(0.7)
    quarter = 0.5 + 0.4 * (1 - math.cos(math.pi / 4)) / 2
    assert scheduled_threshold(25, 100, 0.5, 0.9, "cosine") == pytest.approx(quarter)
    # A decreasing ramp is allowed.
    assert scheduled_threshold(50, 100, 0.9, 0.5) == pytest.approx(0.7)


@pytest.mark.parametrize(
    "args", [(-1, 10, 0.5, 0.9), (0, 0, 0.5, 0.9), (0, 10, 1.5, 0.9), (0, 10, 0.5, 0.9, "step")]
)
def test_ramp_bad_arguments(args: tuple) -> None:
    with pytest.raises(ValueError):
        scheduled_threshold(*args)


# ------------------------------------------------------------------------------------------ FlexMatch
def _flex_batch() -> tuple[torch.Tensor, torch.Tensor]:
    # Examples 0, 1 confidently class 0; example 2 unsure (class 1 with 0.5).
    probs = t([[0.95, 0.03, 0.02], [0.92, 0.05, 0.03], [0.3, 0.5, 0.2]])
    return probs, torch.tensor([0, 1, 2])


def test_flexmatch_warmup_by_hand() -> None:
    flex = FlexMatchThreshold(num_classes=3, num_unlabeled=6, threshold=0.9, warmup=True)
    probs, idx = _flex_batch()
    labels, mask = flex(probs, idx)
    # Before any selection beta = 0, so every threshold is 0 and everything passes.
    assert labels.tolist() == [0, 0, 1] and mask.tolist() == [1.0, 1.0, 1.0]
    assert flex.selected_label.tolist() == [0, 0, -1, -1, -1, -1]
    # sigma = (2, 0, 0), unused = 4: beta = 2 / max(2, 4) = 0.5; convex 0.5 / 1.5 = 1/3; tau * 1/3 = 0.3.
    torch.testing.assert_close(flex.learning_effect, torch.tensor([0.5, 0.0, 0.0]))
    torch.testing.assert_close(flex.class_thresholds(), torch.tensor([0.3, 0.0, 0.0]))
    _, mask = flex.mask(t([[0.31, 0.29, 0.4], [0.5, 0.3, 0.2], [0.29, 0.0, 0.0]]))
    assert mask.tolist() == [1.0, 1.0, 0.0]


def test_flexmatch_without_warmup_and_mappings() -> None:
    probs, idx = _flex_batch()
    flex = FlexMatchThreshold(3, 6, threshold=0.9, warmup=False)
    flex(probs, idx)
    # beta = sigma / max sigma = (1, 0, 0): class 0 threshold is the full tau.
    torch.testing.assert_close(flex.class_thresholds(), torch.tensor([0.9, 0.0, 0.0]))
    _, mask = flex.mask(t([[0.5, 0.3, 0.2]]))
    assert mask.tolist() == [0.0]

    linear = FlexMatchThreshold(3, 6, threshold=0.9, mapping="linear")
    concave = FlexMatchThreshold(3, 6, threshold=0.9, mapping="concave")
    for sel in (linear, concave):
        sel.update(probs, idx)
    torch.testing.assert_close(linear.class_thresholds()[0], torch.tensor(0.45))
    torch.testing.assert_close(concave.class_thresholds()[0], torch.tensor(0.9 * math.log2(1.5)))


def test_flexmatch_relabels_and_checkpoints() -> None:
    flex = FlexMatchThreshold(3, 4, threshold=0.9)
    flex.update(t([[0.95, 0.03, 0.02]]), torch.tensor([3]))
    flex.update(t([[0.01, 0.01, 0.98], [0.5, 0.4, 0.1]]), torch.tensor([3, 0]))
    # Example 3 is now class 2; example 0 stayed unselected (0.5 < 0.9).
    assert flex.selected_label.tolist() == [-1, -1, -1, 2]
    torch.testing.assert_close(flex.learning_effect, torch.tensor([0.0, 0.0, 1 / 3]))
    restored = FlexMatchThreshold(3, 4, threshold=0.9)
    restored.load_state_dict(flex.state_dict())
    assert torch.equal(restored.selected_label, flex.selected_label)
    assert torch.equal(restored.learning_effect, flex.learning_effect)


def test_flexmatch_bad_input() -> None:
    flex = FlexMatchThreshold(3, 4)
    with pytest.raises(ValueError, match="indices"):
        flex(t([[0.9, 0.05, 0.05]]), torch.tensor([4]))
    with pytest.raises(ValueError, match="indices"):
        flex(t([[0.9, 0.05, 0.05]]), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="classes"):
        flex(t([[0.9, 0.1]]), torch.tensor([0]))
    with pytest.raises(ValueError):
        FlexMatchThreshold(1, 4)
    with pytest.raises(ValueError):
        FlexMatchThreshold(3, 0)
    with pytest.raises(ValueError):
        FlexMatchThreshold(3, 4, mapping="quadratic")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ FreeMatch
def test_freematch_by_hand() -> None:
    free = FreeMatchThreshold(num_classes=2, momentum=0.5)
    # Initial tau = p(c) = 1/C.
    torch.testing.assert_close(free.class_thresholds(), torch.tensor([0.5, 0.5]))
    labels, mask = free(t([[0.9, 0.1], [0.7, 0.3]]))
    # tau = 0.5 * 0.5 + 0.5 * mean(0.9, 0.7) = 0.65; p = 0.5 * (0.5, 0.5) + 0.5 * (0.8, 0.2) = (0.65, 0.35).
    torch.testing.assert_close(free.global_threshold, torch.tensor(0.65))
    torch.testing.assert_close(free.class_expectation, torch.tensor([0.65, 0.35]))
    torch.testing.assert_close(free.label_hist, torch.tensor([0.75, 0.25]))
    assert labels.tolist() == [0, 0] and mask.tolist() == [1.0, 1.0]
    # Class thresholds 0.65 * (1, 0.35 / 0.65) = (0.65, 0.35).
    torch.testing.assert_close(free.class_thresholds(), torch.tensor([0.65, 0.35]))
    labels, mask = free.mask(t([[0.6, 0.4], [0.38, 0.62], [0.66, 0.34]]))
    assert labels.tolist() == [0, 1, 0] and mask.tolist() == [0.0, 1.0, 1.0]


def test_freematch_checkpoint_and_errors() -> None:
    free = FreeMatchThreshold(3)
    free(torch.softmax(torch.randn(8, 3), 1))
    restored = FreeMatchThreshold(3)
    restored.load_state_dict(free.state_dict())
    torch.testing.assert_close(restored.class_thresholds(), free.class_thresholds())
    with pytest.raises(ValueError):
        FreeMatchThreshold(3, momentum=1.5)
    with pytest.raises(ValueError):
        free(t([[0.5, 0.5]]))


# ------------------------------------------------------------------------------------------ DA
def test_distribution_alignment_by_hand() -> None:
    da = DistributionAlignment(num_classes=2, momentum=0.5, eps=0.0)
    probs = t([[0.8, 0.2], [0.6, 0.4]])
    aligned = da(probs)
    # First batch: p_model = batch mean (0.7, 0.3); row 0 -> (0.8 * 0.5 / 0.7, 0.2 * 0.5 / 0.3), renormalised.
    torch.testing.assert_close(da.p_model, torch.tensor([0.7, 0.3]))
    r0 = torch.tensor([0.8 / 0.7, 0.2 / 0.3])
    torch.testing.assert_close(aligned[0], r0 / r0.sum())
    torch.testing.assert_close(aligned.sum(1), torch.ones(2))
    # Second batch: EMA with momentum 0.5 -> (0.7 + 0.5) / 2 = 0.6.
    da(t([[0.5, 0.5], [0.5, 0.5]]))
    torch.testing.assert_close(da.p_model, torch.tensor([0.6, 0.4]))
    # update=False leaves p_model alone.
    da(t([[1.0, 0.0]]), update=False)
    torch.testing.assert_close(da.p_model, torch.tensor([0.6, 0.4]))


def test_distribution_alignment_target_and_checkpoint() -> None:
    da = DistributionAlignment(2, momentum=0.9, p_target=[3.0, 1.0], eps=0.0)
    torch.testing.assert_close(da.p_target, torch.tensor([0.75, 0.25]))
    uniform = t([[0.5, 0.5]])
    aligned = da(uniform)
    torch.testing.assert_close(aligned, t([[0.75, 0.25]]))
    restored = DistributionAlignment(2, p_target=[3.0, 1.0])
    restored.load_state_dict(da.state_dict())
    assert bool(restored.initialized) and torch.equal(restored.p_model, da.p_model)
    with pytest.raises(ValueError):
        DistributionAlignment(2, p_target=[1.0, -1.0])
    with pytest.raises(ValueError):
        DistributionAlignment(2, p_target=[1.0, 1.0, 1.0])
