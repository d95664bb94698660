"""A backbone from a run's `model` config, sized to its data (the one place a config becomes a network)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from common.backbones.registry import build_backbone
from common.errors import UserError


def build_backbone_for(cfg: DictConfig, datamodule: Any, num_classes: int | None = None) -> Any:
    """The backbone `cfg.model` names, with the input size (MLP features, image channels) of `datamodule`
    and `num_classes` outputs (default: the data's classes)."""
    model_cfg = OmegaConf.select(cfg, "model", default=None)
    if model_cfg is None:
        raise UserError("the run config has no `model`: choose a model config (model=...)")
    model = OmegaConf.to_container(model_cfg, resolve=True)
    name = model.pop("backbone")
    if name in ("mlp",):
        model.setdefault("in_features", int(_prod(datamodule.input_shape)))
    elif name in ("cnn_small", "conv1d_small") or name.startswith(("cifar_", "timm:")):
        model.setdefault("in_chans", int(datamodule.input_shape[0]))
    return build_backbone(name, num_classes=num_classes or datamodule.num_classes, **model)


def _prod(shape: Any) -> int:
    out = 1
    for size in shape:
        out *= int(size)
    return out
