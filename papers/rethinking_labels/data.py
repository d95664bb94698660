"""Long-tailed labeled set plus an extra unlabeled pool with its own imbalance (Yang & Xu, NeurIPS 2020).

The labeled set follows the exponential long tail of Cao et al. 2019 (``common.data.corruptions``); the pool
D_U holds ``unlabeled_size_factor`` times as many examples, spread over the classes by an exponential profile
of ratio rho_U (``unlabeled_class_counts``, the official ``get_img_num_per_cls_unlabeled`` of
YyzHarry/imbalanced-semi-self, dataset/imbalance_cifar.py and imbalance_svhn.py). As in the official code the
pool's true labels are used only to select its examples; the method sees it unlabeled.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from common.data import corruptions
from common.data.datamodule import ClassificationDataModule, HubImageDataset
from common.data.sources import ArrayData, load_hub_dataset
from common.errors import UserError
from common.registry import register_datamodule

#: Pool examples per class on random inputs (one-step smoke tests of paper-scale configs, never results).
RANDOM_POOL_PER_CLASS = 4

__all__ = ["SemiSupervisedLongTailDataModule", "select_per_class", "unlabeled_class_counts"]


def unlabeled_class_counts(
    labeled_counts: np.ndarray, imbalance_ratio: float, size_factor: int = 5
) -> list[int]:
    """Per-class sizes of the unlabeled pool: ``size_factor`` x the labeled total, exponential profile of
    ratio ``imbalance_ratio`` (head = class 0), rescaled to that total and truncated, as the official code."""
    counts = np.asarray(labeled_counts, dtype=np.int64)
    k = counts.size
    if k < 2:
        raise ValueError(f"need at least two classes, got {k}")
    if not imbalance_ratio >= 1:
        raise ValueError(f"the unlabeled imbalance ratio must be >= 1, got {imbalance_ratio}")
    total = int(counts.sum()) * int(size_factor)
    first = total // k
    profile = [int(first * float(imbalance_ratio) ** (-c / (k - 1))) for c in range(k)]
    factor = total / sum(profile)
    return [int(n * factor) for n in profile]


def select_per_class(labels: np.ndarray, counts: list[int], *, seed: int, cap: bool = False) -> np.ndarray:
    """Sorted positions of ``counts[c]`` uniformly drawn examples of each class c. With ``cap`` a class that
    has fewer examples gives all it has (random smoke-test inputs only), otherwise that is an error."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c, n in enumerate(counts):
        members = np.flatnonzero(labels == c)
        if members.size < n:
            if not cap:
                raise UserError(
                    f"class {c} has {members.size} examples left for the unlabeled pool, which needs {n}; "
                    "lower data.unlabeled_size_factor or data.labeled_max_per_class, or use more data"
                )
            n = members.size
        chosen.append(rng.choice(members, size=n, replace=False))
    return np.sort(np.concatenate(chosen))


