"""Labelled / unlabelled classification data for DCL's student-teacher self-training (classification proxy).

A local extension of ``common.data.datamodule.ClassificationDataModule`` (see README.md, "Changes to
common/"): the training split is divided with ``common.data.corruptions.split_labeled_unlabeled`` into a
class-balanced labelled part of about ``labeled_ratio`` of the examples and an unlabelled rest, and training
batches are dicts ``{"labeled": batch, "unlabeled": batch}`` (Lightning's max-size-cycle combination: an
epoch is one pass over the unlabelled part). The unlabelled pool also gets a fixed, seeded order
(``unlabeled_rank``) that DCL's sampling policy admits a growing prefix of.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from common.data.corruptions import split_labeled_unlabeled
from common.data.datamodule import ClassificationDataModule
from common.errors import UserError
from common.registry import register_datamodule


@register_datamodule("great_apes_dcl_ssl")
class LabeledUnlabeledDataModule(ClassificationDataModule):
    """ClassificationDataModule with a labelled/unlabelled split of the training set.

    Args (beyond ClassificationDataModule's):
        labeled_ratio: share of the training examples that keep their label (class-balanced:
            ``round(labeled_ratio * N / C)`` per class, at least 1). The split is drawn with the run's seed,
            as the official code draws one labelled fold per run.
        unlabeled_batch_size: unlabelled examples per step (default: ``batch_size``).
    """

    def __init__(
        self, *args: Any, labeled_ratio: float = 0.05, unlabeled_batch_size: int | None = None, **kw
    ):
        super().__init__(*args, **kw)
        if not 0 < labeled_ratio < 1:
            raise UserError(f"data.labeled_ratio must be in (0, 1), got {labeled_ratio}")
        self.labeled_ratio = float(labeled_ratio)
        self.unlabeled_batch_size = int(unlabeled_batch_size or self.batch_size)
        self._split_done = False

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self._split_done:
            return
        labels = np.asarray(self.train_labels)
        per_class = max(1, int(round(self.labeled_ratio * len(labels) / self.num_classes)))
        smallest = int(np.bincount(labels, minlength=self.num_classes).min())
        per_class = min(per_class, max(smallest - 1, 1))
        self.labeled_indices, self.unlabeled_indices = split_labeled_unlabeled(
            labels, per_class, seed=self.seed
        )
        if len(self.unlabeled_indices) == 0:
            raise UserError("the labelled split left no unlabelled examples; lower data.labeled_ratio")
        # Position of every training example in the unlabelled pool's fixed order (-1: labelled).
        order = np.random.default_rng(self.seed + 1).permutation(len(self.unlabeled_indices))
        rank = np.full(self.num_train, -1, dtype=np.int64)
        rank[self.unlabeled_indices[order]] = np.arange(len(order))
        self.unlabeled_rank = torch.from_numpy(rank)
        self._hash_parts.append(self.labeled_indices)
        self._split_done = True

    @property
    def num_labeled(self) -> int:
        return len(self.labeled_indices)

    @property
    def num_unlabeled(self) -> int:
        return len(self.unlabeled_indices)

    def train_dataloader(self) -> dict[str, DataLoader]:
        labeled = self._loader(self.train_dataset(self.labeled_indices), self.batch_size, shuffle=True)
        unlabeled = self._loader(
            self.train_dataset(self.unlabeled_indices), self.unlabeled_batch_size, shuffle=True, seed_offset=1
        )
        return {"labeled": labeled, "unlabeled": unlabeled}
