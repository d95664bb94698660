"""One run: `python -m common.run experiment=elr/table1 method=elr data.noise_rate=0.4 seed=1`.

Trains (or runs the pipeline of) the configured method and writes `result.json` in the run folder. A crash or
a NaN loss is recorded as `failed` with its reason; an interrupted run writes nothing, so it is redone."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from common.checks import check_run_config
from common.config import CONFIG_DIR, register_resolvers
from common.errors import NonFiniteLossError, UserError
from common.registry import lookup
from common.results.provenance import code_hashes_at_start
from common.results.record import (
    STATUS_COMPLETE,
    STATUS_FAILED,
    RunRecord,
    config_hash,
    device_info,
    git_state,
    now,
    package_versions,
    read_record,
    write_record,
)

log = logging.getLogger("pnu.run")


def _check_config(cfg: DictConfig) -> None:
    scale = OmegaConf.select(cfg, "scale.name", default="?")
    if (
        OmegaConf.select(cfg, "paper", default=None) is None
        or OmegaConf.select(cfg, "table", default=None) is None
    ):
        choice = _experiment_choice()
        if choice:
            folder = CONFIG_DIR / "papers" / choice.split("/")[0]
            tables = sorted(p.stem for p in folder.glob("*.yaml") if p.name != "paper.yaml")
            known = (
                f"the tables of {folder.name}: {tables}"
                if tables
                else "a paper's tables: conf/papers/<paper>/"
            )
            raise UserError(
                f"experiment={choice} names no table: conf/papers/{choice}.yaml does not exist ({known})"
            )
        raise UserError("the run config has no table: choose one, experiment=<paper>/<table> (conf/papers/)")
    if OmegaConf.select(cfg, "data", default=None) is None:
        raise UserError(
            f"the run config has no `data`: table {cfg.paper}/{cfg.table} has no `{scale}:` section "
            f"(conf/papers/{cfg.paper}/{cfg.table}.yaml)"
        )
    check_run_config(cfg)


def _experiment_choice() -> str | None:
    """The `experiment=` choice of a Hydra app run (None when composed outside one)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get("experiment")


def _train(cfg: DictConfig, run_dir: Path, datamodule: Any) -> tuple[dict, dict, dict]:
    from common.experiment import build_loggers, build_module, build_trainer, checkpoint_dir
    from common.lit.pipeline import Pipeline, RunContext
    from common.lit.stages import Stages

    method_cls = lookup("method", cfg.method.name)
    loggers = build_loggers(cfg, run_dir)
    if isinstance(method_cls, type) and issubclass(method_cls, Pipeline):
        params = {k: v for k, v in OmegaConf.to_container(cfg.method, resolve=True).items() if k != "name"}
        make_trainer = lambda **kw: build_trainer(cfg, run_dir, checkpoint=False, **kw)  # noqa: E731
        hashes = code_hashes_at_start(str(cfg.paper))
        context = RunContext(
            cfg=cfg,
            datamodule=datamodule,
            make_module=lambda method=None: build_module(cfg, datamodule, method),
            make_trainer=make_trainer,
            stages=Stages(
                root=Path(cfg.runtime.output_root) / "stages" / str(cfg.paper),
                code_hash=f"{hashes.paper}-{hashes.common}",
                make_trainer=make_trainer,
                loggers=loggers,
            ),
        )
        metrics = method_cls(**params).run(context)
        stages = {"stages_computed": context.stages.computed, "stages_reused": context.stages.reused}
        return metrics, context.curves, {"loggers": loggers, **context.extra, **stages}
    module = build_module(cfg, datamodule)
    trainer = build_trainer(cfg, run_dir, loggers=loggers)
    last = checkpoint_dir(run_dir, cfg) / "last.ckpt"
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.exists() else None)
    info = {
        "loggers": loggers,
        "precision": str(trainer.precision),
        "effective_batch_size": int(
            datamodule.batch_size * trainer.accumulate_grad_batches * trainer.world_size
        ),
    }
    return module.final_metrics(), module.curves, info


