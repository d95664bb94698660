"""Builders that turn a run's config into data, model, trainer and loggers."""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from common.backbones import build_backbone_for
from common.errors import UserError
from common.lit.random_state import get_random_state, set_random_state
from common.registry import lookup


def configure_runtime(num_threads: int | None = None) -> None:
    """Process settings for every run: flush denormal floats to zero (saturated softmax gradients are
    denormal and make CPU math 10-50x slower), CPU threads, and no start-up chatter.

    The flush flag is per thread, and intra-op worker threads may already exist, so it only reaches all
    CPU math with one intra-op thread; mini scale uses one (tiny models gain nothing from more)."""
    import torch

    torch.set_flush_denormal(True)
    if num_threads:
        torch.set_num_threads(int(num_threads))
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        ".*does not have many workers.*",
        ".*number of training batches.*smaller than the logging interval.*",
        ".*LeafSpec.*",
        ".*Checkpoint directory.*exists and is not empty.*",
        ".*srun.*",
        ".*overridden `transfer_batch_to_device`.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def _require(cfg: DictConfig, key: str, hint: str) -> Any:
    value = OmegaConf.select(cfg, key, default=None)
    if value is None:
        raise UserError(f"the run config has no `{key}`: {hint}")
    return value


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    data = _require(
        cfg, "data", "choose an experiment (experiment=<paper>/<table>) or a data config (data=...)"
    )
    params = OmegaConf.to_container(data, resolve=True)
    name = params.pop("datamodule", None)
    if name is None:
        raise UserError("the data config has no `datamodule` key naming a registered data module")
    params.setdefault("seed", int(cfg.seed))
    if cfg.runtime.get("cache_dir"):
        params.setdefault("cache_dir", cfg.runtime.cache_dir)
    try:
        return lookup("datamodule", name)(**params)
    except TypeError as err:
        raise UserError(f"data config does not fit data module {name!r}: {err}") from err


def build_module(
    cfg: DictConfig, datamodule: Any, method: DictConfig | dict | None = None
) -> L.LightningModule:
    """The registered LightningModule of `method` (default: the run's), with a fresh backbone."""
    source = method if method is not None else cfg.method
    params = OmegaConf.to_container(source, resolve=True) if isinstance(source, DictConfig) else dict(source)
    name = params.pop("name")
    module_cls = lookup("method", name)
    optim = _require(cfg, "optim", "the table's scale config must set optim.optimizer")
    optimizer = instantiate(optim.optimizer)
    scheduler = instantiate(optim.scheduler) if optim.get("scheduler") else None
    if scheduler is not None and optim.get("scheduler_epochs") is not None:
        scheduler = StepsFromData(scheduler, int(optim.scheduler_epochs))
    try:
        module = module_cls(
            backbone=build_backbone_for(cfg, datamodule),
            num_classes=datamodule.num_classes,
            num_train_examples=datamodule.num_train,
            optimizer=optimizer,
            scheduler=scheduler,
            scheduler_interval=optim.get("scheduler_interval", "epoch"),
            **params,
        )
    except TypeError as err:
        raise UserError(f"method config does not fit {name!r} ({module_cls.__qualname__}): {err}") from err
    if isinstance(scheduler, StepsFromData):
        scheduler.module = module
    return module


class StepsFromData:
    """A per-step scheduler factory whose length comes from the data: `total_steps` = the fit's optimizer
    steps per epoch x `epochs` (`optim.scheduler_epochs`), read from the Trainer when the module configures
    its optimizers. A schedule laid out for more epochs than are trained (`trainer.max_epochs`) is cut, as
    a recipe that stops early does."""

    def __init__(self, factory: Any, epochs: int) -> None:
        self.factory, self.epochs, self.module = factory, epochs, None

    def __call__(self, optimizer: Any) -> Any:
        trainer = self.module.trainer if self.module is not None else None
        if trainer is None or not trainer.max_epochs or trainer.max_epochs < 1:
            raise UserError(
                "optim.scheduler_epochs needs a fit with trainer.max_epochs (the steps per epoch)"
            )
        per_epoch = max(1, math.ceil(trainer.estimated_stepping_batches / trainer.max_epochs))
        return self.factory(optimizer, total_steps=per_epoch * self.epochs)


def checkpoint_dir(run_dir: Path, cfg: DictConfig) -> Path:
    """Checkpoints of this exact config: a run whose config changed never resumes from another's weights."""
    from common.results.record import config_hash

    return run_dir / "checkpoints" / config_hash(cfg)


