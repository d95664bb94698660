"""Weak supervision built from fully labelled data, keeping the truth for evaluation: multi-label PU
masks, bags with label proportions, and domains under latent label shift.

All functions are deterministic given ``seed`` and never modify their inputs.

Protocols:
  * multi-label masks: "single positive" and "partial positive" annotation (Cole et al., CVPR 2021;
    Positive Label Is All You Need, arXiv 2306.16016): every negative unknown, a fraction of positives kept;
  * bags: random equal-size bags of learning from label proportions (Quadrianto et al., JMLR 2009; DLLP,
    Ardehaly & Culotta 2017), each with its class proportions;
  * latent label shift: Roberts et al., NeurIPS 2022 (DDFA): p(x|y) shared by every domain, p(y|d) drawn
    from Dirichlet(alpha), optionally rejected until the domain-by-class matrix is well conditioned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "UNKNOWN",
    "Bags",
    "dirichlet_domain_priors",
    "make_bags",
    "mask_multilabel",
    "sample_domains",
]

#: Entry of an observed multi-label matrix whose label was not annotated.
UNKNOWN = -1


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _check_fraction(value: float, name: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}.")
    return value


def mask_multilabel(
    targets: np.ndarray,
    positive_keep: float,
    *,
    seed: int,
    negative_keep: float = 0.0,
    negative_flip: float = 0.0,
    single_positive: bool = False,
) -> np.ndarray:
    """Observed labels (N, C) in {1, 0, UNKNOWN} from true 0/1 ``targets``.

    Exactly ``round(positive_keep * P)`` of the P true positives stay observed as 1 (uniformly chosen), or,
    with ``single_positive``, one uniformly chosen positive per example that has any. Exactly
    ``round(negative_keep * N0)`` true negatives stay observed as 0; of the true negatives that remain,
    ``round(negative_flip * N0)`` are observed as 1 (annotation noise). Everything else is UNKNOWN.
    """
    y = np.asarray(targets)
    if y.ndim != 2 or not np.isin(y, (0, 1)).all():
        raise ValueError(f"targets must be a 0/1 matrix (examples, classes), got shape {y.shape}.")
    keep_pos = _check_fraction(positive_keep, "positive_keep")
    keep_neg = _check_fraction(negative_keep, "negative_keep")
    flip = _check_fraction(negative_flip, "negative_flip")
    if keep_neg + flip > 1.0:
        raise ValueError(f"negative_keep + negative_flip must be <= 1, got {keep_neg} + {flip}.")
    rng = np.random.default_rng(seed)
    observed = np.full(y.shape, UNKNOWN, dtype=np.int8)
    pos_rows, pos_cols = np.nonzero(y == 1)
    if single_positive:
        order = rng.permutation(pos_rows.size)
        _, first = np.unique(pos_rows[order], return_index=True)
        chosen = order[first]
    else:
        chosen = rng.choice(pos_rows.size, size=_round_half_up(keep_pos * pos_rows.size), replace=False)
    observed[pos_rows[chosen], pos_cols[chosen]] = 1
    neg_rows, neg_cols = np.nonzero(y == 0)
    order = rng.permutation(neg_rows.size)
    n_keep = _round_half_up(keep_neg * neg_rows.size)
    n_flip = _round_half_up(flip * neg_rows.size)
    kept, flipped = order[:n_keep], order[n_keep : n_keep + n_flip]
    observed[neg_rows[kept], neg_cols[kept]] = 0
    observed[neg_rows[flipped], neg_cols[flipped]] = 1
    return observed


@dataclass(frozen=True, eq=False)
class Bags:
    """Examples grouped into bags; only ``proportions`` (and sizes) are observed by an LLP learner."""

    bag_of: np.ndarray  # (N,) bag id of each example, -1 for examples left out
    proportions: np.ndarray  # (B, C) class proportions of each bag
    sizes: np.ndarray  # (B,) bag sizes

    @property
    def num_bags(self) -> int:
        return int(self.sizes.size)

    def members(self, bag: int) -> np.ndarray:
        return np.flatnonzero(self.bag_of == bag)


def make_bags(
    labels: np.ndarray, bag_size: int, *, seed: int, num_classes: int | None = None, drop_last: bool = True
) -> Bags:
    """Random bags of ``bag_size`` examples (a uniformly shuffled partition); the last, smaller bag is
    dropped (its examples get bag -1) unless ``drop_last`` is False."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0 or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ValueError("labels must be a non-empty 1-D array of non-negative integers.")
    if (
        isinstance(bag_size, bool)
        or not isinstance(bag_size, int | np.integer)
        or not 1 <= bag_size <= y.size
    ):
        raise ValueError(f"bag_size must be an integer in [1, {y.size}], got {bag_size!r}.")
    k = int(num_classes if num_classes is not None else y.max() + 1)
    if y.max() >= k:
        raise ValueError(f"labels go up to {int(y.max())} but num_classes is {k}.")
    order = np.random.default_rng(seed).permutation(y.size)
    num_full = y.size // bag_size
    num_bags = num_full if drop_last or y.size % bag_size == 0 else num_full + 1
    bag_of = np.full(y.size, -1, dtype=np.int64)
    bag_of[order[: min(y.size, num_bags * bag_size)]] = (
        np.arange(min(y.size, num_bags * bag_size)) // bag_size
    )
    in_bag = bag_of >= 0
    counts = np.zeros((num_bags, k))
    np.add.at(counts, (bag_of[in_bag], y[in_bag]), 1)
    sizes = counts.sum(1)
    return Bags(bag_of=bag_of, proportions=counts / sizes[:, None], sizes=sizes.astype(np.int64))


