"""Classification heads on pooled diffusion feature maps (N x C x p x p), as in Fig. 1 of the paper:
linear (A), MLP (B), small CNN (C) and attention (D), and their training on frozen features.

Architectures follow the official diffssl code (soumik-kanad/diffssl @ cc2ac30): ``ssl_diff/head.py``
(linear and MLP heads on the flattened pooled map), ``ssl_diff/attention_fusion.py`` (LayerNorm over the
map, 1x1 conv to the attention width, tokens plus a CLS token) and ``ssl_diff/attention_head.py``
(``Attention:dim:heads:mlp_ratio:blocks`` pre-norm transformer blocks, classifier on the CLS token). The
paper does not publish its CNN head; ours is two 3x3 conv-BN-ReLU layers and global average pooling."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HEADS = ("linear", "mlp", "attention", "cnn")


class AttentionHead(nn.Module):
    """LayerNorm(C, p, p) -> 1x1 conv to ``dim`` -> [CLS] + p*p tokens -> ``depth`` pre-norm transformer
    blocks -> linear classifier on the CLS token."""

    def __init__(
        self,
        in_channels: int,
        map_size: int,
        num_classes: int,
        *,
        dim: int = 1024,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        depth: int = 2,
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm([in_channels, map_size, map_size])
        self.project = nn.Conv2d(in_channels, dim, kernel_size=1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        layer = nn.TransformerEncoderLayer(
            dim, num_heads, int(dim * mlp_ratio), dropout=0.0, activation="gelu", batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.project(self.norm(x)).flatten(2).transpose(1, 2)  # (N, p*p, dim)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
        return self.classifier(self.blocks(tokens)[:, 0])


def _cnn_head(in_channels: int, num_classes: int, hidden: int) -> nn.Module:
    layers: list[nn.Module] = []
    for c_in in (in_channels, hidden):
        layers += [nn.Conv2d(c_in, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(hidden, num_classes))


def build_head(kind: str, feature_shape: tuple[int, int, int], num_classes: int, **params: Any) -> nn.Module:
    """A head for features of shape (C, p, p). ``params``: ``hidden`` (mlp, cnn); ``dim``, ``num_heads``,
    ``mlp_ratio``, ``depth`` (attention)."""
    channels, height, width = feature_shape
    if height != width:
        raise ValueError(f"pooled feature maps are square; got {feature_shape}")
    flat = channels * height * width
    if kind == "linear":
        return nn.Sequential(nn.Flatten(), nn.Linear(flat, num_classes))
    if kind == "mlp":
        hidden = int(params.get("hidden", 1024))
        return nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    if kind == "attention":
        keys = ("dim", "num_heads", "mlp_ratio", "depth")
        return AttentionHead(channels, height, num_classes, **{k: params[k] for k in keys if k in params})
    if kind == "cnn":
        return _cnn_head(channels, num_classes, int(params.get("hidden", 256)))
    raise ValueError(f"unknown head {kind!r}; use one of {HEADS}")


class Standardize(nn.Module):
    """Per-feature standardisation with statistics of the training features (kept as buffers)."""

    def __init__(self, train_features: torch.Tensor, eps: float = 1e-6) -> None:
        super().__init__()
        self.register_buffer("mean", train_features.mean(0, keepdim=True))
        self.register_buffer("std", train_features.std(0, keepdim=True) + eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def train_head(
    head: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    optimizer: str = "sgd",
    lr: float = 1e-2,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    lr_step: int | None = None,
    lr_gamma: float = 0.1,
    seed: int = 0,
) -> nn.Module:
    """Cross-entropy training of ``head`` on frozen features (shuffled mini-batches, seeded); SGD or Adam,
    optionally with a step decay of the learning rate every ``lr_step`` epochs (official: StepLR 7, 0.1)."""
    if optimizer == "sgd":
        opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown head optimizer {optimizer!r}; use sgd or adam")
    schedule = torch.optim.lr_scheduler.StepLR(opt, lr_step, lr_gamma) if lr_step else None
    generator = torch.Generator().manual_seed(int(seed))
    labels = labels.to(features.device)
    head.train()
    for _ in range(int(epochs)):
        order = torch.randperm(len(features), generator=generator).to(features.device)
        for batch in order.split(int(batch_size)):
            loss = F.cross_entropy(head(features[batch]), labels[batch])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"head training loss became {loss.item()}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if schedule is not None:
            schedule.step()
    return head.eval()


@torch.no_grad()
def head_accuracy(
    head: nn.Module, features: torch.Tensor, labels: torch.Tensor, batch_size: int = 4096
) -> float:
    """Top-1 accuracy (%) of a trained head."""
    head.eval()
    preds = torch.cat([head(chunk).argmax(1) for chunk in features.split(batch_size)])
    return 100.0 * float((preds.cpu() == labels.cpu()).float().mean())
