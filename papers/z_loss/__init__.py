"""The Z-loss (de Brébisson & Vincent, arXiv 1604.08859): a shift- and scale-invariant spherical-family loss,
compared with log-softmax, MSE, log-Taylor-softmax and log-spherical-softmax on next-token prediction."""

from papers.z_loss.data import NextTokenDataModule, ZipfMarkovSource, windows_from_sequences
from papers.z_loss.losses import (
    LOSSES,
    log_softmax_loss,
    log_spherical_softmax_loss,
    log_taylor_softmax_loss,
    mse_loss,
    spherical_statistics,
    z_loss,
    z_loss_from_statistics,
)
from papers.z_loss.model import NeuralLanguageModel
from papers.z_loss.module import (
    LogSoftmaxModule,
    LogSphericalSoftmaxModule,
    LogTaylorSoftmaxModule,
    MSEModule,
    NextTokenModule,
    ZLossModule,
)

__all__ = [
    "LOSSES",
    "LogSoftmaxModule",
    "LogSphericalSoftmaxModule",
    "LogTaylorSoftmaxModule",
    "MSEModule",
    "NeuralLanguageModel",
    "NextTokenDataModule",
    "NextTokenModule",
    "ZLossModule",
    "ZipfMarkovSource",
    "log_softmax_loss",
    "log_spherical_softmax_loss",
    "log_taylor_softmax_loss",
    "mse_loss",
    "spherical_statistics",
    "windows_from_sequences",
    "z_loss",
    "z_loss_from_statistics",
]
