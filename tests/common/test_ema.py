"""Tests of common.lit.ema.EMATeacher: closed-form averages, warm-up, buffers, no gradients, checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.lit.ema import EMATeacher


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.bn = nn.BatchNorm1d(2)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.bn(self.fc(x)))


def set_params(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def teacher_weight(ema: EMATeacher) -> float:
    return float(ema.module.fc.weight[0, 0])


def test_constant_decay_matches_closed_form() -> None:
    student, decay = TinyNet(), 0.9
    set_params(student, 0.0)
    ema = EMATeacher(student, decay=decay)
    values = [1.0, 3.0, -2.0, 5.0]
    for v in values:
        set_params(student, v)
        assert ema.update(student) == pytest.approx(decay)
    # teacher_k = d^k * theta_0 + sum_i (1 - d) d^(k - i) theta_i, theta_0 = 0.
    k = len(values)
    expected = sum((1 - decay) * decay ** (k - i) * v for i, v in enumerate(values, start=1))
    assert teacher_weight(ema) == pytest.approx(expected, abs=1e-6)
    assert int(ema.num_updates) == k


def test_mean_teacher_warmup_by_hand() -> None:
    student = TinyNet()
    set_params(student, 0.0)
    ema = EMATeacher(student, decay=0.99, warmup="mean_teacher")
    # Decays 1 - 1/(n + 2): 1/2, 2/3, 3/4 (Tarvainen & Valpola's global_step = 1, 2, 3).
    set_params(student, 1.0)
    assert ema.update(student) == pytest.approx(0.5)
    assert teacher_weight(ema) == pytest.approx(0.5)
    set_params(student, 2.0)
    assert ema.update(student) == pytest.approx(2 / 3)
    assert teacher_weight(ema) == pytest.approx(2 / 3 * 0.5 + 1 / 3 * 2.0)
    set_params(student, 0.0)
    assert ema.update(student) == pytest.approx(0.75)
    assert teacher_weight(ema) == pytest.approx(0.75)
    # Late in training the cap applies.
    ema.num_updates.fill_(10_000)
    ema.load_state_dict(ema.state_dict())  # refreshes the host-side step count
    assert ema.current_decay() == pytest.approx(0.99)


def test_num_updates_warmup_by_hand() -> None:
    ema = EMATeacher(TinyNet(), decay=0.999, warmup="num_updates")
    student = TinyNet()
    assert ema.update(student) == pytest.approx(1 / 10)
    assert ema.update(student) == pytest.approx(2 / 11)
    assert ema.current_decay() == pytest.approx(3 / 12)


def test_no_gradients_and_student_untouched() -> None:
    student = TinyNet()
    before = [p.clone() for p in student.parameters()]
    ema = EMATeacher(student, decay=0.5)
    assert all(not p.requires_grad for p in ema.parameters())
    assert all(p.requires_grad for p in student.parameters())
    out = ema(torch.randn(4, 2, requires_grad=True))
    assert not out.requires_grad and out.grad_fn is None
    ema.update(student)
    assert all(torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))


def _trained_bn_student() -> TinyNet:
    student = TinyNet().train()
    student(torch.randn(16, 2) * 3 + 1)  # moves BN running stats away from 0 / 1
    return student


def test_buffers_copy_average_keep() -> None:
    base = TinyNet()
    student = _trained_bn_student()
    student.load_state_dict(
        {**base.state_dict(), **{k: v for k, v in student.state_dict().items() if "bn" in k}}
    )

    copy_ema = EMATeacher(base, decay=0.9, buffers="copy")
    copy_ema.update(student)
    assert torch.equal(copy_ema.module.bn.running_mean, student.bn.running_mean)
    assert torch.equal(copy_ema.module.bn.num_batches_tracked, student.bn.num_batches_tracked)

    avg_ema = EMATeacher(base, decay=0.9, buffers="average")
    avg_ema.update(student)
    expected = 0.9 * base.bn.running_mean + 0.1 * student.bn.running_mean
    torch.testing.assert_close(avg_ema.module.bn.running_mean, expected)
    # Integer buffers are copied, never averaged.
    assert torch.equal(avg_ema.module.bn.num_batches_tracked, student.bn.num_batches_tracked)

    keep_ema = EMATeacher(base, decay=0.9, buffers="keep")
    keep_ema.update(student)
    assert torch.equal(keep_ema.module.bn.running_mean, base.bn.running_mean)


def test_eval_mode_is_kept_inside_a_training_parent() -> None:
    parent = nn.Module()
    parent.teacher = EMATeacher(TinyNet(), eval_mode=True)
    parent.noisy_teacher = EMATeacher(TinyNet(), eval_mode=False)
    parent.train()
    assert parent.teacher.training and not parent.teacher.module.training
    assert parent.noisy_teacher.module.training
    x = torch.randn(8, 2)
    torch.testing.assert_close(parent.teacher(x), parent.teacher(x))  # dropout off, deterministic
    parent.eval()
    assert not parent.noisy_teacher.module.training


def test_state_dict_round_trip_through_a_parent() -> None:
    student = TinyNet()
    parent = nn.Module()
    parent.teacher = EMATeacher(student, decay=0.99, warmup="mean_teacher")
    for _ in range(5):
        set_params(student, float(torch.randn(())))
        parent.teacher.update(student)
    state = parent.state_dict()
    assert "teacher.num_updates" in state and "teacher.module.bn.running_var" in state

    fresh = nn.Module()
    fresh.teacher = EMATeacher(TinyNet(), decay=0.99, warmup="mean_teacher")
    fresh.load_state_dict(state)
    assert int(fresh.teacher.num_updates) == 5
    assert fresh.teacher.current_decay() == pytest.approx(parent.teacher.current_decay())
    for a, b in zip(fresh.teacher.state_dict().values(), parent.teacher.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs",
    [{"decay": 1.5}, {"decay": -0.1}, {"decay": True}, {"warmup": "cosine"}, {"buffers": "mean"}],
)
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        EMATeacher(TinyNet(), **kwargs)


def test_mismatched_student() -> None:
    ema = EMATeacher(TinyNet())
    with pytest.raises(ValueError, match="do not match"):
        ema.update(nn.Linear(2, 2))
    other = TinyNet()
    other.fc = nn.Linear(2, 3)
    other.bn = nn.BatchNorm1d(2)
    with pytest.raises(ValueError, match="shape"):
        ema.update(other)
    with pytest.raises(ValueError):
        EMATeacher("not a module")  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_teacher_follows_cuda_student() -> None:
    student = TinyNet().cuda()
    ema = EMATeacher(student, decay=0.5, warmup="num_updates")
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema.update(student)
    assert ema.module.fc.weight.is_cuda and ema.num_updates.is_cuda
    out = ema(torch.randn(3, 2, device="cuda"))
    assert out.is_cuda
