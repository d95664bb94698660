"""Binary tabular data cut into random bags whose positive counts are all an LLP learner sees
(datamodule `llp_tabular`).

Sources:
- `synthetic` (mini): scikit-learn `make_classification` with the given keyword arguments, split 90/10 into
  train/test and 10% of train held out for validation (the paper's split, after Yoon et al. 2020);
- `bank_csv` (paper): the Bank Marketing split shipped in the official repository's `data/` folder
  (x_train/x_val/x_test.csv with 16 preprocessed features, y_*.csv), read from `csv_dir`;
- `adult` (paper): the Adult census-income table from the HuggingFace hub (`hub_id`), categorical columns
  one-hot encoded, numeric ones standardised, split as `synthetic`;
- `random`: standard-normal features with random labels, in the paper's shapes (config smoke tests).
Validation and test labels are instance labels (the official train.py early-stops on validation AUC).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from sklearn.datasets import make_classification

from common.data.sources import load_hub_dataset
from common.data.weak_labels import Bags, make_bags
from common.errors import UserError
from common.registry import register_datamodule

SOURCES = ("synthetic", "bank_csv", "adult", "random")


@register_datamodule("llp_tabular")
class LLPTabularDataModule(L.LightningDataModule):
    """Train/validation/test arrays and the random bags of the training split."""

    def __init__(
        self,
        source: str = "synthetic",
        *,
        bag_size: int = 8,
        seed: int = 0,
        split_seed: int | None = None,
        test_fraction: float = 0.1,
        valid_fraction: float = 0.1,
        synthetic: dict[str, Any] | None = None,
        csv_dir: str | None = None,
        hub_id: str = "scikit-learn/adult-census-income",
        target_column: str = "income",
        positive_value: str = ">50K",
        random_examples: int = 256,
        random_features: int = 16,
        batch_size: int = 1024,
        eval_batch_size: int = 2048,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise UserError(f"unknown data.source {source!r} for llp_tabular; use one of {SOURCES}")
        self.source, self.bag_size, self.seed = source, int(bag_size), int(seed)
        self.split_seed = int(self.seed if split_seed is None else split_seed)
        self.test_fraction, self.valid_fraction = float(test_fraction), float(valid_fraction)
        self.synthetic = dict(synthetic or {})
        self.csv_dir, self.hub_id, self.cache_dir = csv_dir, hub_id, cache_dir
        self.target_column, self.positive_value = target_column, positive_value
        self.random_examples, self.random_features = int(random_examples), int(random_features)
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.num_workers = num_workers
        self.num_classes = 2
        self.arrays: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
        self.bags: Bags | None = None

    # ---- loading -------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.arrays is not None:
            return
        if self.source == "bank_csv":
            arrays = self._bank_csv()
        else:
            x, y = self._table()
            arrays = self._split(x, y)
        mean, std = arrays["train"][0].mean(0), arrays["train"][0].std(0) + 1e-8
        if self.source != "bank_csv":  # the official Bank CSVs are already scaled
            arrays = {k: ((x - mean) / std, y) for k, (x, y) in arrays.items()}
        self.arrays = {k: (x.astype(np.float32), y.astype(np.int64)) for k, (x, y) in arrays.items()}
        labels = self.arrays["train"][1]
        if not 1 <= self.bag_size <= labels.size:
            raise UserError(f"data.bag_size must lie in [1, {labels.size}], got {self.bag_size}")
        self.bags = make_bags(labels, self.bag_size, seed=self.split_seed + 1, num_classes=2)

    def _table(self) -> tuple[np.ndarray, np.ndarray]:
        if self.source == "synthetic":
            x, y = make_classification(random_state=self.split_seed, **self.synthetic)
            return x, y
        if self.source == "random":
            rng = np.random.default_rng(self.split_seed)
            x = rng.standard_normal((self.random_examples, self.random_features))
            return x, rng.integers(0, 2, self.random_examples)
        return self._adult()

    def _adult(self) -> tuple[np.ndarray, np.ndarray]:
        import pandas as pd

        frame = load_hub_dataset(self.hub_id, split="train", cache_dir=self.cache_dir).to_pandas()
        y = (frame.pop(self.target_column).astype(str).str.strip() == self.positive_value).to_numpy()
        categorical = [c for c in frame.columns if frame[c].dtype == object]
        x = pd.get_dummies(frame, columns=categorical, dtype=np.float64).to_numpy(np.float64)
        return x, y.astype(np.int64)

    def _bank_csv(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        import pandas as pd

        folder = Path(self.csv_dir) if self.csv_dir else None
        names = {"train": "train", "valid": "val", "test": "test"}
        if folder is None or not all((folder / f"x_{n}.csv").exists() for n in names.values()):
            raise UserError(
                f"data.csv_dir={self.csv_dir!r} does not hold the Bank Marketing split: copy the data/ "
                "folder (x_train.csv, x_val.csv, x_test.csv, y_*.csv) of github.com/google-deepmind/llp_bp "
                "there (or set LLP_BP_BANK_DIR)"
            )
        return {
            split: (
                pd.read_csv(folder / f"x_{name}.csv").to_numpy(np.float64),
                pd.read_csv(folder / f"y_{name}.csv").to_numpy().reshape(-1).astype(np.int64),
            )
            for split, name in names.items()
        }

    def _split(self, x: np.ndarray, y: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        order = np.random.default_rng(self.split_seed).permutation(len(y))
        num_test = int(round(self.test_fraction * len(y)))
        test, rest = order[:num_test], order[num_test:]
        num_valid = int(round(self.valid_fraction * len(rest)))
        valid, train = rest[:num_valid], rest[num_valid:]
        return {"train": (x[train], y[train]), "valid": (x[valid], y[valid]), "test": (x[test], y[test])}

    # ---- views ---------------------------------------------------------------------------------------------
    def _require(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if self.arrays is None:
            self.setup()
        assert self.arrays is not None
        return self.arrays

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(features, labels) of `train`, `valid` or `test`."""
        return self._require()[name]

    def bagged(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(features, true labels, bag id, bag positive counts) of the training examples that are in a bag."""
        x, y = self.split("train")
        assert self.bags is not None
        keep = self.bags.bag_of >= 0
        counts = np.rint(self.bags.proportions[:, 1] * self.bags.sizes).astype(np.int64)
        return x[keep], y[keep], self.bags.bag_of[keep], counts

    @property
    def num_train(self) -> int:
        return int(self.split("train")[1].size)

    @property
    def num_features(self) -> int:
        return int(self.split("train")[0].shape[1])

    @property
    def input_shape(self) -> tuple[int]:
        return (self.num_features,)

    @property
    def split_hash(self) -> str:
        digest = hashlib.sha256()
        for name in ("train", "valid", "test"):
            x, y = self.split(name)
            digest.update(np.ascontiguousarray(x).tobytes())
            digest.update(np.ascontiguousarray(y).tobytes())
        assert self.bags is not None
        digest.update(self.bags.bag_of.tobytes())
        return digest.hexdigest()[:16]
