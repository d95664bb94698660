"""Multi-label data with partially observed labels for PU-MLC (arXiv 2306.16016).

Batches are dicts: ``x`` inputs, ``y`` the observed labels (N, C) in {1, 0, -1 = unknown}, ``y_true`` the full
0/1 labels (evaluation only) and ``index`` (position in the training set). The training labels are masked by
``common.data.weak_labels.mask_multilabel``: a fraction ``label_proportion`` of the positives and of the
negatives stays annotated (the MLC-PL protocol of the official code, TAKELAMAG/PU-MLC datasets/coco2014.py
``changeLabelProportion``, which keeps every label with probability ``prob``). Annotation noise:
``negative_flip`` turns a further fraction of the true negatives into observed positives, and
``positive_flip`` (``flip_missed_positives``) a fraction of the true positives into observed negatives --
the objects an annotator missed, the noise the paper says dominates and avoids by discarding negatives.

Sources: ``synthetic`` (scikit-learn's make_multilabel_classification, a bag-of-words mixture: the mini
proxy), ``random`` (random inputs of the paper's shapes, for one-step smoke tests) and ``hub`` (paper scale:
an image column and a label column that is either a multi-hot vector or a list of class indices).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from common.data.datamodule import TensorBatchDataset, TensorBatchSampler
from common.data.sources import load_hub_dataset
from common.data.weak_labels import mask_multilabel
from common.errors import UserError
from common.registry import register_datamodule

SOURCES = ("synthetic", "random", "hub")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def make_synthetic_multilabel(
    *,
    num_samples: int = 3000,
    num_features: int = 50,
    num_classes: int = 20,
    avg_labels: int = 2,
    length: int = 50,
    test_fraction: float = 0.3,
    split_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): scikit-learn's multi-label bag-of-words generator (class priors
    drawn at random, so classes are imbalanced), features log1p-transformed and standardised on the training
    split; every example has at least one label."""
    from sklearn.datasets import make_multilabel_classification
    from sklearn.model_selection import train_test_split

    x, y = make_multilabel_classification(
        n_samples=num_samples,
        n_features=num_features,
        n_classes=num_classes,
        n_labels=avg_labels,
        length=length,
        allow_unlabeled=False,
        random_state=split_seed,
    )
    x = np.log1p(x.astype(np.float64))
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=split_seed)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-8
    return (
        ((x_tr - mean) / std).astype(np.float32),
        y_tr.astype(np.int64),
        ((x_te - mean) / std).astype(np.float32),
        y_te.astype(np.int64),
    )


def multi_hot(labels: Sequence[Any], num_classes: int) -> np.ndarray:
    """(N, C) 0/1 from a column of multi-hot vectors (entries == 1 are positives; VOC's 'difficult' or -1
    entries are not) or of lists of class indices."""
    out = np.zeros((len(labels), num_classes), dtype=np.int64)
    for i, row in enumerate(labels):
        row = np.asarray(row).reshape(-1)
        if row.size == num_classes and np.isin(row, (-1, 0, 1)).all() and num_classes > 1:
            out[i] = row == 1
        else:
            out[i, row.astype(np.int64)] = 1
    return out


