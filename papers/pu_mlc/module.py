"""Multi-label LightningModules of the PU-MLC table: assume-negative BCE, known-label BCE and PU-MLC.

Every module evaluates mAP (``common.eval.metrics.multilabel_average_precision``) of sigmoid scores on the
clean test split after each epoch; with ``ema_decay`` set it also scores an EMA copy of the network and keeps
the better of the two, as the official ``validate_multi`` does (TAKELAMAG/PU-MLC train.py)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from common.errors import NonFiniteLossError
from common.eval.metrics import multilabel_average_precision
from common.lit.ema import EMATeacher
from common.lit.epoch_metrics import log_epoch_metrics
from common.registry import register_method
from papers.pu_mlc.loss import (
    assume_negative_bce,
    known_label_bce,
    mixup_targets,
    pu_mlc_mixup_regularizer,
    pu_mlc_variational_loss,
)


class MultiLabelModule(L.LightningModule):
    """Base: sigmoid outputs per class, per-epoch test mAP; subclasses implement ``compute_loss``.

    ``trainable_prefixes`` (names of parameter prefixes, e.g. ``["layer4", "fc"]``) freezes every other
    parameter; ``freeze_batchnorm`` keeps BatchNorm layers in eval mode (official ``fix_bn``);
    ``pretrained`` names timm weights (e.g. ``resnet101.tv_in1k``) loaded into the backbone when fitting
    starts, except on random smoke-test inputs (``data.source=random``), so configs never download in tests.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        num_train_examples: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        ema_decay: float | None = None,
        trainable_prefixes: Sequence[str] | None = None,
        freeze_batchnorm: bool = False,
        pretrained: str | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.num_classes, self.num_train_examples = num_classes, num_train_examples
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scheduler_interval = scheduler_interval
        self.freeze_batchnorm, self.pretrained = freeze_batchnorm, pretrained
        self.trainable_prefixes = tuple(trainable_prefixes) if trainable_prefixes else None
        if self.trainable_prefixes:
            for name, param in self.backbone.named_parameters():
                param.requires_grad_(name.startswith(self.trainable_prefixes))
        self.ema = EMATeacher(self.backbone, decay=ema_decay) if ema_decay else None
        self.curves: dict[str, list[float]] = {"val/mAP": [], "train/loss": []}
        self.register_buffer("_epoch_stats", torch.zeros(2), persistent=False)
        self._val_scores: list[torch.Tensor] = []
        self._val_scores_ema: list[torch.Tensor] = []
        self._val_targets: list[torch.Tensor] = []

    # ---- set-up -------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.pretrained and getattr(datamodule, "source", None) != "random":
            self._load_pretrained(self.pretrained)

    def _load_pretrained(self, name: str) -> None:
        from common.backbones.timm_backbones import create_timm_model

        source = create_timm_model(name, num_classes=0, in_chans=3, pretrained=True)
        state = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
        missing, unexpected = self.backbone.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("fc.") for k in missing):
            raise RuntimeError(f"pretrained {name!r} does not fit the backbone: {missing=}, {unexpected=}")
        if self.ema is not None:
            self.ema.module.load_state_dict(self.backbone.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def on_train_epoch_start(self) -> None:
        if self.freeze_batchnorm:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if device.type == "cpu":
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    # ---- training -----------------------------------------------------------------------------------------
    def compute_loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(self(batch["x"]), batch)
        self._epoch_stats += torch.stack([loss.detach().float(), loss.new_ones(())])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.backbone)

    def on_train_epoch_end(self) -> None:
        loss_sum, steps = self._epoch_stats.tolist()
        self._epoch_stats.zero_()
        mean_loss = loss_sum / max(steps, 1)
        if not math.isfinite(mean_loss):
            raise NonFiniteLossError(f"training loss became {mean_loss} in epoch {self.current_epoch}")
        self.curves["train/loss"].append(mean_loss)
        log_epoch_metrics(self, {"train/loss": mean_loss})

    # ---- evaluation ---------------------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._val_scores.append(torch.sigmoid(self(batch["x"]).float()).cpu())
        if self.ema is not None:
            self._val_scores_ema.append(torch.sigmoid(self.ema(batch["x"]).float()).cpu())
        self._val_targets.append(batch["y_true"].cpu())

    def on_validation_epoch_end(self) -> None:
        scores, targets = torch.cat(self._val_scores), torch.cat(self._val_targets)
        value = multilabel_average_precision(scores, targets)
        if self._val_scores_ema:
            value = max(value, multilabel_average_precision(torch.cat(self._val_scores_ema), targets))
        self._val_scores, self._val_scores_ema, self._val_targets = [], [], []
        if self.trainer.sanity_checking:
            return
        self.curves["val/mAP"].append(value)
        log_epoch_metrics(self, {"val/mAP": value})

    def final_metrics(self) -> dict[str, float]:
        """Last-epoch and best-epoch test mAP (the official log prints both; ``h_mAP`` is the best)."""
        curve = self.curves["val/mAP"]
        if not curve:
            return {}
        return {"test/mAP": curve[-1], "test/mAP_best": max(curve)}

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": self.scheduler_factory(optimizer),
                "interval": self.scheduler_interval,
            },
        }