def execute(cfg: DictConfig) -> RunRecord:
    """Run one configured experiment and write its record; returns the record (skips a complete one)."""
    _check_config(cfg)
    run_dir = Path(cfg.runtime.run_dir)
    chash = config_hash(cfg)
    existing = read_record(run_dir)
    same_code = (
        existing is not None and existing.paper_code_hash == code_hashes_at_start(str(cfg.paper)).paper
    )
    if (
        existing
        and existing.complete
        and existing.config_hash == chash
        and same_code
        and not cfg.runtime.force
    ):
        log.info("complete record found in %s; skipping", run_dir)
        return existing
    # Lightning and the training stack load here, after the checks: a bad input fails in about a second.
    import lightning as L

    from common.experiment import build_datamodule, configure_runtime

    configure_runtime(cfg.runtime.get("num_threads"))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    sha, dirty = git_state()
    record = RunRecord(
        paper=str(cfg.paper),
        table=str(cfg.table),
        scale=str(cfg.scale.name),
        seed=int(cfg.seed),
        cell=OmegaConf.to_container(cfg.cell, resolve=True),
        status=STATUS_FAILED,
        config_hash=chash,
        started_at=now(),
        git_sha=sha,
        git_dirty=dirty,
        **code_hashes_at_start(str(cfg.paper)).as_dict(),
        packages=package_versions(),
        device=device_info(),
        precision=str(cfg.trainer.get("precision")),
    )
    start = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    info: dict[str, Any] = {}
    try:
        datamodule = build_datamodule(cfg)
        datamodule.setup("fit")
        record.data_split_hash = getattr(datamodule, "split_hash", None)
        record.effective_batch_size = getattr(datamodule, "batch_size", None)
        metrics, curves, info = _train(cfg, run_dir, datamodule)
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            raise NonFiniteLossError(f"non-finite metrics: {bad}")
        if not metrics:
            raise RuntimeError("the method returned no metrics (did training run any epoch?)")
        record.metrics, record.curves, record.status = metrics, curves, STATUS_COMPLETE
        record.precision = info.get("precision", record.precision)
        record.effective_batch_size = info.get("effective_batch_size", record.effective_batch_size)
        record.extra = {
            k: v for k, v in info.items() if k not in ("loggers", "precision", "effective_batch_size")
        }
    except NonFiniteLossError as err:  # before UserError: a NaN input to a kernel is both
        record.reason = f"non-finite loss: {err}"
    except UserError:
        raise
    except Exception as err:  # a crash is recorded as failed; the sweep goes on with the other runs
        record.reason = f"{type(err).__name__}: {err}"
        (run_dir / "error.txt").write_text(traceback.format_exc())
        log.error("run failed: %s (traceback in %s)", record.reason, run_dir / "error.txt")
    record.wall_time_s = round(time.perf_counter() - start, 3)
    record.finished_at = now()
    if _global_rank() != 0:  # the other processes of a multi-GPU run: rank 0 writes the one record
        return record
    path = write_record(record, run_dir)
    _finish_loggers(info.get("loggers", []), record, path)
    return record


def _global_rank() -> int:
    """This process's rank in a multi-device run: torchrun sets RANK, SLURM SLURM_PROCID, and Lightning's own
    launcher LOCAL_RANK on one node."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def _finish_loggers(loggers: list, record: RunRecord, record_path: Path) -> None:
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            run = logger.experiment
            run.summary.update({"status": record.status, **record.metrics})
            run.save(str(record_path), base_path=str(record_path.parent), policy="now")
            run.finish()


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    try:
        record = execute(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if not record.complete:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        print(
            f"error: run failed: {record.reason} (record: {cfg.runtime.run_dir}/result.json)", file=sys.stderr
        )
        if HydraConfig.get().mode == RunMode.RUN:
            sys.exit(1)
    return record.metrics.get(str(cfg.get("objective", "test/acc")))


register_resolvers()

if __name__ == "__main__":
    main()
