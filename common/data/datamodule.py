"""LightningDataModules for classification under label corruption.

Batches are dicts: `x` inputs, `y` the (possibly corrupted) training label, `y_clean` the clean label and
`index`, the example's position in the training set (per-example state such as ELR targets keys on it).
Mini sources are held in memory and batched by tensor indexing (no per-example collate, no workers)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from common.data import corruptions
from common.data.shapes import load_shapes
from common.data.sources import ArrayData, load_digits, load_hub_dataset, make_gaussian_mixture, make_random
from common.errors import UserError
from common.registry import register_datamodule

NOISE_TYPES = (
    "none",
    "symmetric",
    "pair",
    "asymmetric_cifar10",
    "asymmetric_cifar100",
    "instance",
    "class_conditional",
    "frequency_proportional",
)
# CIFAR-100 asymmetric protocol: each class flips to the next one within its block of 5 consecutive classes.
CIFAR100_ASYMMETRIC_MAP = tuple((i // 5) * 5 + (i + 1) % 5 for i in range(100))
MINI_SOURCES = ("digits", "gaussian_mixture", "shapes", "random")


class TensorBatchSampler(torch.utils.data.Sampler):
    """Batches of indices as tensors (one randperm per epoch), for `TensorBatchDataset`."""

    def __init__(self, length: int, batch_size: int, shuffle: bool, generator: torch.Generator | None = None):
        self.length, self.batch_size, self.shuffle, self.generator = length, batch_size, shuffle, generator

    def __len__(self) -> int:
        return (self.length + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.length, generator=self.generator)
        else:
            order = torch.arange(self.length)
        yield from order.split(self.batch_size)


class TensorBatchDataset(Dataset):
    """Indexing with a list of indices returns the whole batch at once."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        lengths = {len(t) for t in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"tensors must have one length, got {lengths}")
        self.tensors = tensors
        self.length = lengths.pop()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, indices: torch.Tensor | Sequence[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices)
        return {key: value[idx] for key, value in self.tensors.items()}


class HubImageDataset(Dataset):
    """One split of a HuggingFace image dataset with per-example transforms and our labels."""

    def __init__(
        self,
        split: Any,
        image_key: str,
        labels: np.ndarray,
        clean: np.ndarray,
        transform: Any,
        positions: np.ndarray | None = None,
    ):
        self.split, self.image_key, self.transform = split, image_key, transform
        self.labels, self.clean = torch.as_tensor(labels), torch.as_tensor(clean)
        self.positions = torch.arange(len(labels)) if positions is None else torch.as_tensor(positions)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = self.split[int(self.positions[i])][self.image_key].convert("RGB")
        return {
            "x": self.transform(image),
            "y": self.labels[i],
            "y_clean": self.clean[i],
            "index": self.positions[i],
        }


def corrupt_labels(
    labels: np.ndarray,
    *,
    num_classes: int,
    noise_type: str,
    noise_rate: float,
    seed: int,
    features: np.ndarray | None = None,
    noise_map: Sequence[int] | dict[int, int] | None = None,
    noise_sparsity: float = 0.0,
    include_true_class: bool = False,
) -> np.ndarray:
    """The training labels after the configured corruption; the input stays untouched."""
    if noise_type not in NOISE_TYPES:
        raise UserError(f"unknown data.noise_type {noise_type!r}; use one of {NOISE_TYPES}")
    if noise_type == "none" or noise_rate == 0:
        return labels.copy()
    if noise_type == "symmetric":
        return corruptions.inject_symmetric_noise(
            labels, noise_rate, num_classes, seed=seed, include_true_class=include_true_class
        )
    if noise_type == "pair":
        return corruptions.inject_pair_noise(labels, noise_rate, num_classes, seed=seed, mapping=noise_map)
    if noise_type == "asymmetric_cifar10":
        return corruptions.inject_pair_noise(
            labels, noise_rate, num_classes, seed=seed, mapping=corruptions.CIFAR10_ASYMMETRIC_MAP
        )
    if noise_type == "asymmetric_cifar100":
        return corruptions.inject_pair_noise(
            labels, noise_rate, num_classes, seed=seed, mapping=CIFAR100_ASYMMETRIC_MAP
        )
    if noise_type == "frequency_proportional":
        return corruptions.inject_frequency_proportional_noise(labels, noise_rate, num_classes, seed=seed)
    if noise_type == "instance":
        flat = features.reshape(len(features), -1)
        return corruptions.inject_instance_noise(flat, labels, noise_rate, num_classes, seed=seed)
    # Confident Learning's protocol: trace = K (1 - noise amount), a fraction of zero off-diagonal rates.
    py = np.bincount(labels, minlength=num_classes) / len(labels)
    matrix = corruptions.noise_matrix_from_trace(
        num_classes, num_classes * (1 - noise_rate), frac_zero_noise_rates=noise_sparsity, seed=seed, py=py
    )
    return corruptions.inject_class_conditional_noise(labels, matrix, seed=seed)


