"""The two linear classifiers the paper compares, as scikit-learn estimators.

- Generative: Gaussian naive Bayes with one diagonal variance shared by all classes. Class means and priors
  as in `sklearn.naive_bayes.GaussianNB`; the shared variance is the prior-weighted average of the per-class
  (ddof=0) variances plus an absolute `var_epsilon`, as in the official `models/gaussnb.py`
  (ML-GSAI/Revisiting-Dis-vs-Gen-Classifiers @86a0bcc, `GaussianNB.predict`). With a shared variance the
  decision rule is linear: argmax_k  log pi_k + x . (mu_k / s) - 0.5 sum_j mu_kj^2 / s_j.
- Discriminative: multinomial logistic regression, `sklearn.linear_model.LogisticRegression` with L-BFGS,
  C = 1 and max_iter = 1000 (official `get_model`, `--model lr_bgfs --C 1`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB

#: Registered method name -> classifier kind.
NAIVE_BAYES, LOGISTIC_REGRESSION = "naive_bayes", "logistic_regression"
CLASSIFIERS = (NAIVE_BAYES, LOGISTIC_REGRESSION)


class SharedVarianceGaussianNB(GaussianNB):
    """Gaussian naive Bayes whose per-feature variance is pooled over the classes (a linear classifier).

    `var_epsilon` is added to every per-class variance before pooling (an absolute amount, 1e-9 in the
    official code), unlike GaussianNB's `var_smoothing`, which scales with the largest feature variance."""

    def __init__(self, *, var_epsilon: float = 1e-9) -> None:
        super().__init__(priors=None, var_smoothing=0.0)
        self.var_epsilon = var_epsilon

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> SharedVarianceGaussianNB:
        if sample_weight is not None:
            raise ValueError("SharedVarianceGaussianNB does not support sample weights")
        super().fit(X, y)
        # Official pooling: sum_k pi_k (var_k + eps) with the empirical class frequencies pi_k
        # (models/gaussnb.py, `np.sum(self.vars_groupby * self.prior.reshape(-1, 1), axis=0)`).
        pooled = self.class_prior_ @ (self.var_ + self.var_epsilon)
        self.var_ = np.tile(pooled, (len(self.classes_), 1))
        return self

    @property
    def shared_var_(self) -> np.ndarray:
        """The pooled variance s (one value per feature)."""
        return self.var_[0]

    @property
    def coef_(self) -> np.ndarray:
        """(n_classes, n_features) weights mu_k / s of the linear decision function."""
        return self.theta_ / self.shared_var_

    @property
    def intercept_(self) -> np.ndarray:
        """(n_classes,) intercepts log pi_k - 0.5 sum_j mu_kj^2 / s_j."""
        return np.log(self.class_prior_) - 0.5 * (self.theta_**2 / self.shared_var_).sum(axis=1)

    def decision_function(self, X: Any) -> np.ndarray:
        """Class scores x . coef_k + intercept_k; they differ from the joint log-likelihood by a term that
        is the same for every class, so their argmax is the prediction."""
        return np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_


def make_classifier(kind: str, **params: Any) -> Any:
    """A fresh, unfitted estimator of `kind` (naive_bayes | logistic_regression) with `params`."""
    if kind == NAIVE_BAYES:
        return SharedVarianceGaussianNB(**params)
    if kind == LOGISTIC_REGRESSION:
        params = {"C": 1.0, "solver": "lbfgs", "max_iter": 1000, **params}
        return LogisticRegression(**params)
    raise ValueError(f"unknown classifier {kind!r}; use one of {CLASSIFIERS}")
