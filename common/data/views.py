"""Two augmented views per example for contrastive pretraining, and unaugmented loaders for evaluation.

Pretraining batches are dicts with `x1`, `x2` (two independent augmentations of the same examples), `y`,
`y_clean` and `index` (the example's position in the training set). In-memory sources (digits, random
tensors) are augmented batch-wise with tensor ops (crop-and-resize, rotation, flip as one affine resampling;
intensity jitter, Gaussian noise, random erasing); hub image datasets get SimCLR's per-image augmentations
(Chen et al. 2020, Appendix A; as in joshr17/HCL image/utils.py `train_transform`). Evaluation uses the
unaugmented training set (`eval_train_dataloader`) and test set (`test_dataloader`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from common.data.datamodule import (
    ClassificationDataModule,
    HubImageDataset,
    TensorBatchDataset,
    TensorBatchSampler,
)
from common.errors import UserError
from common.registry import register_datamodule


class TensorViewAugment:
    """Random augmentation of a batch of images (B, C, H, W), each example drawn independently.

    One affine resampling (bilinear, zero padding) does crop-and-resize (a crop of `crop_scale` of the area
    with aspect ratio in `crop_ratio`, placed uniformly inside the image), rotation by up to
    `max_rotation` degrees and a horizontal flip with probability `flip_prob`. Then, with probability
    `intensity_prob`, brightness and contrast factors in [1 - intensity_jitter, 1 + intensity_jitter] and,
    on colour images, a saturation factor in [1 - saturation_jitter, 1 + saturation_jitter] and a hue
    rotation of up to `hue_jitter` of a turn (in YIQ space, a differentiable stand-in for SimCLR's colour
    jitter); with probability `grayscale_prob` a colour image becomes grey; Gaussian noise of std
    `noise_std`; and with probability `erase_prob` a zeroed rectangle of `erase_scale` of the area (random
    erasing). Colour steps left at 0 draw no random numbers, so settings without them keep their stream."""

    def __init__(
        self,
        *,
        crop_scale: Sequence[float] = (0.5, 1.0),
        crop_ratio: Sequence[float] = (0.75, 4.0 / 3.0),
        max_rotation: float = 15.0,
        flip_prob: float = 0.0,
        intensity_jitter: float = 0.4,
        intensity_prob: float = 0.8,
        noise_std: float = 0.05,
        erase_prob: float = 0.5,
        erase_scale: Sequence[float] = (0.05, 0.2),
        saturation_jitter: float = 0.0,
        hue_jitter: float = 0.0,
        grayscale_prob: float = 0.0,
    ):
        self.crop_scale, self.crop_ratio = tuple(crop_scale), tuple(crop_ratio)
        self.saturation_jitter, self.hue_jitter, self.grayscale_prob = (
            saturation_jitter,
            hue_jitter,
            grayscale_prob,
        )
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise UserError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        self.max_rotation, self.flip_prob = max_rotation, flip_prob
        self.intensity_jitter, self.intensity_prob = intensity_jitter, intensity_prob
        self.noise_std, self.erase_prob, self.erase_scale = noise_std, erase_prob, tuple(erase_scale)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"TensorViewAugment expects images (B, C, H, W), got shape {tuple(x.shape)}")
        batch, _, height, width = x.shape

        def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
            return low + (high - low) * torch.rand(*shape or (batch,), generator=generator)

        area = uniform(*self.crop_scale)
        log_ratio = uniform(math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
        ratio = torch.exp(log_ratio)
        crop_w = torch.sqrt(area * ratio).clamp(max=1.0)  # side lengths as fractions of the image
        crop_h = torch.sqrt(area / ratio).clamp(max=1.0)
        # Normalised coordinates span [-1, 1]: the crop centre may move by 1 - side in each direction.
        shift_x = uniform(-1.0, 1.0) * (1 - crop_w)
        shift_y = uniform(-1.0, 1.0) * (1 - crop_h)
        angle = uniform(-1.0, 1.0) * math.radians(self.max_rotation)
        flip = torch.where(torch.rand(batch, generator=generator) < self.flip_prob, -1.0, 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack(
            [
                torch.stack([cos * crop_w * flip, -sin * crop_h, shift_x], 1),
                torch.stack([sin * crop_w * flip, cos * crop_h, shift_y], 1),
            ],
            1,
        ).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        if self.intensity_prob > 0 and self.intensity_jitter > 0:
            apply = (torch.rand(batch, generator=generator) < self.intensity_prob).to(x.dtype)
            j = self.intensity_jitter
            brightness = 1 + apply * uniform(-j, j)
            contrast = 1 + apply * uniform(-j, j)
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out = (out - mean) * contrast.view(-1, 1, 1, 1).to(x.dtype) + mean
            out = out * brightness.view(-1, 1, 1, 1).to(x.dtype)
        colour = x.shape[1] == 3
        if colour and self.intensity_prob > 0 and (self.saturation_jitter > 0 or self.hue_jitter > 0):
            apply = (torch.rand(batch, generator=generator) < self.intensity_prob).to(x.dtype)
            saturation = 1 + apply * uniform(-self.saturation_jitter, self.saturation_jitter)
            turn = apply * uniform(-self.hue_jitter, self.hue_jitter) * 2 * math.pi
            out = _saturate_and_rotate_hue(out, saturation.to(x.dtype), turn.to(x.dtype))
        if colour and self.grayscale_prob > 0:
            grey = (torch.rand(batch, generator=generator) < self.grayscale_prob).view(-1, 1, 1, 1)
            out = torch.where(grey, _luma(out).expand_as(out), out)
        if self.noise_std > 0:
            out = out + self.noise_std * torch.randn(out.shape, generator=generator, dtype=x.dtype)
        if self.erase_prob > 0:
            erase_area = uniform(*self.erase_scale)
            erase_h = torch.clamp(torch.round(torch.sqrt(erase_area) * height), 1, height)
            erase_w = torch.clamp(torch.round(torch.sqrt(erase_area) * width), 1, width)
            top = torch.floor(uniform(0.0, 1.0) * (height - erase_h + 1))
            left = torch.floor(uniform(0.0, 1.0) * (width - erase_w + 1))
            apply = torch.rand(batch, generator=generator) < self.erase_prob
            rows = torch.arange(height)[None, :]
            cols = torch.arange(width)[None, :]
            in_rows = (rows >= top[:, None]) & (rows < (top + erase_h)[:, None])
            in_cols = (cols >= left[:, None]) & (cols < (left + erase_w)[:, None])
            mask = (in_rows[:, :, None] & in_cols[:, None, :]) & apply[:, None, None]
            out = out.masked_fill(mask[:, None], 0.0)
        return out


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _luma(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma of RGB images."""
    return torch.einsum("c,bchw->bhw", _RGB_TO_YIQ[0].to(images.dtype), images)[:, None]


