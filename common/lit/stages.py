"""Cached stages: work that several runs share, computed once, on disk, resumable.

A stage is one named step of a multi-stage method (pre-train an encoder, cross-validate probabilities, fit an
upstream model, generate a data set). Its result lives in
``<runtime.output_root>/stages/<paper>/<name>/<key>/`` where ``key`` hashes the stage's own sub-config and
the code that computes it (the paper's files and the files of ``common/`` it runs), so

- runs, cells and tables that need the same stage compute it once, and every SLURM array task reuses it
  (no per-process caches, no hand-kept version constants: a code change is a new key);
- the result is written once, atomically (temporary file, fsync, rename), under an exclusive file lock, so
  concurrent tasks wait for the first one instead of racing it; an unreadable result counts as absent;
- a gradient stage (`Stages.fit`) is a Lightning fit that checkpoints every epoch inside its folder, so a
  task killed or requeued in the middle resumes the stage it was in from its last finished epoch, and
  finished stages are not recomputed.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from filelock import FileLock

from common.lit.random_state import get_random_state, random_state_digest, set_random_state
from common.results.cache import cache_key, load_torch, save_torch
from common.results.record import training_config

log = logging.getLogger("pnu.stages")

RESULT_NAME = "result.pt"
CHECKPOINT_DIR = "checkpoints"


@dataclass(frozen=True)
class StageDir:
    """Where one stage lives: its result, its checkpoints, its lock."""

    path: Path

    @property
    def result(self) -> Path:
        return self.path / RESULT_NAME

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def lock(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.path) + ".lock")


@dataclass
class Stages:
    """The cached stages of one run.

    `root` is the paper's stage folder, `code_hash` identifies the code the run executes, `make_trainer`
    builds a Trainer from the run's config (keyword arguments override `cfg.trainer`), and `loggers` are the
    run's loggers, which every gradient stage writes its curves to."""

    root: Path
    code_hash: str
    make_trainer: Callable[..., L.Trainer] | None = None
    loggers: list = field(default_factory=list)
    computed: list[str] = field(default_factory=list)  # names of the stages this run computed
    reused: list[str] = field(default_factory=list)  # names of the stages this run read from disk

    def locate(self, name: str, config: Mapping[str, Any]) -> StageDir:
        """The folder of stage `name` with sub-config `config` (what determines its result)."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"a stage name is a plain folder name; got {name!r}")
        return StageDir(self.root / name / cache_key(name, _plain(config), self.code_hash))

    def compute(
        self, name: str, config: Mapping[str, Any], compute: Callable[[], Any], *, seed: int | None = None
    ) -> Any:
        """`compute()` of a non-gradient stage (a GMM, LOF scores, cross-validated probabilities, a generated
        data set), or its stored value when a run has computed it before. The value must load with
        ``torch.load(weights_only=True)``: tensors (convert arrays), dicts, lists, numbers, strings.

        With `seed`, `compute` runs seeded and leaves the caller's random state as it was. Without, it draws
        from the run's random state, and a reuse restores the state the computation left; either way what
        follows does not depend on whether the stage was computed or reused."""
        stage = self.locate(name, config)
        value = _load(stage.result)
        if value is None:
            with stage.lock:
                value = _load(stage.result)  # another task may have finished it while this one waited
                if value is None:
                    log.info("stage %s: computing into %s", name, stage.path)
                    before = random_state_digest()
                    with _seeded(seed):
                        result = compute()
                    save_torch(stage.result, {"value": result, **_random_walk(seed, before)})
                    self.computed.append(name)
                    return result
        log.info("stage %s: reusing %s", name, stage.path)
        self.reused.append(name)
        _continue_from(value, seed)
        return value["value"]

    def fit(
        self,
        name: str,
        config: Mapping[str, Any],
        make_module: Callable[[], L.LightningModule],
        *,
        trainer_overrides: Mapping[str, Any] | None = None,
        seed: int | None = None,
        **fit_kwargs: Any,
    ) -> L.LightningModule:
        """A Lightning fit as a stage: the module from `make_module()`, trained by the run's Trainer (with
        `trainer_overrides`) on `fit_kwargs` (``datamodule=`` or ``train_dataloaders=``/``val_dataloaders=``).

        Returns the trained module. When the stage is stored, the module is rebuilt and its weights and
        `curves` loaded, without training. Otherwise the fit checkpoints every epoch in the stage's folder
        and resumes from the last checkpoint a killed or requeued task left behind. `seed` as in `compute`
        (the module is built before seeding, so pass weights that depend on the seed through the module)."""
        if self.make_trainer is None:
            raise RuntimeError("Stages.fit needs make_trainer (the run's Trainer factory)")
        stage = self.locate(name, config)
        module = make_module()
        if self._restore(module, stage, seed):
            log.info("stage %s: reusing %s", name, stage.path)
            self.reused.append(name)
            return module
        with stage.lock:
            if self._restore(module, stage, seed):
                self.reused.append(name)
                return module
            last = stage.checkpoints / "last.ckpt"
            resume = last if _readable_checkpoint(last) else None
            log.info("stage %s: %s in %s", name, "resuming" if resume else "fitting", stage.path)
            trainer = self.make_trainer(
                **dict(trainer_overrides or {}), checkpoint_dirpath=stage.checkpoints, loggers=self.loggers
            )
            before = random_state_digest()
            with _seeded(seed):
                trainer.fit(module, ckpt_path=str(resume) if resume else None, **fit_kwargs)
            save_torch(
                stage.result,
                {
                    "state_dict": module.state_dict(),
                    "curves": dict(getattr(module, "curves", {}) or {}),
                    **_random_walk(seed, before),
                },
            )
            shutil.rmtree(stage.checkpoints, ignore_errors=True)
            self.computed.append(name)
            return module

    def training_metrics(
        self, cfg: Any, compute: Callable[[], tuple[dict[str, float], dict[str, list[float]]]]
    ) -> tuple[dict[str, float], dict[str, list[float]]]:
        """(metrics, curves) of the run's training, `compute()`d once for every cell and table whose config
        trains the same thing (`training_config`): columns that report different metrics of one training
        (`protocol.report`), or tables that read the same sweep."""
        stored = self.compute(
            "training", training_config(cfg), lambda: dict(zip(("metrics", "curves"), compute(), strict=True))
        )
        return stored["metrics"], stored["curves"]

    @staticmethod
    def _restore(module: L.LightningModule, stage: StageDir, seed: int | None) -> bool:
        stored = _load(stage.result)
        if stored is None or "state_dict" not in stored:
            return False
        module.load_state_dict(stored["state_dict"])
        if hasattr(module, "curves"):
            module.curves = stored["curves"]
        _continue_from(stored, seed)
        return True


def _random_walk(seed: int | None, before: str) -> dict:
    """An unseeded stage draws from the run's random state: store the state it started from (a digest) and
    the state it left."""
    if seed is not None:
        return {}
    return {"random_state_before": before, "random_state_after": get_random_state()}


def _continue_from(stored: dict, seed: int | None) -> None:
    """A reused unseeded stage that starts from the state its computation started from leaves the state its
    computation left, so the rest of the run draws the same numbers whether the stage was computed or reused
    (a requeued run, a rerun). Reused from another starting state (a stage shared by runs of other seeds),
    the random state is left alone."""
    if seed is None and stored.get("random_state_before") == random_state_digest():
        set_random_state(stored["random_state_after"])


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    if seed is None:
        yield
        return
    import os

    from lightning.pytorch.utilities.seed import isolate_rng

    # seed_everything also sets these; the run's own seeding (worker seeding included) must outlive the stage.
    saved = {name: os.environ.get(name) for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}
    try:
        with isolate_rng(include_cuda=True):
            L.seed_everything(int(seed), verbose=False)
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# Run-config keys that never change what a run trains: where it writes, which cell and table it fills, the
# sweep's objective, the logger; `protocol.report` (which computed metric a cell shows) is dropped too.
def _load(path: Path) -> dict | None:
    stored = load_torch(path, weights_only=True) if path.exists() else None
    return stored if isinstance(stored, dict) else None


def _readable_checkpoint(path: Path) -> bool:
    """A checkpoint a kill left whole (memory-mapped, so a large one is not read twice)."""
    if not path.exists():
        return False
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # a torn write: start the stage over rather than fail the run
        log.warning("ignoring unreadable checkpoint %s (%s)", path, err)
        return False
    return True


def _plain(config: Mapping[str, Any]) -> Any:
    from omegaconf import OmegaConf

    if OmegaConf.is_config(config):
        return OmegaConf.to_container(config, resolve=True)
    return {k: _plain(v) if isinstance(v, Mapping) else v for k, v in dict(config).items()}
