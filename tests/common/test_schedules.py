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


def test_a_schedule_laid_out_in_epochs_takes_its_steps_from_the_data(tmp_path):
    """optim.scheduler_epochs: OneCycle's total_steps = the fit's steps per epoch x the epochs given."""
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader, TensorDataset

    from common.experiment import StepsFromData

    class Tiny(L.LightningModule):
        def __init__(self, scheduler):
            super().__init__()
            self.layer, self.scheduler_factory = torch.nn.Linear(2, 1), scheduler

        def training_step(self, batch, _):
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
            self.built = self.scheduler_factory(optimizer)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.built, "interval": "step"}}

    spec = {"_target_": "torch.optim.lr_scheduler.OneCycleLR", "_partial_": True, "max_lr": 0.1}
    factory = StepsFromData(instantiate(spec), epochs=80)
    module = Tiny(factory)
    factory.module = module
    loader = DataLoader(TensorDataset(torch.randn(27, 2)), batch_size=4)  # 7 steps per epoch
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, loader)
    assert module.built.total_steps == 7 * 80


def test_pu_mlc_paper_scale_lays_one_cycle_over_80_epochs_of_its_data():
    from tests.conftest import compose

    cfg = compose(["experiment=pu_mlc/table_mlc_pl", "scale=paper"])
    assert cfg.optim.scheduler_epochs == 80 and "total_steps" not in cfg.optim.scheduler
