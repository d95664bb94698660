"""A two-stage method for the kill-and-resume test of `common.lit.stages`: `python stages_worker.py ROOT LOG`.

Stage `first` fits 2 epochs, stage `second` 8 epochs (slowed down so the test can kill it in the middle);
each fit appends `<stage> start_epoch=<n>` to LOG when it starts, and `compute <stage>` when it trains."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf

from common.experiment import build_trainer
from common.lit.stages import Stages


class Regression(L.LightningModule):
    def __init__(self, name: str, log: Path, epoch_sleep: float) -> None:
        super().__init__()
        self.name, self.log_path, self.epoch_sleep = name, log, epoch_sleep
        self.layer = torch.nn.Linear(4, 1)
        self.curves: dict[str, list[float]] = {"train/loss": []}
        self._losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x).squeeze(-1), y)
        self._losses.append(float(loss.detach()))
        return loss

    def on_train_start(self) -> None:
        with open(self.log_path, "a") as log:
            log.write(f"{self.name} start_epoch={self.current_epoch}\n")

    def on_train_epoch_end(self) -> None:
        self.curves["train/loss"].append(sum(self._losses) / len(self._losses))
        self._losses = []
        time.sleep(self.epoch_sleep)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def regression_loader(shuffle: bool = False) -> torch.utils.data.DataLoader:
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.TensorDataset(x, x.sum(dim=1))
    return torch.utils.data.DataLoader(data, batch_size=16, shuffle=shuffle)


def main(root: Path, log: Path) -> None:
    cfg = OmegaConf.create(
        {
            "trainer": {"accelerator": "cpu", "max_epochs": 2},
            "runtime": {"checkpoint": False, "progress": False},
        }
    )
    loader = regression_loader()

    def make_trainer(**kw):
        kw.pop("loggers", None)
        return build_trainer(cfg, root, checkpoint=False, **kw)

    stages = Stages(root=root / "stages", code_hash="test", make_trainer=make_trainer)
    first = stages.fit(
        "first", {"epochs": 2}, lambda: Regression("first", log, 0.0), train_dataloaders=loader, seed=1
    )
    second = stages.fit(
        "second",
        {"epochs": 8, "after": first.layer.weight.tolist()},
        lambda: Regression("second", log, 1.0),
        trainer_overrides={"max_epochs": 8},
        train_dataloaders=loader,
        seed=2,
    )
    with open(log, "a") as out:
        out.write(f"done computed={','.join(stages.computed)} curve={len(second.curves['train/loss'])}\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
