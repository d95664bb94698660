"""Evaluation of frozen representations: weighted kNN and linear probes."""

from common.eval.knn import knn_accuracy, knn_class_scores
from common.eval.linear_probe import (
    accuracy,
    extract_features,
    logistic_regression_probe,
    train_linear_probe,
)

__all__ = [
    "accuracy",
    "extract_features",
    "knn_accuracy",
    "knn_class_scores",
    "logistic_regression_probe",
    "train_linear_probe",
]