@register_datamodule("rethinking_labels_semi_lt")
class SemiSupervisedLongTailDataModule(ClassificationDataModule):
    """A long-tailed labeled training set (``imbalance_ratio``, head ``labeled_max_per_class``) and an
    unlabeled pool (``unlabeled_imbalance_ratio``, ``unlabeled_size_factor`` x the labeled size).

    The pool comes from the training examples left out of the labeled set (mini sources), or from another
    split of a hub dataset (``unlabeled_split``, e.g. SVHN ``extra`` as in the paper). ``hub_name`` is the hub
    dataset's configuration (SVHN: ``cropped_digits``). The training loaders see the labeled set only."""

    def __init__(
        self,
        *args: Any,
        unlabeled_imbalance_ratio: float = 1.0,
        unlabeled_size_factor: int = 5,
        labeled_max_per_class: int | None = None,
        unlabeled_split: str | None = None,
        hub_name: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        if self.imbalance_ratio is None:
            raise UserError("data.imbalance_ratio (the labeled set's rho) must be set for this data module")
        self.unlabeled_imbalance_ratio = float(unlabeled_imbalance_ratio)
        self.unlabeled_size_factor = int(unlabeled_size_factor)
        self.labeled_max_per_class = labeled_max_per_class
        self.unlabeled_split, self.hub_name = unlabeled_split, hub_name

    # ---- selection ----------------------------------------------------------------------------------------
    def _labeled_head(self, labels: np.ndarray) -> int:
        available = int(np.bincount(labels, minlength=self.num_classes).min())
        head = available if self.labeled_max_per_class is None else int(self.labeled_max_per_class)
        if self.source == "random":  # one-step smoke tests on random inputs: leave room for a small pool
            head = min(head, max(available - RANDOM_POOL_PER_CLASS, 1))
        return head

    def _select_train(self, labels: np.ndarray) -> np.ndarray:
        return corruptions.make_long_tailed(
            labels,
            self.imbalance_ratio,
            seed=self.split_seed,
            num_classes=self.num_classes,
            max_per_class=self._labeled_head(labels),
        )

    def _pool_counts(self) -> list[int]:
        labeled = np.bincount(self.train_labels_clean, minlength=self.num_classes)
        counts = unlabeled_class_counts(labeled, self.unlabeled_imbalance_ratio, self.unlabeled_size_factor)
        if self.source == "random":
            counts = [min(n, RANDOM_POOL_PER_CLASS) for n in counts]
        return counts

    # ---- set-up -------------------------------------------------------------------------------------------
    def _setup_arrays(self, data: ArrayData) -> None:
        super()._setup_arrays(data)
        keep = self._select_train(data.y_train)
        rest = np.setdiff1d(np.arange(len(data.y_train)), keep)
        # A seed of its own (split_seed + 1) so the pool draw does not repeat the labeled draw's stream.
        chosen = select_per_class(
            data.y_train[rest], self._pool_counts(), seed=self.split_seed + 1, cap=self.source == "random"
        )
        pool = rest[chosen]
        self.unlabeled_x = torch.from_numpy(data.x_train[pool])
        self.unlabeled_labels_clean = data.y_train[pool].astype(np.int64)
        self._labeled_hash_parts = list(self._hash_parts)
        self._hash_parts.append(pool)

    def _setup_hub(self) -> None:
        from torchvision.transforms import v2

        if not self.hub_id or not self.unlabeled_split:
            raise UserError("data.source=hub needs data.hub_id and data.unlabeled_split for this data module")
        kwargs = {"name": self.hub_name} if self.hub_name else {}
        dataset = load_hub_dataset(self.hub_id, cache_dir=self.cache_dir, **kwargs)
        train, test, extra = dataset["train"], dataset[self.test_split], dataset[self.unlabeled_split]
        self.num_classes = self._declared_num_classes or train.features[self.label_key].num_classes
        self.input_shape = (3, self.image_size, self.image_size)
        all_clean = np.asarray(train[self.label_key], dtype=np.int64)
        keep = self._select_train(all_clean)
        self.train_labels_clean = all_clean[keep]
        self.train_labels = self.train_labels_clean.copy()  # the paper's labeled set is clean
        extra_labels = np.asarray(extra[self.label_key], dtype=np.int64)
        pool = select_per_class(extra_labels, self._pool_counts(), seed=self.split_seed + 1)
        self.unlabeled_labels_clean = extra_labels[pool]
        normalize = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        augment = (
            [v2.RandomCrop(self.image_size, padding=4), v2.RandomHorizontalFlip()] if self.augment else []
        )
        self._train_tf, self._eval_tf = v2.Compose(augment + normalize), v2.Compose(normalize)
        self.test_labels = np.asarray(test[self.label_key], dtype=np.int64)
        labels = self.train_labels
        self._train_set = HubImageDataset(train.select(keep), self.image_key, labels, labels, self._train_tf)
        self._test_set = HubImageDataset(
            test, self.image_key, self.test_labels, self.test_labels, self._eval_tf
        )
        self._pool_split = extra.select(pool)
        self._hash_parts = [keep, pool, self.test_labels]
        self._labeled_hash_parts = [keep, self.test_labels]

    @property
    def labeled_split_hash(self) -> str:
        """`split_hash` without the pool: the labeled set and the test split, all that a model trained on the
        labeled set sees (the semi-supervised recipe's base model, shared by the pools of one labeled set)."""
        digest = hashlib.sha256(f"{self.source}:{self.hub_id}:labeled".encode())
        for part in self._labeled_hash_parts:
            digest.update(np.ascontiguousarray(part).tobytes())
        return digest.hexdigest()[:16]

    # ---- the pool -----------------------------------------------------------------------------------------
    @property
    def num_unlabeled(self) -> int:
        return len(self.unlabeled_labels_clean)

    def unlabeled_dataset(self) -> Dataset:
        """The pool in evaluation form (no augmentation), for pseudo-labelling; ``y`` holds -1 (unknown)."""
        unknown = np.full(self.num_unlabeled, -1, dtype=np.int64)
        if self.source == "hub":
            # Hub items report their position in the pool as `index` (positions index the split).
            return HubImageDataset(
                self._pool_split, self.image_key, unknown, self.unlabeled_labels_clean, self._eval_tf
            )
        index = self.num_train + np.arange(self.num_unlabeled)
        return self._in_memory(self.unlabeled_x, unknown, self.unlabeled_labels_clean, index)

    def labeled_and_pseudo_labeled(
        self, pseudo_labels: np.ndarray, keep: np.ndarray | None = None
    ) -> Dataset:
        """The labeled set merged with the pool examples ``keep`` (default all) under ``pseudo_labels`` (one
        per pool example); ``y_clean`` keeps the pool's true labels for analysis, ``index`` runs over both."""
        pseudo = np.asarray(pseudo_labels, dtype=np.int64)
        if pseudo.shape != (self.num_unlabeled,):
            raise ValueError(
                f"need one pseudo-label per pool example ({self.num_unlabeled}), got {pseudo.shape}"
            )
        keep = np.arange(self.num_unlabeled) if keep is None else np.asarray(keep)
        if self.source == "hub":
            pool = HubImageDataset(
                self._pool_split, self.image_key, pseudo[keep], self.unlabeled_labels_clean[keep],
                self._train_tf, keep,
            )  # fmt: skip
            return ConcatDataset([self.train_dataset(), pool])
        return self._in_memory(
            torch.cat([self.train_x, self.unlabeled_x[keep]]),
            np.concatenate([self.train_labels, pseudo[keep]]),
            np.concatenate([self.train_labels_clean, self.unlabeled_labels_clean[keep]]),
            np.concatenate([np.arange(self.num_train), self.num_train + keep]),
        )
