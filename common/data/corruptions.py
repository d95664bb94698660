"""Seeded label corruptions shared by every paper that needs them.

Every function takes integer label arrays, never modifies its inputs, returns new arrays (callers keep
the clean labels for analysis) and is deterministic given ``seed`` (``np.random.default_rng(seed)``).
Counts that the protocols state as a rate times a size are realised *exactly*, with round-half-up
(``floor(x + 0.5)``, not Python's banker's rounding), so tests can check them to the example.

Protocols:
  * symmetric / pair (asymmetric) noise: Patrini et al. CVPR 2017; Han et al. (Co-teaching) NeurIPS 2018;
    Liu et al. (ELR) NeurIPS 2020 for the CIFAR-10 class map;
  * instance-dependent noise: Xia et al. NeurIPS 2020, "Part-dependent label noise", Alg. 2;
  * noise matrices from a trace: Northcutt et al. (Confident Learning) JAIR 2021;
  * frequency-proportional noise on long-tailed data: Wei et al. (RoLT) 2021, `noise_mode='imb'`;
  * long tail: Cui et al. CVPR 2019; Cao et al. (LDAM) NeurIPS 2019;
  * PU masking: the SCAR assumption (Elkan & Noto KDD 2008; Kiryo et al. nnPU NeurIPS 2017);
  * class mismatch in semi-supervised splits: Oliver et al. NeurIPS 2018.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CIFAR10_ASYMMETRIC_MAP",
    "PUSplit",
    "class_counts_long_tailed",
    "inject_class_conditional_noise",
    "inject_frequency_proportional_noise",
    "inject_instance_noise",
    "inject_pair_noise",
    "inject_symmetric_noise",
    "make_long_tailed",
    "mask_positive_unlabeled",
    "noise_matrix_from_trace",
    "realised_transition_matrix",
    "split_labeled_unlabeled",
]

#: CIFAR-10 asymmetric noise (Patrini et al. 2017, as used by ELR): truck->automobile, bird->airplane,
#: deer->horse, cat<->dog; entry i is the target of class i, other classes map to themselves.
CIFAR10_ASYMMETRIC_MAP: tuple[int, ...] = (0, 1, 0, 5, 7, 3, 6, 7, 8, 1)


# --------------------------------------------------------------------------------------------- helpers
def _round_half_up(x: float) -> int:
    """Round half up; the 1e-9 slack absorbs float error such as 0.3 * 10 = 3.0000000000000004."""
    return int(math.floor(x + 0.5 + 1e-9))


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _check_num_classes(num_classes: int, minimum: int = 2) -> int:
    if not _is_int(num_classes) or num_classes < minimum:
        raise ValueError(f"num_classes must be an integer >= {minimum}, got {num_classes!r}.")
    return int(num_classes)


def _check_labels(labels: np.ndarray, num_classes: int | None, name: str = "labels") -> np.ndarray:
    """Return ``labels`` as a 1-D integer array (no copy) after checking range against ``num_classes``."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_):
        raise ValueError(
            f"{name} must be a 1-D integer array, got shape {arr.shape} and dtype {arr.dtype}; "
            "pass class indices, e.g. np.asarray(y, dtype=np.int64)."
        )
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must be >= 0, found {arr.min()}; map classes to 0..K-1 first.")
    if num_classes is not None and arr.size and arr.max() >= num_classes:
        raise ValueError(
            f"{name} contain class {arr.max()} but num_classes={num_classes}; "
            "labels must lie in [0, num_classes)."
        )
    return arr


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    """The generator of a corruption: an integer seed (reproducible by construction) or a Generator the
    caller owns; None would draw fresh OS entropy, so it is refused."""
    if isinstance(seed, np.random.Generator):
        return seed
    if not _is_int(seed):
        raise ValueError(
            f"seed must be an integer (or a numpy Generator), got {seed!r}; a corruption without a seed "
            "cannot be reproduced."
        )
    return np.random.default_rng(seed)


def _check_rate(rate: float, name: str, *, closed_right: bool = False) -> float:
    if not isinstance(rate, int | float | np.integer | np.floating) or isinstance(rate, bool | np.bool_):
        raise ValueError(f"{name} must be a number, got {rate!r}.")
    rate = float(rate)
    ok = 0.0 <= rate <= 1.0 if closed_right else 0.0 <= rate < 1.0
    if not ok:
        interval = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"{name} must lie in {interval}, got {rate}.")
    return rate


