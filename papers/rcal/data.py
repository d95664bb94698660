"""Two-view data module with frequency-proportional label noise (papers/rcal/noise.py).

The shared `multiview` module does not know this noise type yet; this subclass accepts it, builds the
clean long-tailed split through the parent, then corrupts the training labels."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from common.data.datamodule import HubImageDataset
from common.data.views import MultiViewDataModule
from common.registry import register_datamodule
from papers.rcal.noise import NOISE_TYPE, inject_frequency_proportional_noise


@register_datamodule("rcal_multiview")
class RCALMultiViewDataModule(MultiViewDataModule):
    """`multiview` plus `noise_type: frequency_proportional`; every other noise type goes to the parent."""

    def __init__(
        self, source: str = "digits", *, noise_type: str = "none", noise_rate: float = 0.0, **kwargs: Any
    ):
        self.frequency_proportional = noise_type == NOISE_TYPE
        parent_type = "none" if self.frequency_proportional else noise_type
        super().__init__(source, noise_type=parent_type, noise_rate=noise_rate, **kwargs)

    def setup(self, stage: str | None = None) -> None:
        if self._prepared:
            return
        super().setup(stage)
        if not self.frequency_proportional or self.noise_rate == 0:
            return
        noisy = inject_frequency_proportional_noise(
            self.train_labels_clean, self.noise_rate, self.num_classes, seed=self.seed
        )
        self.train_labels = noisy
        if self.source == "hub":  # the hub datasets hold their label tensors
            for dataset in (self._train_set, self._views_set, self._probe_set):
                dataset.labels = torch.as_tensor(noisy)
        # The parent's hash covers the clean labels; add the corrupted ones.
        self._hash_parts = [*self._hash_parts, np.frombuffer(NOISE_TYPE.encode(), np.uint8), noisy]

    def weak_train_dataset(self) -> Dataset:
        """The noisy training set for classifier training: hub images with the standard weak CIFAR
        augmentation (random crop, 4-pixel padding; horizontal flip), the "standard weak augmentations" of
        RCAL's classifier stage; in-memory images as they are."""
        if self.source != "hub":
            return self.train_dataset()
        from torchvision.transforms import v2

        transform = v2.Compose(
            [
                v2.RandomCrop(self.image_size, padding=4),
                v2.RandomHorizontalFlip(),
                v2.ToImage(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(self.mean, self.std),
            ]
        )
        base = self._train_set
        return HubImageDataset(
            base.split, self.image_key, self.train_labels, self.train_labels_clean, transform
        )
