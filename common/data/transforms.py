"""Batch transforms on image tensors ``(N, C, H, W)``: label-preserving augmentations and the label-augmenting
rotation of self-supervised label augmentation.

Protocols:
  * rotation label augmentation: Lee, Hwang & Shin, "Self-supervised label augmentation via input
    transformations" (SLA), ICML 2020. Each image is rotated by 0, 90, 180 and 270 degrees
    (``torch.rot90(x, k, (2, 3))``) and labelled with the joint label ``y * 4 + k``; the batch is laid out
    example-major (``[x0 r0, x0 r1, x0 r2, x0 r3, x1 r0, ...]``) as in the official code, and the aggregated
    prediction averages the joint logits ``logits[i * 4 + k, c * 4 + k]`` over ``k``;
  * rotation prediction: Gidaris et al., ICLR 2018 (the same rotations, with the rotation as the label);
  * random flips, translations and Gaussian noise: standard label-preserving augmentations; the translation
    by whole pixels with zero fill suits 8x8 digit images.

Random transforms draw from ``generator`` when one is given (on the input's device), else from torch's
global generator.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "GaussianNoise",
    "RandomTranslate",
    "aggregate_joint_logits",
    "horizontal_flip",
    "joint_label",
    "random_horizontal_flip",
    "rotate_batch",
    "rotation_label_augment",
    "split_joint_label",
]

NUM_ROTATIONS = 4


def _check_images(x: torch.Tensor, min_ndim: int = 3) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim < min_ndim:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected an image batch of shape (N, ..., H, W), got {shape}.")


def _check_labels(y: torch.Tensor, n: int, name: str = "y") -> None:
    if not isinstance(y, torch.Tensor) or y.shape != (n,) or y.is_floating_point() or y.dtype == torch.bool:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"{name} must be an integer tensor of shape ({n},), got {shape}.")


def rotate_batch(x: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """Rotate images by ``k * 90`` degrees counter-clockwise on their last two dims (``torch.rot90``).

    ``k`` is one integer for the whole batch or an integer tensor of shape ``(N,)``, one per image; a
    per-image ``k`` needs square images."""
    _check_images(x)
    dims = (x.ndim - 2, x.ndim - 1)
    if not isinstance(k, torch.Tensor):
        if isinstance(k, bool) or not isinstance(k, int):
            raise ValueError(f"k must be an integer or an integer tensor of shape (N,), got {k!r}.")
        return torch.rot90(x, k, dims)
    _check_labels(k, len(x), "k")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"per-image rotations need square images, got {tuple(x.shape[-2:])}.")
    k = k.to(x.device).remainder(NUM_ROTATIONS)
    out = torch.empty_like(x)
    for r in range(NUM_ROTATIONS):
        sel = (k == r).view(-1, *([1] * (x.ndim - 1)))
        # where over the whole batch rather than boolean indexing: no host sync, one pass per rotation.
        out = torch.where(sel, torch.rot90(x, r, dims), out)
    return out


def rotation_label_augment(
    x: torch.Tensor, y: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SLA's rotation label augmentation: the 4 rotations of every image (example-major), the joint labels
    ``y * 4 + r`` in ``[0, 4 * num_classes)`` and the rotation labels ``r``; each output has ``4 N`` rows."""
    _check_images(x)
    _check_labels(y, len(x))
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}.")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotations by 90 degrees need square images, got {tuple(x.shape[-2:])}.")
    if len(y) and y.device.type == "cpu" and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"y must lie in [0, {num_classes}), got values in [{int(y.min())}, {int(y.max())}].")
    dims = (x.ndim - 2, x.ndim - 1)
    rotated = torch.stack([torch.rot90(x, r, dims) for r in range(NUM_ROTATIONS)], dim=1)
    rotated = rotated.reshape(-1, *x.shape[1:])
    rotation = torch.arange(NUM_ROTATIONS, device=y.device).repeat(len(y))
    return rotated, joint_label(y.repeat_interleave(NUM_ROTATIONS), rotation), rotation


def joint_label(y: torch.Tensor, t: torch.Tensor, num_transforms: int = NUM_ROTATIONS) -> torch.Tensor:
    """The joint label ``y * num_transforms + t`` of class ``y`` under transformation ``t``."""
    if num_transforms < 1:
        raise ValueError(f"num_transforms must be >= 1, got {num_transforms!r}.")
    return y * num_transforms + t


