"""common.lit.schedules against the reference code's epoch formula."""

from __future__ import annotations

import pytest
import torch

from common.lit.schedules import warmup_multistep_lr


def test_warmup_multistep_matches_the_long_tail_cifar_adjust_learning_rate() -> None:
    def reference(epoch: int, lr: float = 0.1) -> float:  # 1-based epochs in the reference code
        epoch = epoch + 1
        if epoch <= 5:
            return lr * epoch / 5
        if epoch > 180:
            return lr * 0.0001
        if epoch > 160:
            return lr * 0.01
        return lr

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = warmup_multistep_lr(opt, warmup_epochs=5, milestones=[180, 160], gamma=0.01)
    for epoch in range(200):
        assert opt.param_groups[0]["lr"] == pytest.approx(reference(epoch)), epoch
        opt.step()
        scheduler.step()


def test_no_warmup_and_bad_arguments() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_multistep_lr(opt, warmup_epochs=0, milestones=[2], gamma=0.5)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert lrs == [1.0, 1.0, 0.5, 0.5]
    for kwargs in ({"warmup_epochs": -1}, {"milestones": [3], "warmup_epochs": 5}, {"gamma": 0.0}):
        with pytest.raises(ValueError, match="warmup_epochs"):
            warmup_multistep_lr(opt, **kwargs)
