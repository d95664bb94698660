"""Two-view data module for RCAL: the shared `multiview` module (it applies the frequency-proportional label
noise of `common.data.corruptions`) plus the weakly augmented noisy training set of the classifier stage."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from common.data.datamodule import HubImageDataset
from common.data.views import MultiViewDataModule
from common.registry import register_datamodule


@register_datamodule("rcal_multiview")
class RCALMultiViewDataModule(MultiViewDataModule):
    """`multiview` plus `weak_train_dataset()`, the classifier stage's augmented noisy training set."""

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
