"""One ``build_backbone(name)`` over small nets, timm, CIFAR ResNets and open_clip image towers.

Names: ``mlp``, ``cnn_small``, ``conv1d_small``, ``cifar_resnet18``, ``cifar_resnet34``, ``cifar_resnet50``,
``cifar_preact_resnet18``, ``timm:<model_name>``, ``open_clip:<model_name>``; add more with
``@register_backbone(name)``. Every module exposes ``num_features`` and, like timm models,
``forward_features``/``forward_head``: ``forward_head(forward_features(x), pre_logits=True)`` gives the
pooled features even when a classification head is present.
"""

from common.backbones import open_clip_backbones, small, timm_backbones  # noqa: F401  (registers builders)
from common.backbones.base import Backbone
from common.backbones.configured import build_backbone_for
from common.backbones.open_clip_backbones import OpenCLIPImageTower
from common.backbones.registry import (
    available_backbones,
    available_prefixes,
    build_backbone,
    register_backbone,
    register_backbone_prefix,
)
from common.backbones.small import MLP, SmallCNN, SmallConv1d

__all__ = [
    "MLP",
    "Backbone",
    "OpenCLIPImageTower",
    "SmallCNN",
    "SmallConv1d",
    "available_backbones",
    "available_prefixes",
    "build_backbone",
    "build_backbone_for",
    "register_backbone",
    "register_backbone_prefix",
]
