"""Out-of-sample predicted probabilities for every training example by K-fold cross-validation.

Each fold trains a fresh cross-entropy model (the run's backbone, optimiser and schedule) on the other folds
and predicts the held-out one. The result is cached per data split and training config, so several runs that
need the same probabilities (e.g. different filters applied to them) compute them once."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.utilities.seed import isolate_rng
from omegaconf import OmegaConf

from common.lit.pipeline import RunContext
from common.results.cache import atomic_write

log = logging.getLogger("pnu.cross_val")

# Bump when the computation changes, so old cache files are not reused.
_CACHE_VERSION = 1
# Config groups that decide what the fold models learn.
_TRAINING_KEYS = ("data", "model", "optim", "trainer")


def cross_val_cache_key(context: RunContext, *, n_folds: int, seed: int) -> str:
    """sha256 (16 hex) of the split, the resolved data/model/optim/trainer configs, n_folds and seed."""
    configs = {
        key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        for key in _TRAINING_KEYS
        if (value := OmegaConf.select(context.cfg, key, default=None)) is not None
    }
    payload = {
        "version": _CACHE_VERSION,
        "split_hash": context.datamodule.split_hash,
        "configs": configs,
        "n_folds": int(n_folds),
        "seed": int(seed),
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cross_val_predict_proba(
    context: RunContext, *, n_folds: int, seed: int, cache_dir: Path | None
) -> np.ndarray:
    """Softmax probabilities (n_train, num_classes) of each training example from the model that did not
    train on it: stratified (on the given, possibly noisy, labels), shuffled, seeded K folds.

    With `cache_dir`, the array is read from / written to `cache_dir/cross_val_proba_<key>.npy`
    (see `cross_val_cache_key`). The caller's random state is left as it was, so what follows does not
    depend on whether the probabilities came from the cache."""
    from sklearn.model_selection import StratifiedKFold

    if int(n_folds) != n_folds or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2; got {n_folds}")
    datamodule = context.datamodule
    labels = np.asarray(datamodule.train_labels)
    shape = (len(labels), int(datamodule.num_classes))
    path = None
    if cache_dir is not None:
        key = cross_val_cache_key(context, n_folds=n_folds, seed=seed)
        path = Path(cache_dir) / f"cross_val_proba_{key}.npy"
        cached = _load(path, shape)
        if cached is not None:
            log.info("cross-validated probabilities from %s", path)
            return cached

    probs = np.full(shape, np.nan)
    folds = StratifiedKFold(n_splits=int(n_folds), shuffle=True, random_state=int(seed))
    with isolate_rng(include_cuda=True):
        for fold, (train_idx, holdout_idx) in enumerate(folds.split(np.zeros(len(labels)), labels)):
            log.info(
                "cross-validation fold %d/%d (%d examples held out)", fold + 1, n_folds, len(holdout_idx)
            )
            # Each fold has its own seed, so a fold's model does not depend on the folds before it.
            fold_seed = int(np.random.SeedSequence([int(seed), fold]).generate_state(1)[0])
            L.seed_everything(fold_seed, verbose=False)
            module = context.make_module({"name": "ce"})
            # No per-epoch evaluation: only the held-out predictions of the final model are used.
            trainer = context.make_trainer(limit_val_batches=0)
            trainer.fit(
                module,
                train_dataloaders=datamodule.loader(datamodule.train_dataset(train_idx), shuffle=True),
                val_dataloaders=datamodule.val_dataloader(),
            )
            # Lightning moves the model back to the CPU after fit; predict on the device it trained on.
            module.to(trainer.strategy.root_device)
            holdout = datamodule.loader(datamodule.train_dataset(holdout_idx), shuffle=False, train=False)
            probs[holdout_idx] = module.predict_proba(holdout).numpy()
            module.cpu()
    if not np.all(np.isfinite(probs)):
        raise RuntimeError("cross-validation left non-finite probabilities (a fold diverged?)")
    if path is not None:
        _save_atomically(probs, path)
    return probs


def _load(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The cached array, or None when absent or unusable (then it is recomputed and overwritten)."""
    if not path.exists():
        return None
    try:
        probs = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable cache file %s (%s)", path, err)
        return None
    if probs.shape != shape or not np.all(np.isfinite(probs)):
        log.warning("ignoring cache file %s: shape %s, expected %s", path, probs.shape, shape)
        return None
    return probs


def _save_atomically(probs: np.ndarray, path: Path) -> None:
    """Readers never see a partial file (`common.results.cache.atomic_write`)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, probs, allow_pickle=False)

    atomic_write(path, write)