def build_trainer(
    cfg: DictConfig,
    run_dir: Path | None = None,
    *,
    loggers: list | bool = False,
    checkpoint: bool | None = None,
    checkpoint_dirpath: Path | None = None,
    **overrides: Any,
) -> L.Trainer:
    """A Trainer from `cfg.trainer`; pipelines pass overrides (e.g. max_epochs) for their sub-fits.

    With checkpoints (`runtime.checkpoint`, or a `checkpoint_dirpath` given by a stage) the Trainer saves
    `last.ckpt` every epoch, with the module's learning curves and the random states, so a resumed fit
    continues as an uninterrupted one would; under
    SLURM it saves one more on the requeue signal."""
    params = {**OmegaConf.to_container(cfg.trainer, resolve=True), **overrides}
    checkpoint = checkpoint_dirpath is not None or (
        bool(cfg.runtime.checkpoint) if checkpoint is None else checkpoint
    )
    callbacks = []
    if checkpoint:
        from lightning.pytorch.callbacks import ModelCheckpoint

        directory = checkpoint_dirpath if checkpoint_dirpath is not None else checkpoint_dir(run_dir, cfg)
        # The newest epoch only, as last.ckpt (Lightning writes `save_last` files only beside a top-k save).
        latest = ModelCheckpoint(
            dirpath=str(directory), filename="last", monitor=None, save_top_k=1, enable_version_counter=False
        )
        callbacks += [latest, ResumableState()]
        max_steps = params.get("max_steps")
        if max_steps is not None and int(max_steps) >= 0:
            # Lightning (2.6) resumes a fit with `max_steps` from an end-of-epoch checkpoint as if inside
            # that epoch (one batch too many, an epoch lost); the limit as a callback resumes by epochs.
            params["max_steps"] = -1
            callbacks.append(StopAtStep(int(max_steps)))
    if cfg.runtime.progress:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar(leave=True))
    plugins = []
    if "SLURM_JOB_ID" in os.environ and checkpoint:
        plugins.append(slurm_environment())
    return L.Trainer(
        logger=loggers,
        callbacks=callbacks,
        plugins=plugins or None,
        enable_checkpointing=checkpoint,
        enable_progress_bar=bool(cfg.runtime.progress),
        enable_model_summary=False,
        default_root_dir=str(run_dir) if run_dir else None,
        **params,
    )


class StopAtStep(L.Callback):
    """Ends the fit after `max_steps` optimiser steps, as the Trainer's `max_steps` does (mid-epoch too)."""

    def __init__(self, max_steps: int) -> None:
        self.max_steps = max_steps

    def _check(self, trainer: L.Trainer) -> None:
        if trainer.global_step >= self.max_steps:
            trainer.should_stop = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._check(trainer)


def slurm_environment() -> Any:
    """Lightning's SLURM environment. In a job array of `reproduce` (common/slurm.py) sbatch sends USR1
    before the time limit and Lightning checkpoints and requeues the task. Under Hydra's SLURM launcher
    (submitit, `python -m common.run --multirun hydra/launcher=slurm`) submitit has sbatch send USR2 and
    requeues the job itself, so Lightning's own requeue stays off. Either way the requeued job reruns the
    same config, and its fit resumes from the last epoch's checkpoint."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from common.slurm import requeue_on_signal

    return SLURMEnvironment(auto_requeue=requeue_on_signal())


class ResumableState(L.Callback):
    """Puts into every checkpoint what Lightning leaves out and a resumed fit needs to continue exactly: the
    module's `curves` (per-epoch metrics the record reports, e.g. the drop from the best epoch) and the torch,
    NumPy and Python random states (the next epoch's shuffling draws from torch's global generator)."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if isinstance(getattr(pl_module, "curves", None), dict):
            checkpoint["pnu_curves"] = {k: list(v) for k, v in pl_module.curves.items()}
        checkpoint["pnu_rng"] = get_random_state()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if "pnu_curves" in checkpoint and isinstance(getattr(pl_module, "curves", None), dict):
            pl_module.curves = {k: list(v) for k, v in checkpoint["pnu_curves"].items()}
        if "pnu_rng" in checkpoint:
            set_random_state(checkpoint["pnu_rng"])


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    """CSV or W&B loggers. W&B is offline unless the user's WANDB_MODE says otherwise; a table is a group."""
    kind = cfg.logger.kind
    if kind == "none":
        return []
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return [CSVLogger(save_dir=str(run_dir), name="csv", version="")]
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        from common.results.record import config_hash

        os.environ.setdefault("WANDB_MODE", cfg.logger.mode)
        os.environ.setdefault("WANDB_SILENT", "true")
        return [
            WandbLogger(
                project=cfg.logger.project,
                entity=cfg.logger.get("entity"),
                group=f"{cfg.paper}/{cfg.table}/{cfg.scale.name}",
                name=run_name(cfg),
                save_dir=str(run_dir),
                config=OmegaConf.to_container(cfg, resolve=True),
                tags=[str(cfg.paper), str(cfg.scale.name)],
                # A requeued or resumed run continues the same W&B run instead of starting a second one.
                id=wandb_run_id(cfg, config_hash(cfg)),
                resume="allow",
            )
        ]
    raise UserError(f"unknown logger.kind {kind!r}; use csv, wandb or none")


def wandb_run_id(cfg: DictConfig, chash: str) -> str:
    """The W&B id of a run: its paper, scale and config hash (the hash covers the table, cell and seed)."""
    return f"{cfg.paper}-{cfg.scale.name}-{chash}"


def run_name(cfg: DictConfig) -> str:
    row, column = cfg.cell.row, cfg.cell.column
    label = f"{row} | {column}" if row is not None else str(cfg.method.name)
    return f"{label} | seed {cfg.seed}"
