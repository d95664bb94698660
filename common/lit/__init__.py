"""LightningModule base classes and the contract of multi-stage pipelines."""

from common.lit.classification import ClassificationModule
from common.lit.pipeline import Pipeline, RunContext

__all__ = ["ClassificationModule", "Pipeline", "RunContext"]
