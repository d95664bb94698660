"""A synthetic stand-in for SimPLe's private breast DCE-MRI cohort, and its data module.

The paper's 206 patients are not released, so every scale uses generated 2D images (documented in README.md):
  * background: smooth "parenchyma" texture (Gaussian-filtered noise) on a constant level, plus a few smaller
    bright blobs (normal enhancing tissue, vessels: the distractors that make intensity alone insufficient);
  * one lesion per image: an ellipse with a lobulated boundary (radius modulated by low harmonics), random
    size, axis ratio and rotation, enhanced by a random contrast with smooth internal heterogeneity; a share
    of lesions enhance at the rim only (darker necrotic core), a typical pattern of breast cancer in DCE-MRI;
    optionally (``margin_level`` < 1) a faint, infiltrative margin (enhancement rising from the boundary);
  * the whole image is blurred (partial-volume edges) and Rician-like noise is added (|x + noise|).
The ground-truth mask is the lesion shape before blurring. Weak labels are its four extreme points, turned
into an initial pseudo-mask: the official one (`papers.simple_seg.weak_labels.initial_pseudo_mask`) or the
extreme points' quadrilateral (`extreme_polygon_mask`): positives inside, negatives outside the box, the rest
of the box unlabeled (``UNKNOWN``).

Batches: whole images (``patch_size`` null) as ``x`` (B, 1, H, W), ``y`` (the stage's targets) and ``gt``; or,
as the official loaders, a foreground patch (centred on a random positive pixel) and a background patch
(centred on a random negative pixel) per image: ``x_fg``, ``y_fg``, ``gt_fg``, ``x_bg``, ``y_bg``. Inputs are
z-scored per image (official `Norm`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset

from common.data.datamodule import TensorBatchDataset, TensorBatchSampler
from common.errors import UserError
from common.registry import register_datamodule
from papers.simple_seg.weak_labels import (
    ExtremePointBox,
    extreme_points,
    extreme_polygon_mask,
    initial_pseudo_mask,
)

SOURCES = ("lesions", "random")
INITIAL_MASKS = ("random_walker", "extreme_polygon")
# The random source (config smoke tests only) keeps its image counts small: it only has to run one step.
RANDOM_MAX_TRAIN, RANDOM_MAX_TEST = 16, 4


@dataclass(frozen=True)
class LesionSpec:
    """What the generated images look like; lengths in pixels, intensities in units of the lesion contrast."""

    radius_min: float = 5.0
    radius_max: float = 12.0
    axis_ratio_min: float = 0.5  # short / long semi-axis
    lobulation: float = 0.15  # relative amplitude of the boundary harmonics
    contrast_min: float = 0.5
    contrast_max: float = 1.0
    heterogeneity: float = 0.4  # relative amplitude of the smooth texture inside the lesion
    rim_probability: float = 0.3  # share of rim-enhancing lesions (dark necrotic core)
    rim_core_fraction: float = 0.5  # core radius / lesion radius
    rim_core_drop: float = 0.6  # relative enhancement lost in the core
    margin_level: float = 1.0  # relative enhancement at the boundary (< 1: faint, infiltrative margin)
    margin_width: float = 0.5  # depth (share of the largest inner distance) where enhancement is full
    background_level: float = 0.3
    texture_std: float = 0.12
    texture_sigma: float = 3.0
    num_distractors: int = 4
    distractor_radius_min: float = 1.5
    distractor_radius_max: float = 3.5
    distractor_contrast_min: float = 0.3
    distractor_contrast_max: float = 0.8
    blur_sigma: float = 1.5
    noise_std: float = 0.1


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field / (field.std() + 1e-12)


def _lobulated_ellipse(
    rng: np.random.Generator, shape: tuple[int, int], centre: np.ndarray, radius: float, spec: LesionSpec
) -> np.ndarray:
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    theta = rng.uniform(0, np.pi)
    ratio = rng.uniform(spec.axis_ratio_min, 1.0)
    dy, dx = rows - centre[0], cols - centre[1]
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    angle = np.arctan2(v, u)
    modulation = np.ones(shape)
    for harmonic in (2, 3, 5):
        modulation += (
            spec.lobulation
            / harmonic**0.5
            * rng.uniform(-1, 1)
            * np.cos(harmonic * angle + rng.uniform(0, 2 * np.pi))
        )
    return np.hypot(u / radius, v / (radius * ratio)) <= modulation


def synthesize_lesion_image(
    rng: np.random.Generator, size: int, spec: LesionSpec
) -> tuple[np.ndarray, np.ndarray]:
    """One ``(image, mask)`` pair: float32 (size, size) and bool (size, size) with one lesion."""
    shape = (size, size)
    margin = spec.radius_max + 2
    while True:
        centre = rng.uniform(margin, size - margin, size=2)
        radius = rng.uniform(spec.radius_min, spec.radius_max)
        mask = _lobulated_ellipse(rng, shape, centre, radius, spec)
        if mask.sum() >= 9:
            break
    image = spec.background_level + spec.texture_std * _smooth_noise(rng, shape, spec.texture_sigma)
    for _ in range(spec.num_distractors):
        blob_radius = rng.uniform(spec.distractor_radius_min, spec.distractor_radius_max)
        blob_centre = rng.uniform(0, size, size=2)
        blob = _lobulated_ellipse(rng, shape, blob_centre, blob_radius, spec) & ~mask
        image = image + rng.uniform(spec.distractor_contrast_min, spec.distractor_contrast_max) * blob
    contrast = rng.uniform(spec.contrast_min, spec.contrast_max)
    inner = 1.0 + spec.heterogeneity * _smooth_noise(rng, shape, 2.0)
    if rng.uniform() < spec.rim_probability:
        dist = ndimage.distance_transform_edt(mask)
        core = dist > (1.0 - spec.rim_core_fraction) * dist.max()
        inner = inner * (1.0 - spec.rim_core_drop * ndimage.gaussian_filter(core.astype(float), 1.0))
    if spec.margin_level < 1.0:  # faint, infiltrative margin: enhancement rises from the boundary inwards
        depth = ndimage.distance_transform_edt(mask)
        ramp = np.clip(depth / (spec.margin_width * depth.max() + 1e-12), 0.0, 1.0)
        ramp = ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep
        inner = inner * (spec.margin_level + (1.0 - spec.margin_level) * ramp)
    image = image + contrast * inner * mask
    image = ndimage.gaussian_filter(image, spec.blur_sigma)
    noise = spec.noise_std * rng.standard_normal((2, *shape))
    image = np.hypot(image + noise[0], noise[1])  # magnitude image: Rician noise
    return image.astype(np.float32), mask


def zscore(images: np.ndarray) -> np.ndarray:
    """Per-image standardisation (official data_transform.Norm)."""
    mean = images.mean(axis=(-2, -1), keepdims=True)
    std = images.std(axis=(-2, -1), keepdims=True)
    return ((images - mean) / np.maximum(std, 1e-6)).astype(np.float32)


class PatchDataset(Dataset):
    """Per image: a patch centred on a random positive pixel of its targets and one on a random negative
    pixel (official RandomCrop(patch, 1, 1.) and RandomCrop(patch, 0, 1.)); positions from numpy's global
    generator, which the pipeline seeds per stage."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, truth: np.ndarray, patch_size: int):
        self.images, self.targets, self.truth, self.patch = images, targets, truth, int(patch_size)

    def __len__(self) -> int:
        return len(self.images)

    def _crop(self, index: int, label: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image, target, truth = self.images[index], self.targets[index], self.truth[index]
        height, width = image.shape
        locations = np.argwhere(target == label)
        if len(locations) == 0:  # e.g. a retrain mask without positives: any pixel
            centre = np.array([np.random.randint(height), np.random.randint(width)])
        else:
            centre = locations[np.random.randint(len(locations))]
        r0 = int(np.clip(centre[0] - self.patch // 2, 0, height - self.patch))
        c0 = int(np.clip(centre[1] - self.patch // 2, 0, width - self.patch))
        window = (slice(r0, r0 + self.patch), slice(c0, c0 + self.patch))
        return image[window], target[window], truth[window]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        x_fg, y_fg, gt_fg = self._crop(index, 1)
        x_bg, y_bg, _ = self._crop(index, 0)
        return {
            "x_fg": torch.from_numpy(x_fg[None].copy()),
            "y_fg": torch.from_numpy(y_fg.astype(np.int64)),
            "gt_fg": torch.from_numpy(gt_fg.astype(np.int64)),
            "x_bg": torch.from_numpy(x_bg[None].copy()),
            "y_bg": torch.from_numpy(y_bg.astype(np.int64)),
        }


@register_datamodule("simple_seg_lesions")
class LesionSegmentationDataModule(L.LightningDataModule):
    """Generated lesion images with ground truth, extreme points and initial pseudo-masks.

    Args:
        source: ``lesions`` (the proxy) or ``random`` (noise images with random lesion masks, at most 16 train
            and 4 test images, extreme-polygon initial masks: config smoke tests only).
        image_size: side of the square images (a multiple of the U-Net's total stride).
        num_train, num_test: numbers of training (weakly labelled) and test (fully labelled) images.
        patch_size: side of the training patches; null trains on whole images.
        lesion: `LesionSpec` fields.
        initial_mask: ``random_walker`` (the official procedure, `initial_pseudo_mask`) or ``extreme_polygon``
            (positives = the quadrilateral of the extreme points, `extreme_polygon_mask`).
        polygon_scale: with ``extreme_polygon``, the quadrilateral shrunk by this factor towards its centre
            (1: the whole quadrilateral).
        crop_margin, background_margin, rw_beta, rw_rounds, foreground_threshold, background_threshold: the
            random-walker procedure (official 20, 5, 130, 7, 0.8, 0.1).
    """

    def __init__(
        self,
        source: str = "lesions",
        *,
        image_size: int = 64,
        num_train: int = 200,
        num_test: int = 100,
        patch_size: int | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        lesion: dict[str, Any] | None = None,
        initial_mask: str = "random_walker",
        polygon_scale: float = 1.0,
        crop_margin: int = 20,
        background_margin: int = 5,
        rw_beta: float = 130.0,
        rw_rounds: int = 7,
        foreground_threshold: float = 0.8,
        background_threshold: float = 0.1,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise UserError(f"unknown data.source {source!r} for simple_seg_lesions; use one of {SOURCES}")
        if initial_mask not in INITIAL_MASKS:
            raise UserError(f"unknown data.initial_mask {initial_mask!r}; use one of {INITIAL_MASKS}")
        if patch_size is not None and patch_size > image_size:
            raise UserError(f"data.patch_size {patch_size} exceeds data.image_size {image_size}")
        try:
            self.spec = LesionSpec(**(lesion or {}))
        except TypeError as err:
            raise UserError(f"data.lesion has an unknown field: {err}") from err
        self.source, self.seed = source, int(seed)
        self.image_size, self.patch_size = int(image_size), patch_size
        self.num_train, self.num_test = int(num_train), int(num_test)
        if source == "random":
            self.num_train, self.num_test = (
                min(self.num_train, RANDOM_MAX_TRAIN),
                min(self.num_test, RANDOM_MAX_TEST),
            )
        self.batch_size, self.eval_batch_size, self.num_workers = (
            int(batch_size),
            int(eval_batch_size),
            num_workers,
        )
        self.initial_mask = initial_mask
        if not 0.0 < float(polygon_scale) <= 1.0:
            raise UserError(f"data.polygon_scale must be in (0, 1], got {polygon_scale}")
        self.polygon_scale = float(polygon_scale)
        self.mask_params = {
            "crop_margin": int(crop_margin),
            "background_margin": int(background_margin),
            "beta": float(rw_beta),
            "rounds": int(rw_rounds),
            "foreground_threshold": float(foreground_threshold),
            "background_threshold": float(background_threshold),
        }
        self.num_classes = 2
        self.train_images: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, self.image_size, self.image_size)

    def params(self) -> dict[str, Any]:
        """What decides the data (part of the stages' keys)."""
        return {
            "source": self.source,
            "seed": self.seed,
            "image_size": self.image_size,
            "num_train": self.num_train,
            "num_test": self.num_test,
            "lesion": asdict(self.spec),
            "initial_mask": self.initial_mask,
            "mask": (
                self.mask_params
                if self.initial_mask == "random_walker"
                else {"polygon_scale": self.polygon_scale}
            ),
        }

    @property
    def split_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.params(), sort_keys=True).encode()).hexdigest()[:16]

    def _generate(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        pairs = [synthesize_lesion_image(rng, self.image_size, self.spec) for _ in range(count)]
        images = np.stack([p[0] for p in pairs])
        masks = np.stack([p[1] for p in pairs])
        if self.source == "random":
            images = rng.standard_normal(images.shape).astype(np.float32)
        return images, masks

    def setup(self, stage: str | None = None) -> None:
        if self.train_images is not None:
            return
        rng = np.random.default_rng([self.seed, 2023])
        raw_train, self.train_truth = self._generate(self.num_train, rng)
        raw_test, self.test_truth = self._generate(self.num_test, rng)
        self.train_points: list[ExtremePointBox] = [extreme_points(m) for m in self.train_truth]
        # The random source (smoke tests) skips the random walker: noise images make it slow and meaningless.
        if self.initial_mask == "random_walker" and self.source != "random":
            weak = [
                initial_pseudo_mask(img, pts, **self.mask_params)
                for img, pts in zip(raw_train, self.train_points, strict=True)
            ]
        else:
            weak = [
                extreme_polygon_mask(img.shape, pts, self.polygon_scale)
                for img, pts in zip(raw_train, self.train_points, strict=True)
            ]
        self.train_weak = np.stack(weak)
        self.train_box = np.stack(
            [pts.inside(m.shape) for pts, m in zip(self.train_points, self.train_truth, strict=True)]
        )
        self.train_images, self.test_images = zscore(raw_train), zscore(raw_test)

    # ---- loaders -----------------------------------------------------------------------------------------
    def loader_for(self, targets: np.ndarray, shuffle: bool = True) -> DataLoader:
        """Training batches with these per-pixel targets (1, 0 or ``UNKNOWN``) for the training images."""
        if self.train_images is None:
            raise RuntimeError("call setup() first")
        if targets.shape != self.train_truth.shape:
            raise ValueError(f"targets must have shape {self.train_truth.shape}, got {targets.shape}")
        if self.patch_size is None:
            dataset = TensorBatchDataset(
                {
                    "x": torch.from_numpy(self.train_images[:, None]),
                    "y": torch.from_numpy(targets.astype(np.int64)),
                    "gt": torch.from_numpy(self.train_truth.astype(np.int64)),
                }
            )
            sampler = TensorBatchSampler(len(dataset), self.batch_size, shuffle)
            return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=0)
        dataset = PatchDataset(self.train_images, targets, self.train_truth, self.patch_size)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=len(dataset) >= self.batch_size,  # official drop_last=True
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader_for(self.train_weak)
