"""Data under latent label shift: a labelled pool split into domains whose class priors p(y|d) differ while
p(x|y) is shared (Roberts et al., NeurIPS 2022; official code acmi-lab/Latent-Label-Shift-DDFA @ccb82ca).

Protocol of the official code (`ddfa/components/class_prior.py`, `dataset.py`, `experiment_framework.py`):
  * 10% of the training split is held out as a validation split (discriminator model selection);
  * one p(y|d) matrix (D x K) per run, rows from Dirichlet(alpha * 1/K) -- `alpha` is the *total*
    concentration -- redrawn until its condition number is <= `max_condition_number`;
  * the train, validation and test splits are each divided into D equal-size domains whose class counts
    follow p(y|d); the sizes use every example of the most demanded class (min class count / max_c mean_d
    p(c|d) examples in all); here the counts come from `common.data.weak_labels.sample_domains`.
Batches are dicts: `x`, `y` the domain index (what the discriminator learns), `y_clean` the latent class
(evaluation only), `index`.

Mini source `subclusters`: every class is a union of `subclusters` isotropic Gaussian blobs. `layout=random`
places every blob at random; `layout=crossed` puts a class's second blob next to the next class's first blob
(a butterfly next to the wrong caterpillar), so clustering by feature similarity groups the wrong blobs:
the FieldGuide failure mode of the paper, built on purpose.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from common.data.datamodule import (
    ClassificationDataModule,
    HubImageDataset,
    TensorBatchDataset,
    TensorBatchSampler,
)
from common.data.sources import ArrayData, load_digits, make_gaussian_mixture, make_random
from common.data.weak_labels import dirichlet_domain_priors, sample_domains
from common.errors import UserError
from common.registry import register_datamodule

log = logging.getLogger("pnu.lls")

SOURCES = ("subclusters", "digits", "gaussian_mixture", "random", "hub")
LAYOUTS = ("random", "crossed")


def make_subcluster_mixture(
    *,
    num_classes: int = 10,
    subclusters: int = 2,
    num_features: int = 8,
    spread: float = 3.0,
    layout: str = "random",
    cross_offset: float = 2.0,
    train_per_class: int = 1000,
    test_per_class: int = 300,
    split_seed: int = 0,
) -> ArrayData:
    """K classes, each a uniform mixture of `subclusters` unit-variance Gaussian blobs in `num_features`
    dimensions; blob centres ~ N(0, spread^2 I), or (`crossed`) blob s of class k at `cross_offset` from the
    first blob of class k + s (mod K)."""
    if layout not in LAYOUTS:
        raise UserError(f"data.source_kwargs.layout must be one of {LAYOUTS}, got {layout!r}")
    if subclusters < 1 or num_classes < 2:
        raise UserError("need subclusters >= 1 and num_classes >= 2")
    rng = np.random.default_rng(split_seed)
    first = rng.normal(0.0, spread, (num_classes, num_features))
    centres = np.empty((num_classes, subclusters, num_features))
    centres[:, 0] = first
    for k in range(num_classes):
        for s in range(1, subclusters):
            if layout == "crossed":
                direction = rng.normal(size=num_features)
                direction *= cross_offset / np.linalg.norm(direction)
                centres[k, s] = first[(k + s) % num_classes] + direction
            else:
                centres[k, s] = rng.normal(0.0, spread, num_features)

    def draw(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(num_classes), per_class)
        blob = rng.integers(0, subclusters, y.size)
        x = centres[y, blob] + rng.standard_normal((y.size, num_features))
        order = rng.permutation(y.size)
        return x[order].astype(np.float32), y[order].astype(np.int64)

    x_train, y_train = draw(train_per_class)
    x_test, y_test = draw(test_per_class)
    return ArrayData(x_train, y_train, x_test, y_test, num_classes)


def official_samples_per_domain(labels: np.ndarray, priors: np.ndarray) -> int:
    """Examples per domain under the official rule (all of the most demanded class), less a margin of one
    per domain for the largest-remainder rounding of `sample_domains`."""
    num_domains, num_classes = priors.shape
    min_count = np.bincount(labels, minlength=num_classes).min()
    max_fraction = priors.mean(0).max()  # official `max(domain_relative_sizes.T @ class_priors)`
    return int((min_count - num_domains) // (num_domains * max_fraction))


@dataclass
class DomainSplit:
    """One split under latent label shift: positions in its source pool, latent classes and domains."""

    positions: np.ndarray
    classes: np.ndarray
    domains: np.ndarray


@register_datamodule("lls_latent_shift")
class LatentShiftDataModule(L.LightningDataModule):
    """Train / validation / test splits divided into `num_domains` domains with Dirichlet class priors."""

    def __init__(
        self,
        source: str = "subclusters",
        *,
        num_domains: int,
        alpha: float,
        max_condition_number: float | None = None,
        max_tries: int = 1_000_000,
        seed: int = 0,
        split_seed: int = 0,
        valid_fraction: float = 0.1,
        samples_per_domain: int | None = None,
        source_kwargs: dict[str, Any] | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        num_workers: int = 0,
        cache_dir: str | None = None,
        hub_id: str | None = None,
        image_key: str = "img",
        label_key: str = "label",
        test_split: str = "test",
        image_size: int = 32,
        mean: Sequence[float] = (0.4914, 0.4822, 0.4465),
        std: Sequence[float] = (0.2470, 0.2435, 0.2616),
        augment: bool = True,
        num_classes: int | None = None,
        input_shape: Sequence[int] | None = None,
    ):
        super().__init__()
        if source not in SOURCES:
            raise UserError(f"unknown data.source {source!r}; use one of {SOURCES}")
        if not 0 < valid_fraction < 1:
            raise UserError(f"data.valid_fraction must be in (0, 1), got {valid_fraction}")
        self.source, self.num_domains, self.alpha = source, int(num_domains), float(alpha)
        self.max_condition_number, self.max_tries = max_condition_number, int(max_tries)
        self.seed, self.split_seed, self.valid_fraction = int(seed), int(split_seed), float(valid_fraction)
        self.samples_per_domain, self.source_kwargs = samples_per_domain, dict(source_kwargs or {})
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.hub_kwargs = {
            "hub_id": hub_id, "image_key": image_key, "label_key": label_key, "test_split": test_split,
            "image_size": image_size, "mean": mean, "std": std, "augment": augment, "cache_dir": cache_dir,
            "num_classes": num_classes, "num_workers": num_workers,
        }  # fmt: skip
        self._declared_num_classes, self._declared_shape = num_classes, input_shape
        self._prepared = False

    # ---- set-up -------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._prepared:
            return
        if self.source == "hub":
            pool_train, pool_test = self._setup_hub()
        else:
            pool_train, pool_test = self._setup_arrays()
        self.priors = dirichlet_domain_priors(
            self.num_domains,
            self.num_classes,
            self.alpha / self.num_classes,  # official: Dirichlet(alpha * ones(K) / K)
            seed=self.seed,
            max_condition_number=self.max_condition_number,
            max_tries=self.max_tries,
        )
        self.condition_number = float(np.linalg.cond(self.priors))
        if self.source == "random":  # smoke tests: every split drawn (with replacement) from one tiny pool,
            # 2 per domain so that validation + training hold at least m = 3K examples for k-means
            every = np.arange(len(pool_train))
            parts = {"train": every, "valid": every}
        else:
            order = np.random.default_rng(self.split_seed).permutation(len(pool_train))
            num_valid = int(self.valid_fraction * len(pool_train))
            parts = {"train": np.sort(order[num_valid:]), "valid": np.sort(order[:num_valid])}
        self.splits: dict[str, DomainSplit] = {}
        for offset, (name, positions, labels) in enumerate(
            (
                ("train", parts["train"], pool_train[parts["train"]]),
                ("valid", parts["valid"], pool_train[parts["valid"]]),
                ("test", np.arange(len(pool_test)), pool_test),
            )
        ):
            self.splits[name] = self._split(positions, labels, seed=self.seed * 3 + offset)
        self._prepared = True

    def _split(self, positions: np.ndarray, labels: np.ndarray, seed: int) -> DomainSplit:
        replace = self.source == "random"
        per_domain = self.samples_per_domain or (
            2 if replace else official_samples_per_domain(labels, self.priors)
        )
        if per_domain < 1:
            raise UserError(
                f"too few examples per class ({np.bincount(labels).min()}) for {self.num_domains} domains "
                "under these priors; lower data.num_domains or use a larger pool"
            )
        chosen, domains = sample_domains(labels, self.priors, int(per_domain), seed=seed, replace=replace)
        order = np.random.default_rng(seed).permutation(chosen.size)  # domains interleaved, as the official
        chosen, domains = chosen[order], domains[order]
        return DomainSplit(positions[chosen], labels[chosen], domains.astype(np.int64))

    def _arrays(self) -> ArrayData:
        kwargs = {"split_seed": self.split_seed, **self.source_kwargs}
        if self.source == "subclusters":
            return make_subcluster_mixture(**kwargs)
        if self.source == "digits":
            return load_digits(**kwargs)
        if self.source == "gaussian_mixture":
            return make_gaussian_mixture(**kwargs)
        if self._declared_num_classes is None or self._declared_shape is None:
            raise UserError("data.source=random needs data.num_classes and data.input_shape")
        kwargs.setdefault("num_samples", 8 * self._declared_num_classes)
        data = make_random(
            input_shape=list(self._declared_shape), num_classes=self._declared_num_classes, **kwargs
        )
        # Every class is in the training pool (make_random's first K labels); the test split reuses it.
        return ArrayData(data.x_train, data.y_train, data.x_train, data.y_train, data.num_classes)

    def _setup_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        data = self._arrays()
        self.num_classes, self.input_shape = data.num_classes, data.input_shape
        self._x = {"train": torch.from_numpy(data.x_train), "test": torch.from_numpy(data.x_test)}
        self._hash_parts = [data.y_train, data.y_test, data.x_test[:1]]
        return data.y_train, data.y_test

    def _setup_hub(self) -> tuple[np.ndarray, np.ndarray]:
        base = ClassificationDataModule("hub", seed=self.seed, split_seed=self.split_seed, **self.hub_kwargs)
        base.setup("fit")
        self._base = base
        self.num_classes, self.input_shape = base.num_classes, base.input_shape
        self._hash_parts = [base.train_labels_clean, base.test_labels]
        return base.train_labels_clean, base.test_labels

    # ---- facts ------------------------------------------------------------------------------------------
    @property
    def num_train(self) -> int:
        return int(self.splits["train"].positions.size)

    @property
    def split_hash(self) -> str:
        digest = hashlib.sha256(f"{self.source}:{self.hub_kwargs['hub_id']}".encode())
        for part in [*self._hash_parts, self.priors]:
            digest.update(np.ascontiguousarray(part).tobytes())
        for split in self.splits.values():
            digest.update(np.ascontiguousarray(split.positions).tobytes())
            digest.update(np.ascontiguousarray(split.domains).tobytes())
        return digest.hexdigest()[:16]

    def inputs(self, split: str) -> torch.Tensor:
        """The inputs of an in-memory split, in split order (mini sources only)."""
        if self.source == "hub":
            raise UserError("raw inputs of hub images are not held in memory; use dataset(split)")
        part = self.splits[split]
        return self._x["test" if split == "test" else "train"][part.positions]

    # ---- datasets and loaders ---------------------------------------------------------------------------
    def dataset(self, split: str, *, augment: bool | None = None) -> Dataset:
        """`split` (train, valid, test) with `y` = domain and `y_clean` = latent class; only the training
        split is augmented unless `augment` says otherwise (hub images)."""
        part = self.splits[split]
        if self.source != "hub":
            return TensorBatchDataset(
                {
                    "x": self.inputs(split),
                    "y": torch.as_tensor(part.domains),
                    "y_clean": torch.as_tensor(part.classes),
                    "index": torch.as_tensor(part.positions),
                }
            )
        augment = split == "train" if augment is None else augment
        pool = self._base.test_dataset() if split == "test" else self._base.train_dataset()
        # The un-augmented transform is the test split's (resize/normalise only), as the official code.
        transform = pool.transform if augment else self._base.test_dataset().transform
        return HubImageDataset(
            pool.split, pool.image_key, part.domains, part.classes, transform, positions=part.positions
        )

    def loader(self, dataset: Dataset, *, shuffle: bool, train: bool = True) -> DataLoader:
        batch_size = self.batch_size if train else self.eval_batch_size
        if isinstance(dataset, TensorBatchDataset):
            generator = torch.Generator().manual_seed(self.seed)
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

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.dataset("train"), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.dataset("valid"), shuffle=False, train=False)
