"""ELR: Early-Learning Regularization Prevents Memorization of Noisy Labels (Liu et al., NeurIPS 2020)."""

from papers.elr.loss import ELRLoss, elr_regularizer
from papers.elr.module import ELRModule

__all__ = ["ELRLoss", "ELRModule", "elr_regularizer"]
