"""Where data comes from: embedded mini sources (digits, Gaussian mixtures), random tensors of a given shape
(smoke tests of paper-scale configs) and HuggingFace hub datasets (paper scale)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError


@dataclass
class ArrayData:
    """Train and test arrays of one source; labels are clean class indices."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def stratified_split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> ArrayData:
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return ArrayData(x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64), int(y.max()) + 1)


def load_digits(*, test_fraction: float = 0.3, split_seed: int = 0, as_image: bool = True) -> ArrayData:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    if as_image:
        x = x.reshape(-1, 1, 8, 8)
    return stratified_split(x, bunch.target, test_fraction, split_seed)


def make_gaussian_mixture(
    *,
    num_classes: int = 10,
    num_features: int = 20,
    num_samples: int = 2000,
    class_sep: float = 1.0,
    test_fraction: float = 0.3,
    split_seed: int = 0,
) -> ArrayData:
    """Gaussian clusters per class (scikit-learn's make_classification), standardised."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=num_samples,
        n_features=num_features,
        n_informative=num_features,
        n_redundant=0,
        n_classes=num_classes,
        n_clusters_per_class=1,
        class_sep=class_sep,
        random_state=split_seed,
    )
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    return stratified_split(x, y, test_fraction, split_seed)


def make_random(
    *, input_shape: list[int], num_classes: int, num_samples: int = 64, split_seed: int = 0
) -> ArrayData:
    """Random inputs of a paper's shapes with random labels: for one-step smoke tests, never for results."""
    rng = np.random.default_rng(split_seed)
    n_test = max(num_samples // 4, 1)
    x = rng.standard_normal((num_samples + n_test, *input_shape)).astype(np.float32)
    y = rng.integers(0, num_classes, num_samples + n_test)
    y[:num_classes] = np.arange(min(num_classes, len(y)))
    return ArrayData(x[:num_samples], y[:num_samples], x[num_samples:], y[num_samples:], num_classes)


def default_cache_dir() -> Path:
    return Path(os.environ.get("HF_DATASETS_CACHE", Path.home() / ".cache" / "huggingface" / "datasets"))


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """A TCP connection to the hub's endpoint opens within `timeout_s` (assumed yes behind a proxy, which
    a direct probe cannot judge)."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from urllib.parse import urlparse

    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """HF_HUB_OFFLINE for the calls inside (the libraries read the variable once, at import)."""
    import datasets.config
    from huggingface_hub import constants

    saved = (constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE)
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE = saved


def load_hub_dataset(
    hub_id: str,
    *,
    name: str | None = None,
    split: str | None = None,
    columns: list[str] | None = None,
    cache_dir: str | None = None,
    **kwargs: Any,
) -> Any:
    """`datasets.load_dataset(hub_id, name, split=split)`, the one way every paper reads a hub dataset.

    `columns` keeps only those columns (a named column that is missing is an error that lists the present
    ones). With HF_HUB_OFFLINE=1 (a cluster without network) only the cache is read. When the dataset is
    neither cached nor reachable: one error naming the dataset, its config and split, the cache directory and
    the command that fetches it."""
    import datasets

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    # Without network the hub client retries for about half a minute; read the cache alone at once instead.
    unreachable = not os.environ.get("HF_HUB_OFFLINE") and not hub_reachable()
    try:
        with _hub_offline() if unreachable else contextlib.nullcontext():
            dataset = datasets.load_dataset(hub_id, name, split=split, cache_dir=str(cache), **kwargs)
    except Exception as err:  # datasets raises several types (ConnectionError, FileNotFoundError, ...)
        arguments = ", ".join(
            [repr(hub_id), *([repr(name)] if name else []), *([f"split={split!r}"] if split else [])]
        )
        offline = (
            " (HF_HUB_OFFLINE is set: only the cache is read)"
            if os.environ.get("HF_HUB_OFFLINE")
            else " (no connection to the hub: only the cache was read; where there is no network, set "
            "HF_HUB_OFFLINE=1)"
            if unreachable
            else ""
        )
        which = f"{hub_id!r}{f' config {name!r}' if name else ''}{f' split {split!r}' if split else ''}"
        offline_now = bool(os.environ.get("HF_HUB_OFFLINE")) or unreachable
        if not offline_now and not isinstance(err, ConnectionError | TimeoutError):
            # Reachable, yet not loaded: a wrong name, config or split, or a gated data set; not the cache.
            raise UserError(
                f"dataset {which} could not be loaded from the HuggingFace hub "
                f"({type(err).__name__}: {err}); check the data config's hub id, config name and split "
                "(and access, for a gated data set)"
            ) from err
        raise UserError(
            f"dataset {which} is not in the cache at {cache} and the HuggingFace hub could not be "
            f"reached{offline} "
            f"({type(err).__name__}: {err}). On a machine with network run:\n"
            f"  python -c \"import datasets; datasets.load_dataset({arguments}, cache_dir='{cache}')\"\n"
            "then copy that cache here, or point to an existing copy with "
            f'OVERRIDES="runtime.cache_dir=<dir>" (or HF_DATASETS_CACHE=<dir>).'
        ) from err
    if columns is not None:
        present = dataset.column_names
        present = present if isinstance(present, list) else next(iter(present.values()))
        missing = sorted(set(columns) - set(present))
        if missing:
            raise UserError(f"dataset {hub_id!r} has no columns {missing}; its columns: {present}")
        dataset = dataset.select_columns(list(columns))
    return dataset