def split_joint_label(
    joint: torch.Tensor, num_transforms: int = NUM_ROTATIONS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of ``joint_label``: ``(joint // num_transforms, joint % num_transforms)``."""
    if num_transforms < 1:
        raise ValueError(f"num_transforms must be >= 1, got {num_transforms!r}.")
    return torch.div(joint, num_transforms, rounding_mode="floor"), joint.remainder(num_transforms)


def aggregate_joint_logits(logits: torch.Tensor, num_transforms: int = NUM_ROTATIONS) -> torch.Tensor:
    """SLA's aggregated prediction: from joint logits ``(N * M, C * M)`` of the example-major augmented batch,
    the class logits ``(N, C)`` averaged over transformations, ``mean_t logits[i * M + t, c * M + t]``."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError("logits must be a tensor of shape (N * num_transforms, C * num_transforms).")
    m = num_transforms
    if m < 1 or logits.shape[0] % m or logits.shape[1] % m:
        raise ValueError(
            f"logits shape {tuple(logits.shape)} is not divisible by num_transforms={m} on both dims."
        )
    n, c = logits.shape[0] // m, logits.shape[1] // m
    # [i, t, c, t'] -> keep the diagonal t == t'.
    blocks = logits.reshape(n, m, c, m)
    return torch.diagonal(blocks, dim1=1, dim2=3).mean(dim=-1)


def horizontal_flip(x: torch.Tensor) -> torch.Tensor:
    """Mirror images left-right (the last dim)."""
    _check_images(x)
    return torch.flip(x, dims=(-1,))


def random_horizontal_flip(
    x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Mirror each image left-right independently with probability ``p``."""
    _check_images(x)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p!r}.")
    flip = torch.rand(len(x), generator=generator, device=x.device) < p
    return torch.where(flip.view(-1, *([1] * (x.ndim - 1))), torch.flip(x, dims=(-1,)), x)


class RandomTranslate(nn.Module):
    """Shift each image by whole pixels, independently drawn in ``[-max_shift, max_shift]`` along height and
    width, filling the uncovered border with ``fill``. Identity in eval mode unless ``always=True``."""

    def __init__(self, max_shift: int = 1, fill: float = 0.0, always: bool = False) -> None:
        super().__init__()
        if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
            raise ValueError(f"max_shift must be an integer >= 0, got {max_shift!r}.")
        self.max_shift, self.fill, self.always = max_shift, float(fill), always

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(x, min_ndim=4)
        if self.max_shift == 0 or not (self.training or self.always) or len(x) == 0:
            return x
        n, _, h, w = x.shape
        s = self.max_shift
        shifts = torch.randint(-s, s + 1, (2, n), generator=generator, device=x.device)
        padded = nn.functional.pad(x, (s, s, s, s), value=self.fill)
        # Output pixel (r, c) of image i reads padded pixel (r + s - dy_i, c + s - dx_i).
        rows = torch.arange(h, device=x.device) + s - shifts[0].view(-1, 1)  # (N, H)
        cols = torch.arange(w, device=x.device) + s - shifts[1].view(-1, 1)  # (N, W)
        batch = torch.arange(n, device=x.device).view(-1, 1, 1)
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
        return out.permute(0, 3, 1, 2).contiguous()

    def extra_repr(self) -> str:
        return f"max_shift={self.max_shift}, fill={self.fill}"


class GaussianNoise(nn.Module):
    """Add i.i.d. Gaussian noise of standard deviation ``std``, optionally clamped to ``clip = (lo, hi)``.
    Identity in eval mode unless ``always=True``."""

    def __init__(
        self, std: float = 0.1, clip: tuple[float, float] | None = None, always: bool = False
    ) -> None:
        super().__init__()
        if not std >= 0:
            raise ValueError(f"std must be >= 0, got {std!r}.")
        if clip is not None and (len(clip) != 2 or not clip[0] < clip[1]):
            raise ValueError(f"clip must be a pair (lo, hi) with lo < hi, got {clip!r}.")
        self.std, self.clip, self.always = float(std), clip, always

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ValueError("GaussianNoise needs a floating-point tensor.")
        if self.std == 0 or not (self.training or self.always):
            return x
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        out = x + self.std * noise
        return out.clamp(*self.clip) if self.clip is not None else out

    def extra_repr(self) -> str:
        return f"std={self.std}, clip={self.clip}"
