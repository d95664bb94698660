"""Epoch-level metric logging that costs nothing when no logger listens."""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch


def log_epoch_metrics(module: L.LightningModule, metrics: Mapping[str, float | torch.Tensor]) -> None:
    """Send epoch-level values to the run's loggers (CSV, W&B); skipped when none is attached.

    Lightning's result bookkeeping behind `self.log` costs milliseconds per call on a small CPU, a large
    share of a mini run's harness overhead, and nothing here reads `callback_metrics`: curves and final
    metrics are kept by the modules themselves.
    """
    if module.trainer.loggers:
        module.log_dict(dict(metrics))
