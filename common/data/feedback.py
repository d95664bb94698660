"""Semi-synthetic implicit feedback whose truth is known: relevance, exposure and clicks.

Model (the position-free click model of unbiased recommender learning, Saito et al., WSDM 2020):
a user clicks an item iff the item was exposed to the user (O ~ Bern(theta_ui)) and is relevant
(R ~ Bern(gamma_ui)), so Y = O * R and P(Y=1) = theta_ui * gamma_ui. An unclicked pair is therefore
either irrelevant or unexposed: the missing-not-at-random negatives of implicit feedback.

* relevance gamma = sigmoid(scale * U V^T / sqrt(rank) + offset), a random low-rank model;
* item popularity from a Zipf law over a random permutation of the items, normalised to max 1;
* exposure theta_ui = popularity_i ^ power (power 0: no bias; larger: rarer items are seen less);
* the MCAR test set: ``test_items_per_user`` items per user drawn uniformly (not by exposure), their
  relevance labels drawn from gamma, and those pairs removed from training.
The Rel-MF propensity estimate from clicks is theta_hat_i = (n_i / max_j n_j) ^ eta.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ImplicitFeedback", "estimate_item_propensity", "make_implicit_feedback", "zipf_popularity"]


@dataclass(frozen=True, eq=False)
class ImplicitFeedback:
    """Matrices are (users, items); only ``clicks`` (outside ``test_mask``) is observed by a learner."""

    relevance: np.ndarray  # gamma, P(relevant)
    exposure: np.ndarray  # theta, P(exposed)
    relevant: np.ndarray  # sampled R in {0, 1}
    exposed: np.ndarray  # sampled O in {0, 1}
    clicks: np.ndarray  # Y = O * R on training pairs, 0 on test pairs
    test_mask: np.ndarray  # MCAR test pairs
    test_relevance: np.ndarray  # R on test pairs (0 elsewhere), drawn independently of exposure
    popularity: np.ndarray  # (items,) in (0, 1]

    @property
    def shape(self) -> tuple[int, int]:
        return self.relevance.shape

    def rare_items(self, quantile: float = 0.5) -> np.ndarray:
        """Items whose popularity is at most the given quantile (the "rare items" evaluation)."""
        return self.popularity <= np.quantile(self.popularity, quantile)


def zipf_popularity(num_items: int, exponent: float, *, seed: int) -> np.ndarray:
    """popularity of the item ranked r is r^-exponent (max 1), ranks assigned to items at random."""
    if num_items < 1 or exponent < 0:
        raise ValueError("need num_items >= 1 and a Zipf exponent >= 0.")
    ranks = np.random.default_rng(seed).permutation(num_items) + 1
    return ranks.astype(float) ** -float(exponent)


def make_implicit_feedback(
    num_users: int,
    num_items: int,
    *,
    seed: int,
    rank: int = 10,
    relevance_scale: float = 3.0,
    relevance_offset: float = -1.0,
    zipf_exponent: float = 1.0,
    exposure_power: float = 1.0,
    min_exposure: float = 1e-3,
    test_items_per_user: int = 10,
) -> ImplicitFeedback:
    """Sample a semi-synthetic data set; see the module docstring for the model."""
    if num_users < 1 or num_items < 2 or rank < 1:
        raise ValueError("need num_users >= 1, num_items >= 2 and rank >= 1.")
    if not 0 <= test_items_per_user < num_items:
        raise ValueError(f"test_items_per_user must be in [0, {num_items}), got {test_items_per_user}.")
    if exposure_power < 0 or not 0 < min_exposure <= 1:
        raise ValueError("exposure_power must be >= 0 and min_exposure in (0, 1].")
    rng = np.random.default_rng(seed)
    users, items = rng.normal(size=(num_users, rank)), rng.normal(size=(num_items, rank))
    logits = relevance_scale * users @ items.T / np.sqrt(rank) + relevance_offset
    relevance = 1.0 / (1.0 + np.exp(-logits))
    popularity = zipf_popularity(num_items, zipf_exponent, seed=int(rng.integers(2**31)))
    exposure = np.broadcast_to(np.maximum(popularity**exposure_power, min_exposure), relevance.shape).copy()
    relevant = (rng.random(relevance.shape) < relevance).astype(np.int8)
    exposed = (rng.random(relevance.shape) < exposure).astype(np.int8)
    test_mask = np.zeros(relevance.shape, dtype=bool)
    for u in range(num_users):
        test_mask[u, rng.choice(num_items, size=test_items_per_user, replace=False)] = True
    clicks = np.where(test_mask, 0, exposed * relevant).astype(np.int8)
    test_relevance = np.where(test_mask, relevant, 0).astype(np.int8)
    return ImplicitFeedback(
        relevance=relevance,
        exposure=exposure,
        relevant=relevant,
        exposed=exposed,
        clicks=clicks,
        test_mask=test_mask,
        test_relevance=test_relevance,
        popularity=popularity,
    )


def estimate_item_propensity(clicks: np.ndarray, power: float = 0.5, floor: float = 1e-3) -> np.ndarray:
    """Rel-MF's popularity estimate theta_hat_i = (clicks of item i / clicks of the most clicked item)^power,
    floored so that inverse weights stay finite."""
    counts = np.asarray(clicks).sum(0).astype(float)
    if counts.max() <= 0:
        raise ValueError("no clicks at all: the propensity of items cannot be estimated.")
    return np.maximum((counts / counts.max()) ** float(power), floor)
