"""Small networks for mini-scale runs on a laptop CPU: ``mlp``, ``cnn_small`` and ``conv1d_small``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from common.backbones.base import Backbone
from common.backbones.registry import register_backbone, reject_pretrained

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "softplus": nn.Softplus,
}


def make_activation(name: str) -> nn.Module:
    """Activation module by name (relu, gelu, silu, tanh, elu, leaky_relu, softplus)."""
    try:
        return _ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}") from None


def _int_list(values: Sequence[int] | int, what: str) -> list[int]:
    values = [values] if isinstance(values, int) else [int(v) for v in values]
    if any(v < 1 for v in values):
        raise ValueError(f"{what} must be positive integers, got {values}")
    return values


class MLP(Backbone):
    """Multi-layer perceptron on flattened inputs: ``[Linear (-> BatchNorm) -> activation -> Dropout]``
    per hidden layer. With no hidden layers the features are the flattened inputs (a linear model)."""

    def __init__(
        self,
        in_features: int,
        hidden_dims: Sequence[int] = (128, 128),
        num_classes: int = 0,
        dropout: float = 0.0,
        activation: str = "relu",
        batch_norm: bool = False,
    ) -> None:
        hidden = _int_list(hidden_dims, "hidden_dims") if hidden_dims else []
        super().__init__(num_features=hidden[-1] if hidden else in_features, num_classes=num_classes)
        self.in_features = in_features
        layers: list[nn.Module] = []
        width = in_features
        for out in hidden:
            layers.append(nn.Linear(width, out, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(out))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = out
        self.body = nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Flatten to ``(batch, in_features)`` and apply the hidden layers."""
        return self.body(x.reshape(x.shape[0], -1))


class SmallCNN(Backbone):
    """Conv-BN-ReLU stages (one per width, 2x2 max-pool between stages) and global average pooling.

    For small images such as 8x8 digits or 28x28/32x32 pictures. Accepts ``(B, C, H, W)``, ``(B, H, W)``
    when ``in_chans == 1``, or flat ``(B, C*H*W)`` when ``image_size`` is given.
    """

    def __init__(
        self,
        in_chans: int = 3,
        widths: Sequence[int] = (32, 64, 128),
        num_classes: int = 0,
        blocks_per_stage: int = 1,
        dropout: float = 0.0,
        image_size: int | Sequence[int] | None = None,
    ) -> None:
        widths = _int_list(widths, "widths")
        super().__init__(num_features=widths[-1], num_classes=num_classes, head_dropout=dropout)
        self.in_chans = in_chans
        self.image_size = _pair(image_size) if image_size is not None else None
        layers: list[nn.Module] = []
        channels = in_chans
        for stage, width in enumerate(widths):
            if stage > 0:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            for _ in range(blocks_per_stage):
                layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)]
                layers.append(nn.ReLU(inplace=True))
                channels = width
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        _init_conv_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(batch, widths[-1])``."""
        if x.dim() == 2 and self.image_size is not None:
            x = x.reshape(x.shape[0], self.in_chans, *self.image_size)
        elif x.dim() == 3 and self.in_chans == 1:
            x = x.unsqueeze(1)
        return self.pool(self.body(x)).flatten(1)


class SmallConv1d(Backbone):
    """1-D Conv-BN-ReLU stages (max-pool by 2 between stages) and global average pooling, for signals
    such as mnist1d's 40-dim sequences. Accepts ``(B, C, L)``, or ``(B, L)`` when ``in_chans == 1``."""

    def __init__(
        self,
        in_chans: int = 1,
        widths: Sequence[int] = (32, 64, 128),
        num_classes: int = 0,
        kernel_size: int = 5,
        blocks_per_stage: int = 1,
        dropout: float = 0.0,
    ) -> None:
        widths = _int_list(widths, "widths")
        super().__init__(num_features=widths[-1], num_classes=num_classes, head_dropout=dropout)
        self.in_chans = in_chans
        layers: list[nn.Module] = []
        channels = in_chans
        for stage, width in enumerate(widths):
            if stage > 0:
                layers.append(nn.MaxPool1d(2, ceil_mode=True))
            for _ in range(blocks_per_stage):
                conv = nn.Conv1d(channels, width, kernel_size, padding=kernel_size // 2, bias=False)
                layers += [conv, nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
                channels = width
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(1)
        _init_conv_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(batch, widths[-1])``."""
        if x.dim() == 2:
            if self.in_chans != 1:
                raise ValueError(
                    f"conv1d_small got a (batch, length) input but in_chans={self.in_chans}; "
                    "build it with in_chans=1 or pass (batch, channels, length)"
                )
            x = x.unsqueeze(1)
        return self.pool(self.body(x)).flatten(1)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = (int(s) for s in size)
    return height, width


def _init_conv_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


@register_backbone("mlp")
def build_mlp(
    *,
    num_classes: int = 0,
    in_chans: int = 3,
    pretrained: bool | str = False,
    in_features: int | None = None,
    hidden_dims: Sequence[int] = (128, 128),
    dropout: float = 0.0,
    activation: str = "relu",
    batch_norm: bool = False,
) -> MLP:
    """``mlp``: needs ``in_features`` (the flattened input size); ``in_chans`` is ignored."""
    reject_pretrained("mlp", pretrained)
    if in_features is None or in_features < 1:
        raise ValueError("backbone 'mlp' needs in_features (the flattened input size), e.g. in_features=64")
    return MLP(in_features, hidden_dims, num_classes, dropout, activation, batch_norm)


@register_backbone("cnn_small")
def build_cnn_small(
    *, num_classes: int = 0, in_chans: int = 3, pretrained: bool | str = False, **kwargs: Any
) -> SmallCNN:
    """``cnn_small``: kwargs ``widths``, ``blocks_per_stage``, ``dropout``, ``image_size``."""
    reject_pretrained("cnn_small", pretrained)
    return SmallCNN(in_chans=in_chans, num_classes=num_classes, **kwargs)


@register_backbone("conv1d_small")
def build_conv1d_small(
    *, num_classes: int = 0, in_chans: int = 1, pretrained: bool | str = False, **kwargs: Any
) -> SmallConv1d:
    """``conv1d_small``: kwargs ``widths``, ``kernel_size``, ``blocks_per_stage``, ``dropout``.

    Note ``build_backbone``'s default ``in_chans`` is 3; pass ``in_chans=1`` for single-channel signals.
    """
    reject_pretrained("conv1d_small", pretrained)
    return SmallConv1d(in_chans=in_chans, num_classes=num_classes, **kwargs)
