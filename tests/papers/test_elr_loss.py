"""ELR loss (papers/elr/loss.py) against hand computations, an independent reference and Lemma 2."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from papers.elr import ELRLoss, elr_regularizer

BETA, LAM = 0.7, 3.0


def _logits_for(*rows: tuple[float, ...]) -> torch.Tensor:
    """Logits whose softmax is exactly the given probability rows (log of each row)."""
    return torch.tensor([[math.log(p) for p in row] for row in rows], dtype=torch.float64)


# Two examples, 3 classes; probabilities chosen so that every number below is easy to check by hand.
P_A = (0.5, 0.25, 0.25)  # example at dataset position 2, label 0
P_B = (0.2, 0.3, 0.5)  # example at dataset position 0, label 2
LABELS = torch.tensor([0, 2])
INDEX = torch.tensor([2, 0])


def _loss(num_examples: int = 3) -> ELRLoss:
    return ELRLoss(num_examples=num_examples, num_classes=3, beta=BETA, lam=LAM).double()


def test_value_first_step_matches_hand_computation() -> None:
    loss = _loss()(_logits_for(P_A, P_B), LABELS, INDEX)
    # Targets start at zero, so after the update t_i = (1 - beta) p_i = 0.3 p_i and <t_i, p_i> = 0.3 |p_i|^2.
    # |P_A|^2 = 0.25 + 0.0625 + 0.0625 = 0.375 -> s_A = 0.1125
    # |P_B|^2 = 0.04 + 0.09 + 0.25 = 0.38 -> s_B = 0.114
    # CE: -log 0.5 for both examples (label 0 of A has p = 0.5, label 2 of B has p = 0.5).
    expected = math.log(2.0) + 3.0 * (math.log(1 - 0.1125) + math.log(1 - 0.114)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_target_update_after_two_steps() -> None:
    elr = _loss(num_examples=4)
    elr(_logits_for(P_A, P_B), LABELS, INDEX)
    p_a2, p_b2 = (0.1, 0.6, 0.3), (0.25, 0.25, 0.5)
    loss2 = elr(_logits_for(p_a2, p_b2), LABELS, INDEX)
    # t = 0.7 * (0.3 p_first) + 0.3 p_second = 0.21 p_first + 0.3 p_second.
    t_a = [0.21 * a + 0.3 * b for a, b in zip(P_A, p_a2, strict=True)]  # [0.135, 0.2325, 0.1425]
    t_b = [0.21 * a + 0.3 * b for a, b in zip(P_B, p_b2, strict=True)]  # [0.117, 0.138, 0.255]
    torch.testing.assert_close(elr.target[2], torch.tensor(t_a, dtype=torch.float64))
    torch.testing.assert_close(elr.target[0], torch.tensor(t_b, dtype=torch.float64))
    # Untouched rows stay at their initial zeros.
    assert torch.count_nonzero(elr.target[1]) == 0 and torch.count_nonzero(elr.target[3]) == 0
    # The second loss uses the updated targets (update, then loss).
    s_a = sum(t * p for t, p in zip(t_a, p_a2, strict=True))
    s_b = sum(t * p for t, p in zip(t_b, p_b2, strict=True))
    expected = (-math.log(0.1) - math.log(0.5)) / 2 + 3.0 * (math.log(1 - s_a) + math.log(1 - s_b)) / 2
    assert loss2.item() == pytest.approx(expected, abs=1e-12)


def test_target_uses_clamped_and_renormalised_probabilities() -> None:
    elr = _loss(num_examples=1)
    logits = torch.tensor([[30.0, 0.0, 0.0]], dtype=torch.float64)  # softmax ~ (1, 1e-13, 1e-13)
    loss = elr(logits, torch.tensor([0]), torch.tensor([0]))
    clamped = [1 - 1e-4, 1e-4, 1e-4]  # clamp to [1e-4, 1 - 1e-4]; the row now sums to 1 + 1e-4
    q = [c / (1 + 1e-4) for c in clamped]
    torch.testing.assert_close(elr.target[0], torch.tensor([0.3 * v for v in q], dtype=torch.float64))
    # The regulariser pairs the target with the clamped (not renormalised) probabilities.
    s = sum(0.3 * qc * pc for qc, pc in zip(q, clamped, strict=True))
    ce = math.log(1 + 2 * math.exp(-30.0))
    assert loss.item() == pytest.approx(ce + 3.0 * math.log(1 - s), abs=1e-12)


def _reference_loss(
    logits: torch.Tensor, labels: list[int], old_targets: list[torch.Tensor], beta: float, lam: float
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Independent per-example transcription of the method; returns the loss and the new targets."""
    total_ce, total_reg, new_targets = logits.new_zeros(()), logits.new_zeros(()), []
    for row, label, t_old in zip(logits, labels, old_targets, strict=True):
        e = torch.exp(row - row.max())
        p = torch.clamp(e / e.sum(), min=1e-4, max=1 - 1e-4)
        q = p.detach() / p.detach().sum()
        t = beta * t_old + (1 - beta) * q
        new_targets.append(t)
        total_ce = total_ce - (row[label] - row.max() - torch.log(e.sum()))
        total_reg = total_reg + torch.log(1 - torch.dot(t, p))
    n = len(labels)
    return total_ce / n + lam * total_reg / n, new_targets


