"""The CIFAR ResNet of He et al. (2016, Section 4.2) that SLA trains on CIFAR: ResNet-32 (``cresnet32``).

Three stages of basic blocks with 16, 32 and 64 channels on 32x32 inputs (strides 1, 2, 2), a 3x3 stem, and
the parameter-free "option A" shortcut where the shape changes: subsample by 2 and pad the new channels with
zeros. Weights as the official model (hankook/SLA @ bc5d9cd, ``models/cifar_resnet.py:7-15, 70-125``):
convolutions ~ N(0, 2 / (k * k * out_channels)), BatchNorm weight 1 and bias 0; the classifier is a plain
linear layer (``models/__init__.py:31-47`` drops the ResNet's own head and adds fresh ``nn.Linear`` heads).

Registered as the backbone ``sla_cifar_resnet32``; it belongs in ``common.backbones`` once a second paper
needs it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.backbones.base import Backbone
from common.backbones.registry import register_backbone, reject_pretrained


class _ZeroPadShortcut(nn.Module):
    """Option-A shortcut: keep every second pixel and append zero channels up to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"option-A shortcuts cannot drop channels ({in_channels} -> {out_channels})")
        self.extra, self.stride = out_channels - in_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


class _BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        reshape = stride != 1 or in_channels != out_channels
        self.shortcut = _ZeroPadShortcut(in_channels, out_channels, stride) if reshape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(Backbone):
    """ResNet-(6n+2) for 32x32 images with widths 16/32/64 and 64 pooled features."""

    def __init__(self, depth: int = 32, num_classes: int = 0, in_chans: int = 3) -> None:
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110), got {depth}")
        super().__init__(num_features=64, num_classes=num_classes)
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_chans, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        layers: list[nn.Module] = []
        channels = 16
        for stage, width in enumerate((16, 32, 64)):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(_BasicBlock(channels, width, stride))
                channels = width
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(batch, 64)``."""
        return self.pool(self.stages(F.relu(self.stem(x)))).flatten(1)


@register_backbone("sla_cifar_resnet32")
def build_sla_cifar_resnet32(
    *, num_classes: int = 0, in_chans: int = 3, pretrained: bool | str = False, **kwargs: Any
) -> CifarResNet:
    """``sla_cifar_resnet32``: the official ``cresnet32`` (0.46M parameters, 64 features)."""
    reject_pretrained("sla_cifar_resnet32", pretrained)
    return CifarResNet(depth=32, num_classes=num_classes, in_chans=in_chans, **kwargs)
