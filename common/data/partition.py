"""Loss-based clean/noisy partition of a training set with a two-component Gaussian mixture.

Examples with noisy labels are learned later, so early in training their loss is high: a two-component GMM
fitted to the per-example losses separates a low-loss (clean) mode from a high-loss (noisy) one, and the
posterior of the low-mean component is the probability that an example is clean.

Protocols:
  * global GMM: Li, Socher & Hoi, "DivideMix", ICLR 2020 (losses min-max normalised to [0, 1];
    ``GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4)``; clean if ``prob > tau``);
  * per-class GMM: one mixture per observed (noisy) label, for class-aware cleaners whose loss scales differ
    between classes (e.g. long-tailed or class-dependent noise, as in CPC-style class-wise partitions).

The defaults follow DivideMix's code, whose 10 EM iterations often stop before sklearn's tolerance; the
resulting ``ConvergenceWarning`` is expected and silenced. Inputs may be NumPy arrays or torch tensors; the
result has the same kind (a tensor comes back on the input's device, in float32).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

__all__ = ["clean_mask", "gmm_clean_probability", "per_class_gmm_clean_probability"]

ArrayLike = np.ndarray | torch.Tensor


def _to_numpy(values: Any, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one value per example), got shape {arr.shape}.")
    return arr


def _like_input(prob: np.ndarray, reference: Any) -> ArrayLike:
    if isinstance(reference, torch.Tensor):
        return torch.as_tensor(prob, dtype=torch.float32, device=reference.device)
    return prob


def _fit_clean_posterior(
    losses: np.ndarray, *, normalize: bool, max_iter: int, tol: float, reg_covar: float, seed: int
) -> np.ndarray:
    """Posterior of the low-mean component for one group of losses (all ones if the losses are constant)."""
    lo, hi = float(losses.min()), float(losses.max())
    # Fewer than two distinct values: nothing separates clean from noisy, so no example is flagged.
    if len(losses) < 2 or hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return np.ones(len(losses))
    x = (losses - lo) / (hi - lo) if normalize else losses
    gmm = GaussianMixture(n_components=2, max_iter=max_iter, tol=tol, reg_covar=reg_covar, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(x.reshape(-1, 1))
    return gmm.predict_proba(x.reshape(-1, 1))[:, int(np.argmin(gmm.means_.ravel()))]


def _check_fit_args(max_iter: int, tol: float, reg_covar: float, seed: int) -> None:
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}.")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}.")
    if not reg_covar >= 0:
        raise ValueError(f"reg_covar must be >= 0, got {reg_covar!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed must be an integer, got {seed!r}.")


def _check_losses(losses: Any) -> np.ndarray:
    arr = _to_numpy(losses, "losses").astype(np.float64)
    if arr.size == 0:
        raise ValueError("losses is empty; pass one loss per training example.")
    if not np.isfinite(arr).all():
        raise ValueError("losses contain NaN or infinite values; check the training run for divergence.")
    return arr


def gmm_clean_probability(
    losses: ArrayLike,
    *,
    normalize: bool = True,
    max_iter: int = 10,
    tol: float = 1e-2,
    reg_covar: float = 5e-4,
    seed: int = 0,
) -> ArrayLike:
    """DivideMix's clean probability: the posterior of the low-mean component of a two-component GMM
    fitted to all per-example ``losses`` (min-max normalised first when ``normalize``)."""
    _check_fit_args(max_iter, tol, reg_covar, seed)
    arr = _check_losses(losses)
    prob = _fit_clean_posterior(
        arr, normalize=normalize, max_iter=max_iter, tol=tol, reg_covar=reg_covar, seed=int(seed)
    )
    return _like_input(prob, losses)


def per_class_gmm_clean_probability(
    losses: ArrayLike,
    labels: ArrayLike,
    num_classes: int | None = None,
    *,
    normalize: bool = True,
    max_iter: int = 10,
    tol: float = 1e-2,
    reg_covar: float = 5e-4,
    seed: int = 0,
) -> ArrayLike:
    """Clean probability from one GMM per observed label: each class's losses are normalised and split
    on their own, so a class whose clean examples have high loss is not flagged wholesale. A class with
    fewer than two examples or constant losses gets probability 1 (nothing to separate)."""
    _check_fit_args(max_iter, tol, reg_covar, seed)
    arr = _check_losses(losses)
    lab = _to_numpy(labels, "labels")
    if lab.shape != arr.shape:
        raise ValueError(f"labels has shape {lab.shape}, losses has {arr.shape}; pass one label per loss.")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {lab.dtype}.")
    if (lab < 0).any():
        raise ValueError("labels must be >= 0.")
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}.")
        if (lab >= num_classes).any():
            raise ValueError(f"labels must be < num_classes={num_classes}, got {int(lab.max())}.")
    prob = np.ones(len(arr))
    for cls in np.unique(lab):
        idx = np.flatnonzero(lab == cls)
        prob[idx] = _fit_clean_posterior(
            arr[idx], normalize=normalize, max_iter=max_iter, tol=tol, reg_covar=reg_covar, seed=int(seed)
        )
    return _like_input(prob, losses)


def clean_mask(prob: ArrayLike, threshold: float = 0.5) -> ArrayLike:
    """Examples treated as clean: ``prob > threshold`` (DivideMix's ``p_threshold``, 0.5 by default)."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}.")
    if isinstance(prob, torch.Tensor):
        if prob.ndim != 1:
            raise ValueError(f"prob must be one-dimensional, got shape {tuple(prob.shape)}.")
        return prob > threshold
    return _to_numpy(prob, "prob") > threshold