def test_gradient_matches_independent_reference_and_lemma_2() -> None:
    gen = torch.Generator().manual_seed(0)
    batch, classes, n_examples = 5, 4, 9
    elr = ELRLoss(n_examples, classes, beta=BETA, lam=LAM).double()
    index = torch.tensor([7, 1, 4, 0, 8])
    labels = torch.randint(0, classes, (batch,), generator=gen)
    first = torch.randn(batch, classes, generator=gen, dtype=torch.float64)
    elr(first, labels, index)  # populate the targets
    old_targets = [elr.target[i].clone() for i in index.tolist()]

    logits = torch.randn(batch, classes, generator=gen, dtype=torch.float64, requires_grad=True)
    (grad_module,) = torch.autograd.grad(elr(logits, labels, index), logits)

    ref_logits = logits.detach().clone().requires_grad_(True)
    ref_loss, ref_targets = _reference_loss(ref_logits, labels.tolist(), old_targets, BETA, LAM)
    (grad_ref,) = torch.autograd.grad(ref_loss, ref_logits)
    torch.testing.assert_close(grad_module, grad_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(elr.target[index], torch.stack(ref_targets), rtol=1e-12, atol=1e-14)

    # Lemma 2 (arXiv 2007.00151, Sec. 4.2): gradient w.r.t. the logits of example i is
    # (p - y + lam * g) / B with g_c = p_c / (1 - <p, t>) * sum_k (t_k - t_c) p_k, t the (constant) target.
    # Exact here because no probability is clamped (checked below).
    p = torch.softmax(logits.detach(), dim=1)
    assert bool(((p > 1e-4) & (p < 1 - 1e-4)).all())
    t = elr.target[index]
    s = (p * t).sum(dim=1, keepdim=True)
    g = p / (1 - s) * ((t.unsqueeze(1) - t.unsqueeze(2)) * p.unsqueeze(1)).sum(dim=2)
    y = F.one_hot(labels, classes).double()
    torch.testing.assert_close(grad_module, (p - y + LAM * g) / batch, rtol=1e-10, atol=1e-12)
    # Equivalent closed form: g_c = p_c (<p, t> - t_c) / (1 - <p, t>).
    torch.testing.assert_close(g, p * (s - t) / (1 - s), rtol=1e-10, atol=1e-12)


def test_target_receives_no_gradient() -> None:
    elr = _loss()
    logits = _logits_for(P_A, P_B).requires_grad_(True)
    elr(logits, LABELS, INDEX).backward()
    assert logits.grad is not None
    assert not elr.target.requires_grad and elr.target.grad is None and elr.target.grad_fn is None
    assert list(elr.parameters()) == []
    assert "target" in elr.state_dict()


def test_elr_regularizer_pure_function() -> None:
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]], dtype=torch.float64)
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]], dtype=torch.float64)
    expected = (math.log(1 - 0.5) + math.log(1 - 0.4)) / 2  # <t,p> = 0.5 and 0.15 + 0.25 = 0.4
    assert elr_regularizer(probs, targets).item() == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        elr_regularizer(probs, targets[:, :2])


def test_bad_inputs_raise_clear_errors() -> None:
    elr = _loss()
    logits = _logits_for(P_A, P_B)
    with pytest.raises(IndexError, match=r"\[0, 3\)"):
        elr(logits, LABELS, torch.tensor([0, 3]))
    with pytest.raises(IndexError):
        elr(logits, LABELS, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="logits"):
        elr(torch.zeros(2, 4, dtype=torch.float64), LABELS, INDEX)
    with pytest.raises(ValueError, match="labels"):
        elr(logits, torch.tensor([0, 1, 2]), INDEX)
    with pytest.raises(ValueError, match="index"):
        elr(logits, LABELS, torch.tensor([0]))
    with pytest.raises(ValueError, match="integer"):
        elr(logits, LABELS, torch.tensor([0.0, 1.0]))
    assert torch.count_nonzero(elr.target) == 0  # rejected calls leave the targets untouched
    for kwargs in ({"beta": 1.0}, {"beta": -0.1}, {"lam": -1.0}, {"num_examples": 0}, {"num_classes": 1}):
        with pytest.raises(ValueError):
            ELRLoss(**{"num_examples": 3, "num_classes": 3, **kwargs})