def flip_missed_positives(observed: np.ndarray, targets: np.ndarray, rate: float, *, seed: int) -> np.ndarray:
    """Copy of ``observed`` where ``round(rate * P)`` of the P true positives that are not observed as 1 are
    observed as 0 (annotated absent); drawn uniformly. The extension of ``mask_multilabel`` this paper needs
    (its ``negative_flip`` is the other direction), kept here until ``common`` has it."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"positive_flip must lie in [0, 1], got {rate}.")
    out = np.array(observed, copy=True)
    candidates = np.flatnonzero(((targets == 1) & (out != 1)).ravel())
    wanted = int(np.floor(rate * int((targets == 1).sum()) + 0.5))
    if wanted > candidates.size:
        raise ValueError(
            f"positive_flip={rate} needs {wanted} unannotated positives but only {candidates.size} remain; "
            "lower it or the label proportion."
        )
    # A stream of its own (seed + 1) so the flips do not repeat the masking draw.
    chosen = np.random.default_rng(seed + 1).choice(candidates, size=wanted, replace=False)
    out.reshape(-1)[chosen] = 0
    return out


class HubMultiLabelImages(Dataset):
    """One split of a HuggingFace image dataset with our observed and true multi-label targets."""

    def __init__(self, split: Any, image_key: str, observed: np.ndarray, true: np.ndarray, transform: Any):
        self.split, self.image_key, self.transform = split, image_key, transform
        self.observed, self.true = torch.as_tensor(observed), torch.as_tensor(true)

    def __len__(self) -> int:
        return len(self.true)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = self.split[i][self.image_key].convert("RGB")
        return {"x": self.transform(image), "y": self.observed[i], "y_true": self.true[i], "index": i}


@register_datamodule("pu_mlc_multilabel")
class PartialMultiLabelDataModule(L.LightningDataModule):
    """Train/test multi-label data whose training labels are partially observed (module docstring)."""

    def __init__(
        self,
        source: str = "synthetic",
        *,
        seed: int = 0,
        split_seed: int = 0,
        label_proportion: float = 1.0,
        negative_flip: float = 0.0,
        positive_flip: float = 0.0,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        test_fraction: float = 0.3,
        source_kwargs: dict[str, Any] | None = None,
        hub_id: str | None = None,
        hub_name: str | None = None,
        hub_revision: str | None = None,
        image_key: str = "image",
        label_key: str = "labels",
        train_split: str = "train",
        test_split: str = "test",
        scale_size: int = 512,
        image_size: int = 448,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        num_workers: int = 0,
        cache_dir: str | None = None,
        num_classes: int | None = None,
        input_shape: Sequence[int] | None = None,
    ):
        super().__init__()
        if source not in SOURCES:
            raise UserError(f"unknown data.source {source!r} for pu_mlc_multilabel; use one of {SOURCES}")
        if not 0.0 < label_proportion <= 1.0:
            raise UserError(f"data.label_proportion must be in (0, 1], got {label_proportion}")
        self.source, self.seed, self.split_seed = source, seed, split_seed
        self.label_proportion, self.negative_flip = float(label_proportion), float(negative_flip)
        self.positive_flip = float(positive_flip)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.test_fraction, self.source_kwargs = test_fraction, dict(source_kwargs or {})
        self.hub_id, self.hub_name, self.hub_revision = hub_id, hub_name, hub_revision
        self.image_key, self.label_key = image_key, label_key
        self.train_split, self.test_split = train_split, test_split
        self.scale_size, self.image_size = scale_size, image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.num_workers, self.cache_dir = num_workers, cache_dir
        self._declared_num_classes, self._declared_shape = num_classes, input_shape
        self._prepared = False

    # ---- set-up -------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._prepared:
            return
        if self.source == "hub":
            self._setup_hub()
        else:
            self._setup_arrays(*self._load_arrays())
        self._prepared = True

    def _load_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self.source == "synthetic":
            return make_synthetic_multilabel(
                test_fraction=self.test_fraction, split_seed=self.split_seed, **self.source_kwargs
            )
        shape = self._declared_shape or (3, self.image_size, self.image_size)
        if self._declared_num_classes is None:
            raise UserError("data.source=random needs data.num_classes")
        num_samples = int(self.source_kwargs.get("num_samples", 32))
        rng = np.random.default_rng(self.split_seed)
        n_test = 2  # one-step smoke tests at 448x448: keep the evaluation pass cheap
        x = rng.standard_normal((num_samples + n_test, *shape)).astype(np.float32)
        y = (rng.random((num_samples + n_test, self._declared_num_classes)) < 0.3).astype(np.int64)
        y[0] = y[num_samples] = 1  # every class has a positive in both splits
        return x[:num_samples], y[:num_samples], x[num_samples:], y[num_samples:]

    def _mask(self, true: np.ndarray) -> np.ndarray:
        observed = mask_multilabel(
            true,
            positive_keep=self.label_proportion,
            negative_keep=self.label_proportion,
            negative_flip=self.negative_flip,
            seed=self.seed,
        ).astype(np.int64)
        if self.positive_flip:
            observed = flip_missed_positives(observed, true, self.positive_flip, seed=self.seed)
        return observed

    def _setup_arrays(self, x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray) -> None:
        self.num_classes = int(y_tr.shape[1])
        self.input_shape = tuple(x_tr.shape[1:])
        self.train_true, self.test_true = y_tr, y_te
        self.train_observed = self._mask(y_tr)
        self.train_x, self.test_x = torch.from_numpy(x_tr), torch.from_numpy(x_te)

    def _setup_hub(self) -> None:
        from torchvision.transforms import v2

        if not self.hub_id:
            raise UserError("data.source=hub needs data.hub_id (a HuggingFace dataset id)")
        kwargs = {"name": self.hub_name, "revision": self.hub_revision, "cache_dir": self.cache_dir}
        # One load per split: a split may join several of the hub's ("train+validation" is VOC's trainval).
        train, test = (
            load_hub_dataset(self.hub_id, split=s, **kwargs) for s in (self.train_split, self.test_split)
        )
        if self._declared_num_classes is None:
            raise UserError("data.num_classes must be set for hub multi-label data")
        self.num_classes = int(self._declared_num_classes)
        self.input_shape = (3, self.image_size, self.image_size)
        self.train_true = multi_hot(train[self.label_key], self.num_classes)
        self.test_true = multi_hot(test[self.label_key], self.num_classes)
        self.train_observed = self._mask(self.train_true)
        normalize = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        # Official train transform (utils/dataloader.py): resize to scaleSize, one random crop of
        # 512/448/384/320/256, resize to cropSize, horizontal flip; test: resize to cropSize.
        crops = [v2.RandomCrop(s) for s in (512, 448, 384, 320, 256) if s <= self.scale_size]
        train_tf = [
            v2.Resize((self.scale_size, self.scale_size), interpolation=v2.InterpolationMode.BICUBIC),
            v2.RandomChoice(crops),
            v2.Resize((self.image_size, self.image_size), interpolation=v2.InterpolationMode.BICUBIC),
            v2.RandomHorizontalFlip(),
        ]
        test_tf = [v2.Resize((self.image_size, self.image_size), interpolation=v2.InterpolationMode.BICUBIC)]
        self._train_set = HubMultiLabelImages(
            train, self.image_key, self.train_observed, self.train_true, v2.Compose(train_tf + normalize)
        )
        self._test_set = HubMultiLabelImages(
            test, self.image_key, self.test_true, self.test_true, v2.Compose(test_tf + normalize)
        )

    # ---- facts about the split ----------------------------------------------------------------------------
    @property
    def num_train(self) -> int:
        return len(self.train_true)

    @property
    def split_hash(self) -> str:
        """sha256 over the observed training labels and the test labels."""
        digest = hashlib.sha256(f"{self.source}:{self.hub_id}".encode())
        for part in (self.train_observed, self.test_true):
            digest.update(np.ascontiguousarray(part).tobytes())
        return digest.hexdigest()[:16]

    @property
    def observed_positive_rate(self) -> float:
        """Share of the true positives observed as positive."""
        return float(
            ((self.train_observed == 1) & (self.train_true == 1)).sum() / max(self.train_true.sum(), 1)
        )

    # ---- loaders ------------------------------------------------------------------------------------------
    def _in_memory(self, x: torch.Tensor, observed: np.ndarray, true: np.ndarray) -> TensorBatchDataset:
        return TensorBatchDataset(
            {
                "x": x,
                "y": torch.as_tensor(observed, dtype=torch.long),
                "y_true": torch.as_tensor(true, dtype=torch.long),
                "index": torch.arange(len(x)),
            }
        )

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        if isinstance(dataset, TensorBatchDataset):
            generator = torch.Generator().manual_seed(self.seed)
            return DataLoader(
                dataset,
                batch_size=None,
                sampler=TensorBatchSampler(len(dataset), batch_size, shuffle, generator),
            )
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle,  # official loaders drop the last incomplete batch
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        if self.source == "hub":
            return self._loader(self._train_set, self.batch_size, shuffle=True)
        return self._loader(
            self._in_memory(self.train_x, self.train_observed, self.train_true), self.batch_size, shuffle=True
        )

    def val_dataloader(self) -> DataLoader:
        # The test split, evaluated every epoch (the official code validates on val2014 / VOC test).
        if self.source == "hub":
            return self._loader(self._test_set, self.eval_batch_size, shuffle=False)
        return self._loader(
            self._in_memory(self.test_x, self.test_true, self.test_true), self.eval_batch_size, shuffle=False
        )

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