@register_method("pu_mlc_an_bce")
class AssumeNegativeBCEModule(MultiLabelModule):
    """BCE with every entry that is not an observed positive taken as negative ("assume negative")."""

    def compute_loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return assume_negative_bce(logits, batch["y"])


@register_method("pu_mlc_known_bce")
class KnownLabelBCEModule(MultiLabelModule):
    """BCE over the annotated entries only (positives and annotated negatives); unknown entries ignored."""

    def compute_loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return known_label_bce(logits, batch["y"])


@register_method("pu_mlc")
class PUMLCModule(MultiLabelModule):
    """PU-MLC: per-class variational PU loss with adaptive temperature (``alpha``) and re-balance factor
    (``gamma``) on the observed positives, plus the two-half-batch MixUp regulariser (``mix_alpha``).

    ``temperature`` / ``rebalance`` / ``mixup`` switch the three parts off for ablations (all off but mixup
    is plain VPU applied per class)."""

    def __init__(
        self,
        *args: Any,
        alpha: float = 1.0,
        gamma: float = 0.55,
        mix_alpha: float = 0.3,
        temperature: bool = True,
        rebalance: bool = True,
        mixup: bool = True,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.alpha, self.gamma, self.mix_alpha = float(alpha), float(gamma), float(mix_alpha)
        self.temperature, self.rebalance, self.mixup = temperature, rebalance, mixup

    def compute_loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        observed = batch["y"]
        loss = pu_mlc_variational_loss(
            logits,
            observed,
            alpha=self.alpha,
            gamma=self.gamma,
            temperature=self.temperature,
            rebalance=self.rebalance,
        )
        if self.mixup:
            loss = loss + self._mixup_loss(batch["x"], logits, observed)
        return loss

    def _mixup_loss(self, x: torch.Tensor, logits: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        return two_half_mixup_loss(x, logits, observed, self, self.mix_alpha)


def two_half_mixup_loss(
    x: torch.Tensor,
    logits: torch.Tensor,
    observed: torch.Tensor,
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    mix_alpha: float,
) -> torch.Tensor:
    """The official MixUp term: the first half of the batch (permuted) mixed with the second half (the middle
    example of an odd batch is left out), one lam ~ Beta(mix_alpha, mix_alpha) for the batch; `logits_of`
    maps inputs to (N, C) logits."""
    n = len(x)
    first, second = slice(0, n // 2), slice(math.ceil(n / 2), n)
    if n < 2:
        first = second = slice(0, n)
    targets = mixup_targets(logits, observed)
    perm = torch.randperm(first.stop - first.start, device=x.device)
    lam = torch.distributions.Beta(mix_alpha, mix_alpha).sample().to(x.device)
    mixed = lam * x[first][perm] + (1.0 - lam) * x[second]
    log_phi_mixed = F.logsigmoid(logits_of(mixed).float())
    return pu_mlc_mixup_regularizer(log_phi_mixed, targets[first][perm], targets[second], lam)