@register_datamodule("classification")
class ClassificationDataModule(L.LightningDataModule):
    """Train/test classification data with seeded label corruption of the training split.

    `source` is a mini source (digits, gaussian_mixture, shapes, random) or `hub` (paper scale: `hub_id`). The
    clean training labels are kept (`train_labels_clean`) beside the corrupted ones (`train_labels`)."""

    def __init__(
        self,
        source: str = "digits",
        *,
        seed: int = 0,
        split_seed: int = 0,
        noise_type: str = "none",
        noise_rate: float = 0.0,
        noise_map: Any = None,
        noise_sparsity: float = 0.0,
        noise_include_true_class: bool = False,
        imbalance_ratio: float | None = None,
        long_tail_max_per_class: int | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        test_fraction: float = 0.3,
        source_kwargs: dict[str, Any] | None = None,
        hub_id: str | None = None,
        hub_name: str | None = None,
        image_key: str = "img",
        label_key: str = "label",
        test_split: str = "test",
        image_size: int = 32,
        mean: Sequence[float] = (0.4914, 0.4822, 0.4465),
        std: Sequence[float] = (0.2470, 0.2435, 0.2616),
        augment: bool = True,
        num_workers: int = 0,
        cache_dir: str | None = None,
        num_classes: int | None = None,
        input_shape: Sequence[int] | None = None,
    ):
        super().__init__()
        if not 0 <= noise_rate < 1:
            raise UserError(f"data.noise_rate must be in [0, 1), got {noise_rate}")
        self.source, self.seed, self.split_seed = source, seed, split_seed
        self.noise_type, self.noise_rate = noise_type, noise_rate
        self.noise_map, self.noise_sparsity = noise_map, noise_sparsity
        self.noise_include_true_class = noise_include_true_class
        self.imbalance_ratio, self.long_tail_max_per_class = imbalance_ratio, long_tail_max_per_class
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.test_fraction, self.source_kwargs = test_fraction, dict(source_kwargs or {})
        self.hub_name = hub_name  # a dataset configuration, e.g. SVHN's "cropped_digits"
        self.hub_id, self.image_key, self.label_key, self.test_split = (
            hub_id,
            image_key,
            label_key,
            test_split,
        )
        self.image_size, self.mean, self.std, self.augment = image_size, tuple(mean), tuple(std), augment
        self.num_workers, self.cache_dir = num_workers, cache_dir
        self._declared_num_classes, self._declared_shape = num_classes, input_shape
        self._prepared = False

    # ---- set-up -------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._prepared:
            return
        if self.source == "hub":
            self._setup_hub()
        elif self.source in MINI_SOURCES:
            self._setup_arrays(self._load_arrays())
        else:
            raise UserError(f"unknown data.source {self.source!r}; use one of {(*MINI_SOURCES, 'hub')}")
        self._prepared = True

    def _load_arrays(self) -> ArrayData:
        kwargs = {"split_seed": self.split_seed, **self.source_kwargs}
        if self.source == "digits":
            return load_digits(test_fraction=self.test_fraction, **kwargs)
        if self.source == "gaussian_mixture":
            return make_gaussian_mixture(test_fraction=self.test_fraction, **kwargs)
        if self.source == "shapes":
            return load_shapes(test_fraction=self.test_fraction, cache_dir=self.cache_dir, **kwargs)
        shape = self._declared_shape or ((3, self.image_size, self.image_size) if self.hub_id else None)
        if self._declared_num_classes is None or shape is None:
            raise UserError("data.source=random needs data.num_classes and data.input_shape")
        return make_random(input_shape=list(shape), num_classes=self._declared_num_classes, **kwargs)

    def _select_train(self, labels: np.ndarray) -> np.ndarray:
        if self.imbalance_ratio is None or self.imbalance_ratio == 1:
            return np.arange(len(labels))
        return corruptions.make_long_tailed(
            labels,
            self.imbalance_ratio,
            seed=self.split_seed,
            num_classes=self.num_classes,
            max_per_class=self.long_tail_max_per_class,
        )

    def _setup_arrays(self, data: ArrayData) -> None:
        self.num_classes = data.num_classes
        self.input_shape = data.input_shape
        keep = self._select_train(data.y_train)
        x_train, clean = data.x_train[keep], data.y_train[keep]
        noisy = corrupt_labels(
            clean,
            num_classes=self.num_classes,
            noise_type=self.noise_type,
            noise_rate=self.noise_rate,
            seed=self.seed,
            features=x_train,
            noise_map=self.noise_map,
            noise_sparsity=self.noise_sparsity,
            include_true_class=self.noise_include_true_class,
        )
        self.train_x, self.test_x = torch.from_numpy(x_train), torch.from_numpy(data.x_test)
        self.train_labels_clean, self.train_labels = clean, noisy
        self.test_labels = data.y_test
        self._hash_parts = [keep, noisy, data.y_test, data.x_test[:1]]

    def _setup_hub(self) -> None:
        from torchvision.transforms import v2

        if not self.hub_id:
            raise UserError("data.source=hub needs data.hub_id (a HuggingFace dataset id)")
        extra = {"name": self.hub_name} if self.hub_name else {}
        dataset = load_hub_dataset(self.hub_id, cache_dir=self.cache_dir, **extra)
        train, test = dataset["train"], dataset[self.test_split]
        self.num_classes = self._declared_num_classes or train.features[self.label_key].num_classes
        self.input_shape = (3, self.image_size, self.image_size)
        all_clean = np.asarray(train[self.label_key], dtype=np.int64)
        keep = self._select_train(all_clean)
        clean = all_clean[keep]
        noisy = corrupt_labels(
            clean,
            num_classes=self.num_classes,
            noise_type=self.noise_type,
            noise_rate=self.noise_rate,
            seed=self.seed,
            noise_map=self.noise_map,
            noise_sparsity=self.noise_sparsity,
            include_true_class=self.noise_include_true_class,
        )
        normalize = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        train_tf = (
            [v2.RandomCrop(self.image_size, padding=4), v2.RandomHorizontalFlip()] if self.augment else []
        )
        self.train_labels_clean, self.train_labels = clean, noisy
        self.test_labels = np.asarray(test[self.label_key], dtype=np.int64)
        self._train_set = HubImageDataset(
            train.select(keep), self.image_key, noisy, clean, v2.Compose(train_tf + normalize)
        )
        self._test_set = HubImageDataset(
            test, self.image_key, self.test_labels, self.test_labels, v2.Compose(normalize)
        )
        self._hash_parts = [keep, noisy, self.test_labels]

    # ---- facts about the split ----------------------------------------------------------------------------
    @property
    def num_train(self) -> int:
        return len(self.train_labels)

    @property
    def split_hash(self) -> str:
        """sha256 over the kept training indices, the corrupted labels and the test labels."""
        digest = hashlib.sha256(f"{self.source}:{self.hub_id}".encode())
        for part in self._hash_parts:
            digest.update(np.ascontiguousarray(part).tobytes())
        return digest.hexdigest()[:16]

    @property
    def realised_noise_rate(self) -> float:
        return float(np.mean(self.train_labels != self.train_labels_clean))

    # ---- loaders ------------------------------------------------------------------------------------------
    def _in_memory(
        self, x: torch.Tensor, labels: np.ndarray, clean: np.ndarray, index: np.ndarray
    ) -> Dataset:
        return TensorBatchDataset(
            {
                "x": x,
                "y": torch.as_tensor(labels, dtype=torch.long),
                "y_clean": torch.as_tensor(clean, dtype=torch.long),
                "index": torch.as_tensor(index, dtype=torch.long),
            }
        )

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool, seed_offset: int = 0) -> DataLoader:
        if isinstance(dataset, TensorBatchDataset):
            generator = torch.Generator().manual_seed(self.seed + seed_offset)
            sampler = TensorBatchSampler(len(dataset), batch_size, shuffle, generator)
            return DataLoader(dataset, batch_size=None, sampler=sampler)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataset(self, indices: np.ndarray | None = None, labels: np.ndarray | None = None) -> Dataset:
        """The training set or its subset `indices` (positions in the training set), optionally relabelled."""
        indices = np.arange(self.num_train) if indices is None else np.asarray(indices)
        labels = self.train_labels[indices] if labels is None else np.asarray(labels)
        if self.source == "hub":
            base = self._train_set
            clean = self.train_labels_clean[indices]
            return HubImageDataset(
                base.split, self.image_key, labels, clean, base.transform, positions=indices
            )
        return self._in_memory(self.train_x[indices], labels, self.train_labels_clean[indices], indices)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset(), self.batch_size, shuffle=True)

    def loader(self, dataset: Dataset, *, shuffle: bool, train: bool = True) -> DataLoader:
        return self._loader(dataset, self.batch_size if train else self.eval_batch_size, shuffle)

    def test_dataset(self) -> Dataset:
        if self.source == "hub":
            return self._test_set
        index = np.arange(len(self.test_labels))
        return self._in_memory(self.test_x, self.test_labels, self.test_labels, index)

    def val_dataloader(self) -> DataLoader:
        # Validation is the clean test split, evaluated every epoch for learning curves (as the papers do);
        # reported numbers are the last epoch unless a table says otherwise.
        return self._loader(self.test_dataset(), self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
