"""Frozen features of a backbone for every training and test example, extracted once (the stage
`frozen_features`).

As the official `main_extract_features.py` (ML-GSAI/Revisiting-Dis-vs-Gen-Classifiers @86a0bcc): no
augmentation, images resized to the backbone's input size (224, bicubic), the backbone in eval mode, and its
pooled pre-logit features (`forward_head(forward_features(x), pre_logits=True)`: the CLS token for ViTs, the
global-average-pooled features for ResNets, the image embedding for CLIP towers)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from common.backbones import build_backbone_for
from common.lit.pipeline import RunContext

log = logging.getLogger("pnu.disc_vs_gen")

STAGE_NAME = "frozen_features"


@dataclass
class FeatureSet:
    """Frozen features and labels of the training and test splits."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    pretrained: bool

    @property
    def num_features(self) -> int:
        return int(self.train_x.shape[1])

    def to_stored(self) -> dict[str, Any]:
        """As a stage value (tensors: it loads with `torch.load(weights_only=True)`)."""
        arrays = {k: torch.from_numpy(getattr(self, k)) for k in ("train_x", "train_y", "test_x", "test_y")}
        return {**arrays, "pretrained": self.pretrained}

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> FeatureSet:
        arrays = (stored[k].numpy() for k in ("train_x", "train_y", "test_x", "test_y"))
        return cls(*arrays, pretrained=bool(stored["pretrained"]))


class FrozenFeatureExtractor(L.LightningModule):
    """Predict step = pooled pre-logit features of a frozen backbone, after an optional bicubic resize."""

    def __init__(self, backbone: torch.nn.Module, input_size: int | None = None) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.input_size = input_size

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None and x.ndim == 4 and tuple(x.shape[-2:]) != (self.input_size,) * 2:
            # Bicubic interpolation is linear with weights summing to one, so resizing normalised images
            # equals normalising resized ones.
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bicubic", align_corners=False)
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return {"x": self.features(batch["x"]).float().cpu(), "y": batch["y_clean"].cpu()}


def _limit(cfg: Any, key: str) -> int | float:
    value = OmegaConf.select(cfg, f"trainer.{key}", default=None)
    return 1.0 if value is None else value


def feature_stage_config(context: RunContext, input_size: int | None, precision: str) -> dict[str, Any]:
    """What decides the features: the split, the data and model configs, input size, precision, and the
    batch limits (smoke tests extract a few batches)."""
    cfg = context.cfg
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.pop("seed", None)  # the seed changes label noise only, and there is none here
    return {
        "split_hash": getattr(context.datamodule, "split_hash", None),
        "data": data,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "input_size": input_size,
        "precision": precision,
        "limits": [_limit(cfg, "limit_train_batches"), _limit(cfg, "limit_val_batches")],
    }


def _build_frozen_backbone(context: RunContext) -> tuple[torch.nn.Module, bool]:
    """The run's backbone. Random smoke-test inputs (data.source=random) never download weights."""
    cfg = context.cfg
    pretrained = OmegaConf.select(cfg, "model.pretrained", default=False)
    if pretrained and getattr(context.datamodule, "source", None) == "random":
        log.warning("data.source=random: building %s without pretrained weights", cfg.model.backbone)
        cfg = cfg.copy()
        OmegaConf.update(cfg, "model.pretrained", False)
        pretrained = False
    return build_backbone_for(cfg, context.datamodule), bool(pretrained)


def extract_features(
    context: RunContext, *, input_size: int | None, precision: str = "32-true"
) -> FeatureSet:
    """Features of the run's backbone on the run's data: the stage `frozen_features` (one per
    `feature_stage_config`), or extracted directly when the run has no stages.

    The training split is read with `trainer.limit_train_batches` batches and the test split with
    `trainer.limit_val_batches` (both default to all)."""
    if context.stages is None:
        return _extract(context, input_size, precision)
    config = feature_stage_config(context, input_size, precision)
    stored = context.stages.compute(
        STAGE_NAME, config, lambda: _extract(context, input_size, precision).to_stored()
    )
    return FeatureSet.from_stored(stored)


def _extract(context: RunContext, input_size: int | None, precision: str) -> FeatureSet:
    datamodule = context.datamodule
    backbone, pretrained = _build_frozen_backbone(context)
    module = FrozenFeatureExtractor(backbone, input_size)
    splits = {}
    for split, dataset, limit_key, train in (
        ("train", datamodule.train_dataset(), "limit_train_batches", True),
        ("test", datamodule.test_dataset(), "limit_val_batches", False),
    ):
        trainer = context.make_trainer(
            precision=precision, limit_predict_batches=_limit(context.cfg, limit_key)
        )
        loader = datamodule.loader(dataset, shuffle=False, train=train)
        outputs = trainer.predict(module, dataloaders=loader)
        splits[split] = (
            torch.cat([o["x"] for o in outputs]).numpy(),
            torch.cat([o["y"] for o in outputs]).numpy().astype(np.int64),
        )
    return FeatureSet(*splits["train"], *splits["test"], pretrained=pretrained)