def dirichlet_domain_priors(
    num_domains: int,
    num_classes: int,
    alpha: float,
    *,
    seed: int,
    max_condition_number: float | None = None,
    max_tries: int = 1000,
) -> np.ndarray:
    """p(y|d) as a (D, C) matrix, rows drawn from a symmetric Dirichlet(alpha) (small alpha, strong shift).

    With ``max_condition_number``, draws are rejected until the matrix's condition number (2-norm) is
    at most that value, which identifiability of the latent classes needs (D >= C)."""
    if num_domains < 1 or num_classes < 2 or alpha <= 0:
        raise ValueError("need num_domains >= 1, num_classes >= 2 and alpha > 0.")
    if max_condition_number is not None and num_domains < num_classes:
        raise ValueError("a condition-number bound needs at least as many domains as classes.")
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        priors = rng.dirichlet(np.full(num_classes, float(alpha)), size=num_domains)
        if max_condition_number is None or np.linalg.cond(priors) <= max_condition_number:
            return priors
    raise ValueError(
        f"no Dirichlet({alpha}) draw of a {num_domains}x{num_classes} prior matrix had condition number <= "
        f"{max_condition_number} in {max_tries} tries; raise the bound or alpha, or add domains."
    )


def sample_domains(
    labels: np.ndarray, priors: np.ndarray, samples_per_domain: int, *, seed: int, replace: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(indices, domains): ``samples_per_domain`` examples per domain whose labels follow that domain's row of
    ``priors`` (counts apportioned by largest remainder), drawn without replacement across all domains."""
    y = np.asarray(labels)
    p = np.asarray(priors, dtype=float)
    if p.ndim != 2 or not np.allclose(p.sum(1), 1.0) or (p < 0).any():
        raise ValueError("priors must be a (domains, classes) matrix of probability rows.")
    if y.ndim != 1 or y.size == 0 or y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must be 1-D integers in [0, {p.shape[1]}).")
    rng = np.random.default_rng(seed)
    raw = p * samples_per_domain
    counts = np.floor(raw).astype(np.int64)
    for d in range(p.shape[0]):  # largest remainder so each domain has exactly samples_per_domain
        short = samples_per_domain - counts[d].sum()
        counts[d, np.argsort(-(raw[d] - counts[d]), kind="stable")[:short]] += 1
    pools = {c: list(rng.permutation(np.flatnonzero(y == c))) for c in range(p.shape[1])}
    indices, domains = [], []
    for d in range(p.shape[0]):
        for c in range(p.shape[1]):
            n = int(counts[d, c])
            if n == 0:
                continue
            if replace:
                chosen = rng.choice(np.flatnonzero(y == c), size=n, replace=True)
            else:
                if len(pools[c]) < n:
                    raise ValueError(
                        f"class {c} has too few examples for the domains' demand (needs more than "
                        f"{int((y == c).sum())}); lower samples_per_domain or pass replace=True."
                    )
                chosen, pools[c] = np.asarray(pools[c][:n]), pools[c][n:]
            indices.append(chosen)
            domains.append(np.full(n, d))
    return np.concatenate(indices), np.concatenate(domains)