def _apportion(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total``, each floor or ceil of ``weights * total`` (largest remainder)."""
    raw = weights * total
    counts = np.floor(raw + 1e-9).astype(np.int64)
    short = total - int(counts.sum())
    if short > 0:
        order = np.argsort(-(raw - counts), kind="stable")
        counts[order[:short]] += 1
    elif short < 0:  # only possible through the float slack; take back from the largest overshoots
        order = np.argsort(raw - counts, kind="stable")
        counts[order[:-short]] -= 1
    return counts


# ------------------------------------------------------------------------------------------- noise
def inject_symmetric_noise(
    labels: np.ndarray,
    noise_rate: float,
    num_classes: int,
    *,
    seed: int,
    include_true_class: bool = False,
) -> np.ndarray:
    """Symmetric (uniform) label noise (Patrini et al. 2017; Han et al. 2018).

    Exactly ``round(noise_rate * n)`` examples, chosen uniformly, get a label drawn uniformly from the
    *other* classes, so the realised noise rate is exactly that count over n. With
    ``include_true_class=True`` the new label is drawn from *all* classes (the common CIFAR code, where a
    "flip" may keep the label): the realised rate is then only about ``noise_rate * (K - 1) / K``.
    """
    k = _check_num_classes(num_classes)
    y = _check_labels(labels, k)
    rate = _check_rate(noise_rate, "noise_rate")
    rng = _rng(seed)
    noisy = y.copy()
    m = _round_half_up(rate * y.size)
    idx = rng.choice(y.size, size=m, replace=False)
    if include_true_class:
        noisy[idx] = rng.integers(0, k, size=m)
    else:
        noisy[idx] = (y[idx] + rng.integers(1, k, size=m)) % k
    return noisy


def inject_frequency_proportional_noise(
    labels: np.ndarray, noise_rate: float, num_classes: int, *, seed: int
) -> np.ndarray:
    """Label noise that favours frequent classes, for long-tailed data (RoLT, Wei et al. 2021).

    Exactly ``round(noise_rate * n)`` uniformly chosen examples get a label ``j != y`` drawn with
    probability proportional to ``n_j``, the size of class ``j`` in ``labels``: P(y~ = j | y = k) is
    proportional to n_j for j != k, so the head classes receive most flips. Examples of a class that is the
    only populated one keep their label (there is nowhere to flip to).
    """
    k = _check_num_classes(num_classes)
    y = _check_labels(labels, k)
    rate = _check_rate(noise_rate, "noise_rate")
    counts = np.bincount(y, minlength=k).astype(np.float64)
    rng = _rng(seed)
    noisy = y.copy()
    flipped = rng.choice(y.size, size=_round_half_up(rate * y.size), replace=False)
    for source in np.unique(y[flipped]):
        members = flipped[y[flipped] == source]
        weights = counts.copy()
        weights[source] = 0.0
        if weights.sum() > 0:
            noisy[members] = rng.choice(k, size=members.size, p=weights / weights.sum())
    return noisy


def _resolve_mapping(mapping: Mapping[int, int] | Sequence[int] | None, k: int) -> np.ndarray:
    if mapping is None:
        return (np.arange(k) + 1) % k
    if isinstance(mapping, Mapping):
        target = np.arange(k)
        for src, dst in mapping.items():
            if not (0 <= int(src) < k and 0 <= int(dst) < k):
                raise ValueError(
                    f"mapping entry {src}->{dst} is out of range; keys and values must lie in [0, {k})."
                )
            target[int(src)] = int(dst)
        return target
    target = np.asarray(mapping)
    if target.shape != (k,) or not np.issubdtype(target.dtype, np.integer):
        raise ValueError(
            f"mapping must be a dict or a length-{k} integer sequence (entry i = target of class i), "
            f"got shape {target.shape}."
        )
    if target.min() < 0 or target.max() >= k:
        raise ValueError(f"mapping targets must lie in [0, {k}), got {target.tolist()}.")
    return target.astype(np.int64)


def inject_pair_noise(
    labels: np.ndarray,
    noise_rate: float,
    num_classes: int,
    *,
    seed: int,
    mapping: Mapping[int, int] | Sequence[int] | None = None,
) -> np.ndarray:
    """Pair / asymmetric label noise (Han et al. 2018 "pair flipping"; Patrini et al. 2017).

    For each class i, exactly ``round(noise_rate * n_i)`` uniformly chosen examples of class i get label
    ``mapping[i]`` (default ``(i + 1) % K``). ``mapping`` is a dict (missing keys map to themselves) or a
    length-K sequence; classes mapped to themselves stay clean. Use ``CIFAR10_ASYMMETRIC_MAP`` for the
    CIFAR-10 protocol of ELR (Liu et al. 2020).
    """
    k = _check_num_classes(num_classes)
    y = _check_labels(labels, k)
    rate = _check_rate(noise_rate, "noise_rate")
    target = _resolve_mapping(mapping, k)
    rng = _rng(seed)
    noisy = y.copy()
    for i in range(k):
        if target[i] == i:
            continue
        members = np.flatnonzero(y == i)
        m = _round_half_up(rate * members.size)
        noisy[rng.choice(members, size=m, replace=False)] = target[i]
    return noisy


def inject_instance_noise(
    features: np.ndarray,
    labels: np.ndarray,
    noise_rate: float,
    num_classes: int,
    *,
    seed: int,
) -> np.ndarray:
    """Instance-dependent label noise (Xia et al. NeurIPS 2020, "Part-dependent label noise", Alg. 2).

    Each example gets a flip rate ``q_i ~ N(noise_rate, 0.1^2)`` truncated to [0, 1]; one standard-normal
    projection ``W[c]`` (d x K) per true class c (as in the authors' code) scores the classes by
    ``x_i @ W[y_i]``, the true class is masked out, and with probability ``q_i`` the label is replaced by a
    class drawn from the softmax of the scores. Features are used as given (flattened, not rescaled).
    The realised noise rate is random, about ``noise_rate`` (a little more near 0 from the truncation).
    """
    k = _check_num_classes(num_classes)
    y = _check_labels(labels, k)
    rate = _check_rate(noise_rate, "noise_rate")
    x = np.asarray(features, dtype=np.float64)
    if x.ndim < 1 or x.shape[0] != y.size or not np.all(np.isfinite(x)):
        raise ValueError(
            f"features must be a finite array with one row per label ({y.size}), got shape {x.shape}."
        )
    x = x.reshape(y.size, -1)
    rng = _rng(seed)
    # Truncated normal by rejection: redraw the values outside [0, 1].
    q = rng.normal(rate, 0.1, size=y.size)
    bad = (q < 0) | (q > 1)
    while bad.any():
        q[bad] = rng.normal(rate, 0.1, size=int(bad.sum()))
        bad = (q < 0) | (q > 1)
    w = rng.standard_normal((k, x.shape[1], k))
    scores = np.zeros((y.size, k))
    for c in range(k):
        scores[y == c] = x[y == c] @ w[c]
    scores[np.arange(y.size), y] = -np.inf
    scores -= scores.max(axis=1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=1, keepdims=True)
    flip = rng.random(y.size) < q
    # Inverse-CDF draw of the new class from each row of probs.
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(y.size)[:, None] * cdf[:, -1:]
    new = np.minimum((u >= cdf).sum(axis=1), k - 1)
    new = np.where(probs[np.arange(y.size), new] > 0, new, np.argmax(probs, axis=1))  # never the true class
    noisy = y.copy()
    noisy[flip] = new[flip]
    return noisy


# -------------------------------------------------------------------------- class-conditional noise
def _values_in_unit_interval_summing_to(n: int, total: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` random values in (0, 1) summing to ``total`` (0 < total < n).

    Random walk on that polytope from its centre: each step moves a uniformly random feasible amount
    between two coordinates (a Gibbs sampler of the uniform distribution); the sum never changes.
    """
    v = np.full(n, total / n)
    if n == 1:
        return v
    steps = 30 * n
    pairs = rng.integers(0, n, size=(steps, 2))
    fractions = rng.random(steps)
    for (i, j), f in zip(pairs.tolist(), fractions.tolist(), strict=True):
        if i == j:
            continue
        lo = -min(v[i], 1.0 - v[j])  # v[i] += delta, v[j] -= delta, both stay in [0, 1]
        hi = min(1.0 - v[i], v[j])
        delta = lo + f * (hi - lo)
        v[i] += delta
        v[j] -= delta
    slack = int(np.argmax(np.minimum(v, 1.0 - v)))
    v[slack] += total - v.sum()  # remove accumulated float residue so the sum is exact to rounding
    return v


def _is_learnable(noise_matrix: np.ndarray, py: np.ndarray) -> bool:
    """Confident Learning's condition: for every class i, P(noisy=i) < P(noisy=i | true=i)."""
    p_noisy = noise_matrix @ py
    return bool(np.all(p_noisy < np.diag(noise_matrix)))


def noise_matrix_from_trace(
    num_classes: int,
    trace: float,
    *,
    frac_zero_noise_rates: float = 0.0,
    seed: int,
    py: np.ndarray | Sequence[float] | None = None,
    max_iter: int = 10_000,
) -> np.ndarray:
    """Random column-stochastic noise matrix ``M[i, j] = P(noisy=i | true=j)`` (Northcutt et al. JAIR 2021).

    Exactly: ``trace(M) == trace`` (to float rounding), ``round(frac_zero_noise_rates * K * (K - 1))``
    off-diagonal entries are 0 and the rest are > 0, every diagonal entry is > 0 and columns sum to 1.
    Many zeros force some columns to be noise-free (diagonal 1): with Z zeros, ``max(0, Z - K(K-2))`` such
    columns, which needs ``trace`` above that number. Learnability is enforced as Confident Learning defines
    it (cleanlab's ``noise_matrix_is_valid``): for every class i, ``P(noisy=i) = (M @ py)[i] < M[i, i]``,
    i.e. ``py[i] * P(noisy=i) < P(noisy=i, true=i)``, under the prior ``py`` (default uniform); candidates
    are redrawn until valid (``max_iter`` tries, then ValueError). This needs ``1 < trace < K``.
    """
    k = _check_num_classes(num_classes)
    trace = float(trace)
    if not 1.0 < trace < k:
        raise ValueError(
            f"trace must lie in (1, num_classes={k}): trace <= 1 is not learnable and trace = K is "
            f"noise-free; got {trace}."
        )
    frac = _check_rate(frac_zero_noise_rates, "frac_zero_noise_rates", closed_right=True)
    if py is None:
        prior = np.full(k, 1.0 / k)
    else:
        prior = np.asarray(py, dtype=np.float64)
        if prior.shape != (k,) or np.any(prior < 0) or not np.isclose(prior.sum(), 1.0):
            raise ValueError(f"py must be a length-{k} non-negative vector summing to 1, got {prior}.")
    n_zero = _round_half_up(frac * k * (k - 1))
    n_clean_cols = max(0, n_zero - k * (k - 2))
    if n_clean_cols >= trace:
        raise ValueError(
            f"frac_zero_noise_rates={frac} needs {n_clean_cols} noise-free columns (diagonal 1), so trace "
            f"must exceed {n_clean_cols}; lower frac_zero_noise_rates or raise trace (got {trace})."
        )
    rng = _rng(seed)
    for _ in range(max(1, int(max_iter))):
        m = np.zeros((k, k))
        clean = rng.choice(k, size=n_clean_cols, replace=False)
        noisy_cols = np.setdiff1d(np.arange(k), clean)
        m[clean, clean] = 1.0
        m[noisy_cols, noisy_cols] = _values_in_unit_interval_summing_to(
            noisy_cols.size, trace - n_clean_cols, rng
        )
        # Spread the remaining zeros over the noisy columns, at most K - 2 per column (one slot each).
        slots = np.repeat(noisy_cols, k - 2)
        zeros_per_col = np.bincount(
            rng.choice(slots, size=n_zero - n_clean_cols * (k - 1), replace=False), minlength=k
        )
        # Off-diagonal mass goes preferentially to rows with spare capacity d_i * (1 - py_i), which makes
        # a learnable draw far likelier at low traces than uniform Dirichlet columns.
        capacity = np.diag(m) * (1.0 - prior) + 1e-12
        for j in noisy_cols:
            rows = np.delete(np.arange(k), j)
            keep = rng.choice(rows, size=k - 1 - zeros_per_col[j], replace=False)
            weights = capacity[keep] * rng.dirichlet(np.ones(keep.size))
            m[keep, j] = (1.0 - m[j, j]) * weights / weights.sum()
        exact_zeros = np.count_nonzero(m[~np.eye(k, dtype=bool)]) == k * (k - 1) - n_zero
        if exact_zeros and np.all(np.diag(m) > 0) and _is_learnable(m, prior):
            return m
    raise ValueError(
        f"no learnable noise matrix found in {max_iter} tries for trace={trace}, py={prior}; "
        "raise trace, lower frac_zero_noise_rates or raise max_iter."
    )


def inject_class_conditional_noise(labels: np.ndarray, noise_matrix: np.ndarray, *, seed: int) -> np.ndarray:
    """Class-conditional noise with exact counts (Confident Learning, Northcutt et al. JAIR 2021).

    ``noise_matrix[i, j] = P(noisy=i | true=j)`` (columns sum to 1). For every true class j with n_j
    examples, ``noise_matrix[:, j] * n_j`` is apportioned to integers summing to n_j (each the floor or the
    ceiling, largest remainders first; exactly ``noise_matrix[i, j] * n_j`` when that is an integer), and
    that many uniformly chosen examples of class j get label i.
    """
    m = np.asarray(noise_matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise ValueError(f"noise_matrix must be a square K x K array with K >= 2, got shape {m.shape}.")
    if np.any(m < 0) or not np.allclose(m.sum(axis=0), 1.0, atol=1e-6):
        raise ValueError(
            "noise_matrix must be non-negative with columns summing to 1 (M[i, j] = P(noisy=i | true=j)); "
            "transpose a row-stochastic matrix first."
        )
    k = m.shape[0]
    y = _check_labels(labels, k)
    rng = _rng(seed)
    noisy = y.copy()
    for j in range(k):
        members = rng.permutation(np.flatnonzero(y == j))
        counts = _apportion(m[:, j], members.size)
        noisy[members] = np.repeat(np.arange(k), counts)
    return noisy


def realised_transition_matrix(clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    """Row-stochastic ``T[i, j] = P(noisy=j | clean=i)`` from label pairs (rows of absent classes are 0)."""
    k = _check_num_classes(num_classes, minimum=1)
    c = _check_labels(clean, k, "clean")
    n = _check_labels(noisy, k, "noisy")
    if c.shape != n.shape:
        raise ValueError(f"clean and noisy must have the same length, got {c.size} and {n.size}.")
    counts = np.zeros((k, k))
    np.add.at(counts, (c, n), 1.0)
    rows = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)


# -------------------------------------------------------------------------------------- long tail
def class_counts_long_tailed(n_max: int, num_classes: int, imbalance_ratio: float) -> list[int]:
    """Exponential profile of Cui et al. 2019 / Cao et al. (LDAM) 2019: class k has
    ``floor(n_max * imbalance_ratio ** (-k / (K - 1)))`` examples; class 0 is the head.
    """
    k = _check_num_classes(num_classes, minimum=1)
    if not _is_int(n_max) or n_max < 1:
        raise ValueError(f"n_max must be a positive integer, got {n_max!r}.")
    ratio = float(imbalance_ratio)
    if not ratio >= 1.0:
        raise ValueError(f"imbalance_ratio must be >= 1 (head / tail size), got {imbalance_ratio}.")
    if k == 1:
        return [int(n_max)]
    counts = [int(math.floor(n_max * ratio ** (-c / (k - 1)) + 1e-9)) for c in range(k)]
    if counts[-1] < 1:
        raise ValueError(
            f"the tail class would be empty (n_max={n_max}, imbalance_ratio={ratio}); "
            "lower imbalance_ratio or raise n_max."
        )
    return counts


def make_long_tailed(
    labels: np.ndarray,
    imbalance_ratio: float,
    *,
    seed: int,
    num_classes: int | None = None,
    max_per_class: int | None = None,
) -> np.ndarray:
    """Sorted indices of a long-tailed subset (Cui et al. 2019; Cao et al. LDAM 2019).

    Class k keeps ``class_counts_long_tailed(n_max, K, imbalance_ratio)[k]`` uniformly chosen examples,
    where ``n_max = max_per_class`` or, by default, the smallest class count (so every class can supply
    its quota from a balanced set). K is ``num_classes`` or ``labels.max() + 1``.
    """
    y = _check_labels(labels, num_classes)
    if y.size == 0:
        raise ValueError("labels is empty; make_long_tailed needs at least one example per class.")
    k = _check_num_classes(num_classes, minimum=1) if num_classes is not None else int(y.max()) + 1
    available = np.bincount(y, minlength=k)
    n_max = int(available.min()) if max_per_class is None else max_per_class
    if n_max < 1:
        raise ValueError(
            f"class {int(np.argmin(available))} has no examples; pass num_classes matching the labels."
        )
    targets = class_counts_long_tailed(n_max, k, imbalance_ratio)
    rng = _rng(seed)
    kept = []
    for c in range(k):
        if available[c] < targets[c]:
            raise ValueError(
                f"class {c} has {available[c]} examples but the long-tail profile needs {targets[c]}; "
                "lower max_per_class."
            )
        kept.append(rng.choice(np.flatnonzero(y == c), size=targets[c], replace=False))
    return np.sort(np.concatenate(kept))


# ------------------------------------------------------------------------------------- PU masking
@dataclass(frozen=True, eq=False)
class PUSplit:
    """A positive-unlabeled view of a labeled set; arrays are aligned with ``indices``."""

    indices: np.ndarray  # kept example indices into the original labels (sorted)
    is_positive: np.ndarray  # true binary labels of the kept examples (for analysis only)
    is_labeled: np.ndarray  # observed: True for labeled positives; negatives are never labeled
    class_prior: float  # realised P(y=1) among the unlabeled kept examples


def mask_positive_unlabeled(
    labels: np.ndarray,
    positive_classes: int | Iterable[int],
    labeled_fraction: float,
    *,
    seed: int,
    class_prior: float | None = None,
) -> PUSplit:
    """PU data under SCAR (Elkan & Noto 2008; Kiryo et al. nnPU 2017, case-control by subsampling).

    Examples whose class is in ``positive_classes`` are positive. Exactly ``round(labeled_fraction * P)``
    positives, chosen uniformly, are labeled; the other positives and all negatives are unlabeled. With
    ``class_prior``, the unlabeled positives *or* negatives (whichever is in excess, dropping the fewest
    examples) are subsampled so that the unlabeled prior equals ``class_prior`` up to rounding of one example.
    """
    y = _check_labels(labels, None)
    pos_set = [positive_classes] if isinstance(positive_classes, int | np.integer) else list(positive_classes)
    if not pos_set:
        raise ValueError("positive_classes is empty; name at least one class as positive.")
    is_pos = np.isin(y, np.asarray(pos_set, dtype=np.int64))
    if not is_pos.any() or is_pos.all():
        raise ValueError(
            f"positive_classes={pos_set} give {int(is_pos.sum())} positives of {y.size}; "
            "both positives and negatives must be present."
        )
    lf = float(labeled_fraction)
    if not 0.0 < lf <= 1.0:
        raise ValueError(f"labeled_fraction must lie in (0, 1], got {labeled_fraction}.")
    rng = _rng(seed)
    pos = rng.permutation(np.flatnonzero(is_pos))
    neg = np.flatnonzero(~is_pos)
    n_lab = _round_half_up(lf * pos.size)
    labeled, unl_pos = pos[:n_lab], pos[n_lab:]
    if class_prior is not None:
        prior = _check_rate(class_prior, "class_prior")
        if prior > 0 and unl_pos.size == 0:
            raise ValueError(
                f"class_prior={prior} > 0 but no positive is left unlabeled; lower labeled_fraction."
            )
        current = unl_pos.size / (unl_pos.size + neg.size)
        if current > prior:  # too many unlabeled positives: keep all negatives
            n_keep = min(unl_pos.size, _round_half_up(prior * neg.size / (1.0 - prior)))
            unl_pos = unl_pos[:n_keep]
        elif current < prior:  # too many negatives: keep all unlabeled positives
            n_keep = min(neg.size, _round_half_up(unl_pos.size * (1.0 - prior) / prior))
            neg = rng.choice(neg, size=n_keep, replace=False)
    indices = np.concatenate([labeled, unl_pos, neg])
    lab_flag = np.concatenate([np.ones(labeled.size, bool), np.zeros(unl_pos.size + neg.size, bool)])
    order = np.argsort(indices, kind="stable")
    indices, lab_flag = indices[order], lab_flag[order]
    positive = is_pos[indices]
    n_unl = int((~lab_flag).sum())
    realised = float(positive[~lab_flag].sum() / n_unl) if n_unl else 0.0
    return PUSplit(indices=indices, is_positive=positive, is_labeled=lab_flag, class_prior=realised)


# ----------------------------------------------------------------------- semi-supervised splits
def split_labeled_unlabeled(
    labels: np.ndarray,
    labels_per_class: int,
    *,
    seed: int,
    labeled_classes: Iterable[int] | None = None,
    mismatch_ratio: float = 0.0,
    num_unlabeled: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, disjoint (labeled, unlabeled) indices for semi-supervised learning (Oliver et al. 2018).

    ``labels_per_class`` uniformly chosen examples of every class in ``labeled_classes`` (default: every
    class present) are labeled. The unlabeled set is drawn from the rest so that a fraction
    ``mismatch_ratio`` of it (exact up to rounding) comes from classes outside ``labeled_classes``; its size
    is ``num_unlabeled`` if given, else the largest size the pools allow. With the defaults (all classes,
    ratio 0) the unlabeled set is simply every example not labeled.
    """
    y = _check_labels(labels, None)
    if not _is_int(labels_per_class) or labels_per_class < 1:
        raise ValueError(f"labels_per_class must be a positive integer, got {labels_per_class}.")
    present = np.unique(y)
    lab_classes = present if labeled_classes is None else np.unique(np.asarray(list(labeled_classes)))
    missing = np.setdiff1d(lab_classes, present)
    if lab_classes.size == 0 or missing.size:
        raise ValueError(
            f"labeled_classes must be a non-empty subset of the classes present in labels; "
            f"absent: {missing.tolist()}."
        )
    ratio = _check_rate(mismatch_ratio, "mismatch_ratio", closed_right=True)
    rng = _rng(seed)
    labeled = []
    for c in lab_classes:
        members = np.flatnonzero(y == c)
        if members.size < labels_per_class:
            raise ValueError(
                f"class {c} has {members.size} examples, fewer than labels_per_class={labels_per_class}."
            )
        labeled.append(rng.choice(members, size=labels_per_class, replace=False))
    lab = np.sort(np.concatenate(labeled))
    rest = np.setdiff1d(np.arange(y.size), lab)
    in_pool = rng.permutation(rest[np.isin(y[rest], lab_classes)])
    out_pool = rng.permutation(rest[~np.isin(y[rest], lab_classes)])
    if ratio > 0 and out_pool.size == 0:
        raise ValueError(
            f"mismatch_ratio={ratio} needs examples outside labeled_classes, but there are none; "
            "pass labeled_classes as a strict subset of the classes."
        )
    if num_unlabeled is None:
        if ratio == 0.0:
            total = in_pool.size
        elif ratio == 1.0:
            total = out_pool.size
        else:
            total = int(math.floor(min(in_pool.size / (1.0 - ratio), out_pool.size / ratio) + 1e-9))
            while total > 0 and (
                _round_half_up(ratio * total) > out_pool.size
                or total - _round_half_up(ratio * total) > in_pool.size
            ):
                total -= 1
    else:
        total = int(num_unlabeled)
        if total < 0:
            raise ValueError(f"num_unlabeled must be >= 0, got {num_unlabeled}.")
    n_out = _round_half_up(ratio * total)
    n_in = total - n_out
    if n_out > out_pool.size or n_in > in_pool.size:
        raise ValueError(
            f"num_unlabeled={total} at mismatch_ratio={ratio} needs {n_in} in-class and {n_out} out-of-class "
            f"examples, but only {in_pool.size} and {out_pool.size} remain; lower num_unlabeled."
        )
    unl = np.sort(np.concatenate([in_pool[:n_in], out_pool[:n_out]]))
    return lab.astype(np.int64), unl.astype(np.int64)
