"""Methods that are more than one `Trainer.fit` (cross-validated probabilities, prune, retrain) subclass
`Pipeline`; the runner hands them a `RunContext` that builds modules and trainers from the run's config."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning as L
from omegaconf import DictConfig

from common.lit.stages import Stages


@dataclass
class RunContext:
    """What a pipeline may use: the resolved config, the data, factories bound to the run's config, and the
    run's cached stages (`stages.fit` for a Lightning fit that resumes after a kill, `stages.compute` for
    non-gradient work several runs share)."""

    cfg: DictConfig
    datamodule: Any
    make_module: Callable[..., L.LightningModule]
    make_trainer: Callable[..., L.Trainer]
    stages: Stages | None = None
    curves: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class Pipeline(ABC):
    """A registered method whose run is a sequence of steps; `run` returns the metrics of the record."""

    @abstractmethod
    def run(self, context: RunContext) -> dict[str, float]:
        """Execute the method and return its metrics (percentages for accuracies)."""


def with_reported_value(metrics: dict[str, float], report: str | None) -> dict[str, float]:
    """`metrics` plus `value` = the metric named by the table's `protocol.report` (one training, several
    table columns each reporting one of its metrics); unchanged when `report` is None."""
    if report is None:
        return metrics
    if report not in metrics:
        from common.errors import UserError

        raise UserError(f"protocol.report={report!r} is not a recorded metric; known: {sorted(metrics)}")
    return {**metrics, "value": metrics[report]}
