"""PU risks, VPU and BPR against hand-computed values and autograd of independent formulas."""

from __future__ import annotations

import math

import pytest
import torch

from common.losses import bpr_loss, nnpu_risk, upu_risk, vpu_loss, vpu_mixup_regularizer
from common.registry import lookup


def _sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def test_upu_by_hand():
    scores = torch.tensor([2.0, -1.0, 0.5, -0.5])
    labeled = torch.tensor([True, False, True, False])
    prior = 0.4
    # l(z) = sigmoid(-z); positives {2, 0.5}, unlabeled {-1, -0.5}
    pos = prior * (_sig(-2.0) + _sig(-0.5)) / 2
    neg = (_sig(-1.0) + _sig(-0.5)) / 2 - prior * (_sig(2.0) + _sig(0.5)) / 2
    out = upu_risk(scores, labeled, prior)
    assert float(out.risk) == pytest.approx(pos + neg)
    assert float(out.positive_risk) == pytest.approx(pos) and float(out.negative_risk) == pytest.approx(neg)


def test_nnpu_defitting_step_and_gradient():
    # Unlabeled examples scored very negative and positives scored low make the negative risk < 0.
    scores = torch.tensor([-3.0, -3.0, -6.0, -6.0], requires_grad=True)
    labeled = torch.tensor([True, True, False, False])
    prior, gamma = 0.9, 0.5
    out = nnpu_risk(scores, labeled, prior, beta=0.0, gamma=gamma)
    neg = (_sig(-6.0) * 2) / 2 - prior * (_sig(-3.0) * 2) / 2
    assert neg < 0 and float(out.negative_risk) == pytest.approx(neg)
    assert float(out.risk) == pytest.approx(float(out.positive_risk))
    out.loss.backward()
    # Independent autograd of -gamma * (R_u^- - pi R_p^-).
    ref_scores = scores.detach().clone().requires_grad_(True)
    ref = -gamma * (torch.sigmoid(ref_scores[2:]).mean() - prior * torch.sigmoid(ref_scores[:2]).mean())
    ref.backward()
    torch.testing.assert_close(scores.grad, ref_scores.grad)


def test_nnpu_equals_upu_when_negative_risk_is_non_negative():
    torch.manual_seed(0)
    scores = torch.randn(64, requires_grad=True)
    labeled = torch.rand(64) < 0.3
    a, b = nnpu_risk(scores, labeled, 0.3), upu_risk(scores, labeled, 0.3)
    assert float(a.negative_risk) >= 0
    torch.testing.assert_close(a.loss, b.loss)


def test_logistic_surrogate_and_errors():
    scores, labeled = torch.tensor([1.0, -1.0]), torch.tensor([True, False])
    out = upu_risk(scores, labeled, 0.5, surrogate="logistic")
    expected = 0.5 * math.log1p(math.exp(-1)) + math.log1p(math.exp(-1)) - 0.5 * math.log1p(math.exp(1))
    assert float(out.risk) == pytest.approx(expected)
    with pytest.raises(ValueError, match="prior"):
        upu_risk(scores, labeled, 1.0)
    with pytest.raises(ValueError, match="surrogate"):
        upu_risk(scores, labeled, 0.5, surrogate="hinge")
    with pytest.raises(ValueError, match="same length"):
        upu_risk(scores, labeled[:1], 0.5)
    assert lookup("loss", "nnpu") is nnpu_risk


def test_vpu_by_hand_and_gradient():
    logits = torch.tensor([0.3, -1.2, 2.0, 0.1], requires_grad=True)
    log_phi = torch.nn.functional.logsigmoid(logits)
    positives = torch.tensor([2, 3])
    loss = vpu_loss(log_phi, log_phi[positives])
    phi = [_sig(v) for v in (0.3, -1.2, 2.0, 0.1)]
    expected = math.log(sum(phi) / 4) - (math.log(phi[2]) + math.log(phi[3])) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    ref_logits = logits.detach().clone().requires_grad_(True)
    p = torch.sigmoid(ref_logits)
    (torch.log(p.mean()) - torch.log(p[positives]).mean()).backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)


def test_vpu_mixup_regularizer_by_hand():
    log_phi_mixed = torch.log(torch.tensor([0.5, 0.9]))
    phi_u = torch.tensor([0.2, 0.8])
    lam = 0.25
    targets = [0.25 * 0.2 + 0.75, 0.25 * 0.8 + 0.75]
    expected = ((math.log(targets[0]) - math.log(0.5)) ** 2 + (math.log(targets[1]) - math.log(0.9)) ** 2) / 2
    assert float(vpu_mixup_regularizer(log_phi_mixed, phi_u, lam)) == pytest.approx(expected, rel=1e-6)


def test_bpr_by_hand():
    pos, neg = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    expected = [-math.log(_sig(1.0)), -math.log(_sig(-1.0))]
    torch.testing.assert_close(bpr_loss(pos, neg, reduction="none"), torch.tensor(expected))
    assert float(bpr_loss(pos, neg)) == pytest.approx(sum(expected) / 2)
    with pytest.raises(ValueError, match="pair up"):
        bpr_loss(pos, neg[:1])
