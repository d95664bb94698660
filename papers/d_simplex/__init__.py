"""d-Simplex / IAM-CL2R: Stationary Representations (Biondi, Pernici, Ricci, Del Bimbo, CVPR 2024)."""

from papers.d_simplex.losses import hoc_contrastive_loss, hoc_loss
from papers.d_simplex.metrics import (
    average_compatibility,
    average_multimodel_accuracy,
    class_templates,
    identification_accuracy,
)
from papers.d_simplex.module import CompatibleLearner
from papers.d_simplex.pipeline import IAMCL2RPipeline
from papers.d_simplex.simplex import dsimplex_vertices, vertex_of_class

__all__ = [
    "CompatibleLearner",
    "IAMCL2RPipeline",
    "average_compatibility",
    "average_multimodel_accuracy",
    "class_templates",
    "dsimplex_vertices",
    "hoc_contrastive_loss",
    "hoc_loss",
    "identification_accuracy",
    "vertex_of_class",
]
