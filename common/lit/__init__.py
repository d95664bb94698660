"""LightningModule base classes and the contract of multi-stage pipelines."""

from common.lit.classification import ClassificationModule
from common.lit.pipeline import Pipeline, RunContext
from common.lit.stages import Stages

__all__ = ["ClassificationModule", "Pipeline", "RunContext", "Stages"]
