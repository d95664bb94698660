"""Classification heads on pooled diffusion feature maps (N x C x p x p), as in Fig. 1 of the paper:
linear (A), MLP (B), small CNN (C) and attention (D), and their training on frozen features.

Architectures follow the official diffssl code (soumik-kanad/diffssl @ cc2ac30): ``ssl_diff/head.py``
(linear and MLP heads on the flattened pooled map), ``ssl_diff/attention_fusion.py`` (LayerNorm over the
map, 1x1 conv to the attention width, tokens plus a CLS token) and ``ssl_diff/attention_head.py``
(``Attention:dim:heads:mlp_ratio:blocks`` pre-norm transformer blocks, classifier on the CLS token). The
paper does not publish its CNN head; ours is two 3x3 conv-BN-ReLU layers and global average pooling."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

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


class HeadFit(L.LightningModule):
    """Cross-entropy training of a head on frozen features (the stage `diffusion_head`): SGD or Adam,
    optionally with a step decay of the learning rate every ``lr_step`` epochs (official: StepLR 7, 0.1).

    Manual optimisation keeps the order of the former hand-written loop, so results are bitwise those of
    the loop: per batch, forward, a finiteness check, ``zero_grad(set_to_none=True)``, backward, step; the
    scheduler steps at the end of each epoch. Batches come from `head_loader` (the loop's seeded shuffling).
    Measured on one CPU thread: a Trainer per fit (checkpoint every epoch) costs about a second more than
    the loop on the mini linear head (loop 0.8 s, Lightning 2.2 s for 30 epochs of 1257 features; attention
    and CNN heads: no measurable difference); it is worth it because a paper-scale fit must checkpoint every
    epoch and resume after a kill: the linear head takes about 1 s per epoch on CIFAR-10 features (28
    epochs), and one epoch of the attention head (257 tokens of width 1024, two blocks) took over 590 s for
    512 of the 50 000 images, i.e. about 16 hours an epoch on a CPU core and, by its FLOPs, tens of GPU
    minutes for the 28 epochs (the loop kept
    no state: a kill lost the whole fit). Batches, random draws, dtype and operation order are those of the
    loop, so records are bitwise unchanged. ``curves["head/loss"]`` holds each epoch's mean training loss."""

    def __init__(
        self,
        model: nn.Module,
        *,
        epochs: int,
        batch_size: int,
        optimizer: str = "sgd",
        lr: float = 1e-2,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        lr_step: int | None = None,
        lr_gamma: float = 0.1,
    ) -> None:
        super().__init__()
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"unknown head optimizer {optimizer!r}; use sgd or adam")
        self.model = model
        self.optimizer, self.lr, self.momentum, self.weight_decay = optimizer, lr, momentum, weight_decay
        self.lr_step, self.lr_gamma = lr_step, lr_gamma
        self.automatic_optimization = False
        self.curves: dict[str, list[float]] = {"head/loss": []}
        self._epoch_losses: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def configure_optimizers(self) -> Any:
        if self.optimizer == "sgd":
            opt = torch.optim.SGD(
                self.model.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
            )
        else:
            opt = torch.optim.Adam(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if not self.lr_step:
            return opt
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, self.lr_step, self.lr_gamma)]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        features, labels = batch
        loss = F.cross_entropy(self.model(features), labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"head training loss became {loss.item()}")
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()
        self._epoch_losses.append(float(loss.detach()))

    def on_train_epoch_end(self) -> None:
        schedule = self.lr_schedulers()
        if schedule is not None:
            schedule.step()
        losses, self._epoch_losses = self._epoch_losses, []
        self.curves["head/loss"].append(sum(losses) / max(1, len(losses)))


class _ShuffledBatches(torch.utils.data.Sampler):
    """Index batches of a seeded reshuffle per epoch: epoch e uses the (e+1)-th ``randperm`` of a generator
    seeded with ``seed`` (the former loop's draws), whatever epoch a resumed fit starts at."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size, self.batch_size, self.seed, self.epoch = size, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-self.size // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epoch + 1):
            order = torch.randperm(self.size, generator=generator)
        yield from order.split(self.batch_size)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[rows], self.labels[rows]


def head_loader(features: torch.Tensor, labels: torch.Tensor, *, batch_size: int, seed: int) -> DataLoader:
    """Mini-batches (features, labels) for `HeadFit`, reshuffled every epoch by a generator seeded once."""
    sampler = _ShuffledBatches(len(features), int(batch_size), int(seed))
    return DataLoader(_Rows(features, labels), sampler=sampler, batch_size=None)


@torch.no_grad()
def head_accuracy(
    head: nn.Module, features: torch.Tensor, labels: torch.Tensor, batch_size: int = 4096
) -> float:
    """Top-1 accuracy (%) of a trained head."""
    head.eval()
    preds = torch.cat([head(chunk).argmax(1) for chunk in features.split(batch_size)])
    return 100.0 * float((preds.cpu() == labels.cpu()).float().mean())