def _saturate_and_rotate_hue(
    images: torch.Tensor, saturation: torch.Tensor, turn: torch.Tensor
) -> torch.Tensor:
    """Scales the chroma (I, Q) of each RGB image by `saturation` and rotates it by `turn` radians."""
    to_yiq = _RGB_TO_YIQ.to(images.dtype)
    yiq = torch.einsum("dc,bchw->bdhw", to_yiq, images)
    cos, sin = torch.cos(turn) * saturation, torch.sin(turn) * saturation
    i, q = yiq[:, 1], yiq[:, 2]
    rotated_i = cos.view(-1, 1, 1) * i - sin.view(-1, 1, 1) * q
    rotated_q = sin.view(-1, 1, 1) * i + cos.view(-1, 1, 1) * q
    yiq = torch.stack([yiq[:, 0], rotated_i, rotated_q], 1)
    return torch.einsum("cd,bdhw->bchw", torch.linalg.inv(to_yiq), yiq)


class AugmentedTensorDataset(TensorBatchDataset):
    """A TensorBatchDataset whose batches carry augmented copies of `x` under `view_keys` (instead of x)."""

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        augment: TensorViewAugment,
        generator: torch.Generator,
        view_keys: Sequence[str] = ("x1", "x2"),
    ):
        super().__init__(tensors)
        self.augment, self.generator, self.view_keys = augment, generator, tuple(view_keys)

    def __getitem__(self, indices: torch.Tensor | Sequence[int]) -> dict[str, torch.Tensor]:
        batch = super().__getitem__(indices)
        x = batch.pop("x")
        images = x if x.dim() == 4 else x.unsqueeze(1)  # (B, H, W) single-channel inputs
        for key in self.view_keys:
            view = self.augment(images, self.generator)
            batch[key] = view if x.dim() == 4 else view.squeeze(1)
        return batch


