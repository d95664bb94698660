"""Base class shared by the backbones implemented in this repo (small nets, open_clip image towers)."""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """Feature extractor with an optional linear head, following timm's interface.

    Subclasses implement :meth:`forward_features`, which returns pooled features of shape
    ``(batch, num_features)``. ``forward`` returns those features when ``num_classes == 0`` and logits
    from a linear head otherwise. As with timm models, ``forward_head(forward_features(x), pre_logits=True)``
    gives the pooled features whatever ``num_classes`` is.
    """

    def __init__(self, num_features: int, num_classes: int = 0, head_dropout: float = 0.0) -> None:
        super().__init__()
        self.num_features = int(num_features)
        self.num_classes = int(num_classes)
        self.head_drop = nn.Dropout(head_dropout)
        self.head: nn.Module
        self.reset_classifier(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features of shape ``(batch, num_features)``."""
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits from pooled features, or the features themselves when ``pre_logits``."""
        if pre_logits:
            return x
        return self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features (``num_classes == 0``) or logits (``num_classes > 0``)."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The linear head (``nn.Identity`` when there is none)."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a freshly initialised one with ``num_classes`` outputs (0 removes it)."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = int(num_classes)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
