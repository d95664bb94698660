"""Positive-unlabelled binary tasks built from a multi-class source (the single-training-set, or censoring,
setting of PU learning): classes in `positive_classes` are positive, a `labeled_fraction` of the training
positives is labelled, and every other training example is unlabelled."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from common.data.datamodule import ClassificationDataModule
from common.data.sources import ArrayData
from common.errors import UserError
from common.registry import register_datamodule


@register_datamodule("pu_binary")
class PUBinaryDataModule(ClassificationDataModule):
    """Batches carry `y` = the observed label (1: a labelled positive, 0: unlabelled) and `y_clean` = the true
    binary label; the test split is fully labelled. Which positives are labelled is drawn from `seed`, as
    label noise is. `unlabeled_prior` is the share of positives among the unlabelled training examples: the
    class prior uPU and nnPU assume known."""

    def __init__(
        self,
        source: str = "gaussian_mixture",
        *,
        positive_classes: Sequence[int] = (0,),
        labeled_fraction: float = 0.3,
        **kwargs: Any,
    ):
        if kwargs.get("noise_type", "none") != "none":
            raise UserError("pu_binary hides labels itself; leave data.noise_type at none")
        if not 0 < labeled_fraction < 1:
            raise UserError(f"data.labeled_fraction must be in (0, 1), got {labeled_fraction}")
        super().__init__(source, **kwargs)
        self.positive_classes = tuple(int(c) for c in positive_classes)
        self.labeled_fraction = labeled_fraction

    def _load_arrays(self) -> ArrayData:
        data = super()._load_arrays()
        unknown = sorted(set(self.positive_classes) - set(range(data.num_classes)))
        if unknown or not self.positive_classes:
            raise UserError(
                f"data.positive_classes {list(self.positive_classes)} must be non-empty classes of the "
                f"source (0..{data.num_classes - 1})"
            )
        positive = np.asarray(self.positive_classes)
        return ArrayData(
            data.x_train,
            np.isin(data.y_train, positive).astype(np.int64),
            data.x_test,
            np.isin(data.y_test, positive).astype(np.int64),
            2,
        )

    def _setup_arrays(self, data: ArrayData) -> None:
        super()._setup_arrays(data)
        positives = np.flatnonzero(self.train_labels_clean == 1)
        count = max(1, round(self.labeled_fraction * len(positives)))
        labeled = np.random.default_rng(self.seed).choice(positives, count, replace=False)
        observed = np.zeros_like(self.train_labels_clean)
        observed[labeled] = 1
        self.train_labels = observed
        self._hash_parts[1] = observed

    @property
    def unlabeled_prior(self) -> float:
        unlabeled = self.train_labels == 0
        return float(self.train_labels_clean[unlabeled].mean())