class TwoViewHubDataset(HubImageDataset):
    """A hub image split whose items carry two independent augmentations `x1`, `x2` of the image."""

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = self.split[int(self.positions[i])][self.image_key].convert("RGB")
        return {
            "x1": self.transform(image),
            "x2": self.transform(image),
            "y": self.labels[i],
            "y_clean": self.clean[i],
            "index": self.positions[i],
        }


class DropLastTensorBatchSampler(TensorBatchSampler):
    """TensorBatchSampler without the final short batch (every batch has the same number of negatives)."""

    def __len__(self) -> int:
        return self.length // self.batch_size

    def __iter__(self):
        for batch in super().__iter__():
            if len(batch) == self.batch_size:
                yield batch


@register_datamodule("multiview")
class MultiViewDataModule(ClassificationDataModule):
    """ClassificationDataModule whose training loader yields two augmented views per example.

    In-memory sources use `TensorViewAugment` (keys crop_scale, crop_ratio, max_rotation, flip_prob,
    intensity_jitter, intensity_prob, saturation_jitter, hue_jitter, tensor_grayscale_prob, noise_std,
    erase_prob, erase_scale). Hub sources use SimCLR's
    augmentations: RandomResizedCrop(view_size, crop_scale, crop_ratio), horizontal flip (flip_prob),
    ColorJitter(*color_jitter) with probability color_jitter_prob, RandomGrayscale(grayscale_prob), Gaussian
    blur (blur_kernel_size, blur_sigma) with probability blur_prob, then normalisation. `drop_last` drops
    the final short pretraining batch, as the official SimCLR/DCL/HCL loaders do."""

    def __init__(
        self,
        source: str = "digits",
        *,
        drop_last: bool = True,
        crop_scale: Sequence[float] = (0.08, 1.0),
        crop_ratio: Sequence[float] = (0.75, 4.0 / 3.0),
        flip_prob: float = 0.5,
        max_rotation: float = 0.0,
        intensity_jitter: float = 0.4,
        intensity_prob: float = 0.8,
        noise_std: float = 0.0,
        erase_prob: float = 0.0,
        erase_scale: Sequence[float] = (0.05, 0.2),
        saturation_jitter: float = 0.0,
        hue_jitter: float = 0.0,
        tensor_grayscale_prob: float = 0.0,
        view_size: int | None = None,
        color_jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.1),
        color_jitter_prob: float = 0.8,
        grayscale_prob: float = 0.2,
        blur_prob: float = 0.0,
        blur_kernel_size: int = 3,
        blur_sigma: Sequence[float] = (0.1, 2.0),
        **kwargs: Any,
    ):
        kwargs["augment"] = False  # the classification training set stays unaugmented (evaluation)
        super().__init__(source, **kwargs)
        self.drop_last = drop_last
        self.tensor_augment = TensorViewAugment(
            crop_scale=crop_scale,
            crop_ratio=crop_ratio,
            max_rotation=max_rotation,
            flip_prob=flip_prob,
            intensity_jitter=intensity_jitter,
            intensity_prob=intensity_prob,
            noise_std=noise_std,
            erase_prob=erase_prob,
            erase_scale=erase_scale,
            saturation_jitter=saturation_jitter,
            hue_jitter=hue_jitter,
            grayscale_prob=tensor_grayscale_prob,
        )
        self.simclr = {
            "view_size": view_size,
            "crop_scale": tuple(crop_scale),
            "crop_ratio": tuple(crop_ratio),
            "flip_prob": flip_prob,
            "color_jitter": tuple(color_jitter),
            "color_jitter_prob": color_jitter_prob,
            "grayscale_prob": grayscale_prob,
            "blur_prob": blur_prob,
            "blur_kernel_size": blur_kernel_size,
            "blur_sigma": tuple(blur_sigma),
        }
        self._view_generator = torch.Generator().manual_seed(int(self.seed))

    # ---- set-up -------------------------------------------------------------------------------------------
    def _setup_hub(self) -> None:
        super()._setup_hub()
        base = self._train_set
        tf = self.simclr_transform()
        self._views_set = TwoViewHubDataset(base.split, self.image_key, base.labels, base.clean, tf)
        self._probe_set = HubImageDataset(base.split, self.image_key, base.labels, base.clean, tf)

    def simclr_transform(self) -> Any:
        """SimCLR's per-image augmentation of one view, ending in the dataset's normalisation."""
        from torchvision.transforms import v2

        cfg = self.simclr
        size = cfg["view_size"] or self.image_size
        steps = [
            v2.RandomResizedCrop(size, scale=cfg["crop_scale"], ratio=cfg["crop_ratio"], antialias=True),
            v2.RandomHorizontalFlip(p=cfg["flip_prob"]),
            v2.RandomApply([v2.ColorJitter(*cfg["color_jitter"])], p=cfg["color_jitter_prob"]),
            v2.RandomGrayscale(p=cfg["grayscale_prob"]),
        ]
        if cfg["blur_prob"] > 0:
            blur = v2.GaussianBlur(cfg["blur_kernel_size"], sigma=cfg["blur_sigma"])
            steps.append(v2.RandomApply([blur], p=cfg["blur_prob"]))
        steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        return v2.Compose(steps)

    # ---- loaders ------------------------------------------------------------------------------------------
    def _tensors(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        return {
            "x": self.train_x[indices],
            "y": torch.as_tensor(self.train_labels[indices], dtype=torch.long),
            "y_clean": torch.as_tensor(self.train_labels_clean[indices], dtype=torch.long),
            "index": torch.as_tensor(indices, dtype=torch.long),
        }

    def views_dataset(self) -> Dataset:
        """The training set as two augmented views per example."""
        if self.source == "hub":
            return self._views_set
        indices = np.arange(self.num_train)
        return AugmentedTensorDataset(self._tensors(indices), self.tensor_augment, self._view_generator)

    def train_dataloader(self) -> DataLoader:
        dataset = self.views_dataset()
        if isinstance(dataset, TensorBatchDataset):
            generator = torch.Generator().manual_seed(int(self.seed))
            sampler_cls = DropLastTensorBatchSampler if self.drop_last else TensorBatchSampler
            if self.drop_last and len(dataset) < self.batch_size:
                raise UserError(
                    f"data.batch_size={self.batch_size} exceeds the {len(dataset)} training examples and "
                    "data.drop_last=true would leave no batch; lower the batch size"
                )
            sampler = sampler_cls(len(dataset), self.batch_size, True, generator)
            return DataLoader(dataset, batch_size=None, sampler=sampler)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def eval_train_dataloader(self) -> DataLoader:
        """The unaugmented training set in order (kNN memory bank, linear-probe training features)."""
        return self.loader(self.train_dataset(), shuffle=False, train=False)

    def probe_train_dataloader(self, batch_size: int | None = None) -> DataLoader:
        """The training set with one fresh augmented view per example and epoch, under key `x`, shuffled
        (a linear probe trained on augmented inputs, as the official linear evaluations do)."""
        batch_size = batch_size or self.eval_batch_size
        if self.source == "hub":
            return self._loader(self._probe_set, batch_size, shuffle=True, seed_offset=1)
        dataset = AugmentedTensorDataset(
            self._tensors(np.arange(self.num_train)), self.tensor_augment, self._view_generator, ("x",)
        )
        return self._loader(dataset, batch_size, shuffle=True, seed_offset=1)

    def test_dataloader(self) -> DataLoader:
        """The unaugmented test set in order."""
        return self._loader(self.test_dataset(), self.eval_batch_size, shuffle=False)

    # No validation loop: kNN and linear-probe evaluation run inside the contrastive module on the loaders
    # above (Lightning treats a None hook as not overridden).
    val_dataloader = None  # type: ignore[assignment]
