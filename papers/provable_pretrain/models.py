"""The two latent-variable models of the paper's instantiations, with exact risks of any fitted predictor.

Factor model (paper, Section 4: factor models with linear regression downstream): latent z ~ N(0, I_r),
x = mu + B z + e with e ~ N(0, diag(psi)), label y = beta^T z + eps with eps ~ N(0, sigma^2). Everything is
jointly Gaussian, so the squared risk of a linear predictor w^T x + b is a closed form: with
Sigma = B B^T + diag(psi), the Bayes predictor is w*^T (x - mu) with w* = Sigma^-1 B beta and the excess
risk of (w, b) is (w - w*)^T Sigma (w - w*) + (b + w^T mu)^2. No test set, so no Monte Carlo noise.

Gaussian mixture (paper, Section 5: Gaussian mixture models with classification downstream): latent cluster
z uniform on K components, x | z ~ N(u_z, I_d), label y = z with probability 1 - eta and uniform over the
other K - 1 labels otherwise. P(y | x) is known exactly, so the excess 0-1 risk of a classifier h is
E_x[max_k P(y = k | x) - P(y = h(x) | x)], averaged over a fixed sample of x (no label noise in the estimate).

The model classes, dimensions and strengths are this repository's simulation design: the paper has no
experiments (arXiv 2303.01566 reports theorems only).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.special import softmax


@dataclass(frozen=True)
class FactorModel:
    """x = mean + loadings z + noise (diagonal `noise_variances`), y = coef^T z + label_noise * N(0, 1)."""

    loadings: np.ndarray  # B, (d, r)
    noise_variances: np.ndarray  # psi, (d,)
    mean: np.ndarray  # mu, (d,)
    coef: np.ndarray  # beta, (r,)
    label_noise: float  # sigma

    @property
    def dim(self) -> int:
        return self.loadings.shape[0]

    @property
    def rank(self) -> int:
        return self.loadings.shape[1]

    @cached_property
    def covariance(self) -> np.ndarray:
        """Sigma = B B^T + diag(psi), the covariance of x."""
        return self.loadings @ self.loadings.T + np.diag(self.noise_variances)

    def sample(self, num: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`num` draws (x (num, d), y (num,))."""
        z = rng.standard_normal((num, self.rank))
        noise = rng.standard_normal((num, self.dim)) * np.sqrt(self.noise_variances)
        x = self.mean + z @ self.loadings.T + noise
        return x, z @ self.coef + self.label_noise * rng.standard_normal(num)

    def bayes_coef(self) -> np.ndarray:
        """w* = Sigma^-1 B beta: E[y | x] = w*^T (x - mu)."""
        return self._bayes_coef.copy()

    @cached_property
    def _bayes_coef(self) -> np.ndarray:
        return np.linalg.solve(self.covariance, self.loadings @ self.coef)

    def bayes_risk(self) -> float:
        """E[(y - E[y | x])^2] = |beta|^2 + sigma^2 - beta^T B^T Sigma^-1 B beta."""
        signal = self.loadings @ self.coef
        return float(self.coef @ self.coef + self.label_noise**2 - signal @ self.bayes_coef())

    def excess_risk(self, weight: np.ndarray, bias: float) -> float:
        """Squared risk of x -> weight^T x + bias minus the Bayes risk (exact)."""
        delta = weight - self._bayes_coef
        offset = bias + weight @ self.mean
        return float(delta @ self.covariance @ delta + offset**2)

    def posterior_mean_map(self) -> tuple[np.ndarray, np.ndarray]:
        """(M, c) with E[z | x] = M (x - c): the true representation (M = B^T Sigma^-1, c = mu)."""
        return np.linalg.solve(self.covariance, self.loadings).T, self.mean

    def best_linear_on(self, matrix: np.ndarray, center: np.ndarray) -> tuple[np.ndarray, float]:
        """The population-optimal predictor a^T f + b on the features f = matrix (x - center) (ERM with
        n -> infinity), returned in x-space as (weight, bias)."""
        sigma = self.covariance
        gram = matrix @ sigma @ matrix.T
        a = np.linalg.lstsq(gram, matrix @ self.loadings @ self.coef, rcond=None)[0]
        weight = matrix.T @ a
        return weight, float(-weight @ self.mean)  # E[y] = 0


def make_factor_model(
    dim: int,
    rank: int,
    strength: float,
    label_noise: float,
    noise_range: tuple[float, float],
    rng: np.random.Generator,
) -> FactorModel:
    """Loadings with orthogonal columns of squared norm `strength` (each factor's signal-to-noise ratio),
    heteroscedastic noise variances uniform on `noise_range` (so the MLE differs from PCA), a standard normal
    mean and a unit-norm coefficient vector."""
    basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0]
    noise = rng.uniform(noise_range[0], noise_range[1], dim)
    coef = rng.standard_normal(rank)
    return FactorModel(
        loadings=basis * np.sqrt(strength),
        noise_variances=noise,
        mean=rng.standard_normal(dim),
        coef=coef / np.linalg.norm(coef),
        label_noise=float(label_noise),
    )


@dataclass(frozen=True)
class MixtureModel:
    """K equally likely components N(means[k], I); the label equals the component with probability
    1 - label_noise, else it is uniform over the other labels."""

    means: np.ndarray  # (K, d)
    label_noise: float  # eta

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, num: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`num` draws (x (num, d), y (num,) int64)."""
        k = self.num_components
        z = rng.integers(0, k, num)
        x = self.means[z] + rng.standard_normal((num, self.dim))
        flip = rng.random(num) < self.label_noise
        other = (z + rng.integers(1, k, num)) % k  # uniform over the K - 1 other labels
        return x, np.where(flip, other, z).astype(np.int64)

    def posterior(self, x: np.ndarray) -> np.ndarray:
        """P(z = k | x), (num, K)."""
        logits = x @ self.means.T - 0.5 * np.sum(self.means**2, axis=1)
        return softmax(logits, axis=1)

    def label_probs(self, x: np.ndarray) -> np.ndarray:
        """P(y = k | x) = (1 - eta) P(z = k | x) + eta / (K - 1) (1 - P(z = k | x))."""
        post = self.posterior(x)
        other = self.label_noise / (self.num_components - 1)
        return (1 - self.label_noise) * post + other * (1 - post)

    def excess_risk(self, x: np.ndarray, predictions: np.ndarray, probs: np.ndarray | None = None) -> float:
        """0-1 risk of `predictions` on the points `x` minus the Bayes risk, with P(y | x) exact (`probs`:
        label_probs(x), when already computed)."""
        probs = self.label_probs(x) if probs is None else probs
        chosen = probs[np.arange(len(x)), predictions]
        return float(np.mean(probs.max(axis=1) - chosen))

    def bayes_risk(self, x: np.ndarray) -> float:
        return float(np.mean(1 - self.label_probs(x).max(axis=1)))


def make_mixture_model(
    dim: int, num_components: int, separation: float, label_noise: float, rng: np.random.Generator
) -> MixtureModel:
    """Means at `separation / sqrt(2)` along K random orthonormal directions: every pair of means is
    exactly `separation` apart (a regular simplex)."""
    if num_components > dim:
        raise ValueError(f"{num_components} orthogonal means need dim >= {num_components}, got {dim}")
    basis = np.linalg.qr(rng.standard_normal((dim, num_components)))[0]
    return MixtureModel(means=basis.T * separation / np.sqrt(2.0), label_noise=float(label_noise))
