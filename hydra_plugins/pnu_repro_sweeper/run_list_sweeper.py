"""A Hydra sweeper that launches an explicit list of runs (each a list of overrides) instead of a cartesian
product: a table's cells are (row overrides + column overrides) x seeds, which no product expresses."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class RunListSweeperConf:
    _target_: str = "hydra_plugins.pnu_repro_sweeper.run_list_sweeper.RunListSweeper"
    runs_file: str = "???"  # JSON list of override lists
    max_batch_size: int | None = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="run_list", node=RunListSweeperConf, provider="pnu-repro"
)


class RunListSweeper(Sweeper):
    def __init__(self, runs_file: str, max_batch_size: int | None = None):
        self.runs_file = runs_file
        self.max_batch_size = max_batch_size
        self.launcher: Launcher | None = None
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        runs = json.loads(Path(self.runs_file).read_text())
        if not isinstance(runs, list) or not all(isinstance(r, list) for r in runs):
            raise ValueError(f"{self.runs_file} must hold a JSON list of override lists")
        jobs = [[*arguments, *run] for run in runs]
        size = self.max_batch_size or len(jobs) or 1
        results = []
        for start in range(0, len(jobs), size):
            results.append(self.launcher.launch(jobs[start : start + size], initial_job_idx=start))
        return results
