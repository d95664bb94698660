"""Out-of-sample predicted probabilities for every training example by K-fold cross-validation.

Each fold trains a fresh cross-entropy model (the run's backbone, optimiser and schedule) on the other folds
and predicts the held-out one. The result is a cached stage (`common.lit.stages`) keyed by the data split and
the training config, so several runs that need the same probabilities (e.g. different filters applied to
them) compute them once."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.seed import isolate_rng
from omegaconf import OmegaConf

from common.lit.pipeline import RunContext

log = logging.getLogger("pnu.cross_val")

# Config groups that decide what the fold models learn.
_TRAINING_KEYS = ("data", "model", "optim", "trainer")
STAGE_NAME = "cross_val_proba"


def cross_val_stage_config(context: RunContext, *, n_folds: int, seed: int) -> dict[str, Any]:
    """What decides the probabilities: the split, the data/model/optim/trainer configs, K and the seed."""
    configs = {
        key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        for key in _TRAINING_KEYS
        if (value := OmegaConf.select(context.cfg, key, default=None)) is not None
    }
    return {
        "split_hash": context.datamodule.split_hash,
        "configs": configs,
        "n_folds": int(n_folds),
        "seed": int(seed),
    }


def cross_val_predict_proba(context: RunContext, *, n_folds: int, seed: int) -> np.ndarray:
    """Softmax probabilities (n_train, num_classes) of each training example from the model that did not
    train on it: stratified (on the given, possibly noisy, labels), shuffled, seeded K folds.

    With the run's stages (`context.stages`) the array is the stage `cross_val_proba`, computed once per
    `cross_val_stage_config`. The caller's random state is left as it was, so what follows does not depend on
    whether the probabilities were computed or reused."""
    if int(n_folds) != n_folds or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2; got {n_folds}")
    if context.stages is None:
        return _cross_val(context, int(n_folds), int(seed))
    config = cross_val_stage_config(context, n_folds=n_folds, seed=seed)
    stored = context.stages.compute(
        STAGE_NAME, config, lambda: torch.from_numpy(_cross_val(context, int(n_folds), int(seed)))
    )
    return stored.numpy()


def _cross_val(context: RunContext, n_folds: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold

    datamodule = context.datamodule
    labels = np.asarray(datamodule.train_labels)
    probs = np.full((len(labels), int(datamodule.num_classes)), np.nan)
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with isolate_rng(include_cuda=True):
        for fold, (train_idx, holdout_idx) in enumerate(folds.split(np.zeros(len(labels)), labels)):
            log.info(
                "cross-validation fold %d/%d (%d examples held out)", fold + 1, n_folds, len(holdout_idx)
            )
            # Each fold has its own seed, so a fold's model does not depend on the folds before it.
            fold_seed = int(np.random.SeedSequence([seed, fold]).generate_state(1)[0])
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
    return probs
