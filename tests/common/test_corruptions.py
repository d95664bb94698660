"""Tests of common.data.corruptions: exact counts, realised structure, determinism, no mutation, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cleanlab.benchmarking.noise_generation import generate_noise_matrix_from_trace, noise_matrix_is_valid

from common.data.corruptions import (
    CIFAR10_ASYMMETRIC_MAP,
    PUSplit,
    class_counts_long_tailed,
    inject_class_conditional_noise,
    inject_frequency_proportional_noise,
    inject_instance_noise,
    inject_pair_noise,
    inject_symmetric_noise,
    make_long_tailed,
    mask_positive_unlabeled,
    noise_matrix_from_trace,
    realised_transition_matrix,
    split_labeled_unlabeled,
)


def rhu(x: float) -> int:
    """Round half up, the convention of the module."""
    return int(math.floor(x + 0.5 + 1e-9))


@pytest.fixture
def labels() -> np.ndarray:
    # Unequal class sizes 103, 110, ..., 166 (K = 10) so per-class rounding is exercised.
    return np.random.default_rng(0).permutation(np.repeat(np.arange(10), 103 + 7 * np.arange(10)))


# ------------------------------------------------------------------------------------------ symmetric
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.45, 0.8])
def test_symmetric_exact_rate(labels: np.ndarray, rate: float) -> None:
    noisy = inject_symmetric_noise(labels, rate, 10, seed=1)
    assert (noisy != labels).sum() == rhu(rate * labels.size)
    assert noisy.dtype == labels.dtype and noisy.min() >= 0 and noisy.max() < 10


def test_symmetric_uniform_targets_and_include_true_class() -> None:
    y = np.repeat(np.arange(4), 5000)
    noisy = inject_symmetric_noise(y, 0.6, 4, seed=3)
    t = realised_transition_matrix(y, noisy, 4)
    off = t[~np.eye(4, dtype=bool)]
    assert np.allclose(np.diag(t), 0.4, atol=0.02) and np.allclose(off, 0.2, atol=0.02)
    loose = inject_symmetric_noise(y, 0.6, 4, seed=3, include_true_class=True)
    assert abs((loose != y).mean() - 0.6 * 3 / 4) < 0.02


# ----------------------------------------------------------------------------------------------- pair
def test_pair_default_mapping_exact(labels: np.ndarray) -> None:
    noisy = inject_pair_noise(labels, 0.35, 10, seed=2)
    counts = np.bincount(labels, minlength=10)
    assert (noisy != labels).sum() == sum(rhu(0.35 * c) for c in counts)
    t = realised_transition_matrix(labels, noisy, 10)
    allowed = np.eye(10, dtype=bool) | np.roll(np.eye(10, dtype=bool), 1, axis=1)
    assert np.all(t[~allowed] == 0)
    for i in range(10):
        assert t[i, (i + 1) % 10] == rhu(0.35 * counts[i]) / counts[i]


def test_pair_cifar10_map_and_dict_mapping(labels: np.ndarray) -> None:
    noisy = inject_pair_noise(labels, 0.4, 10, seed=5, mapping=CIFAR10_ASYMMETRIC_MAP)
    as_dict = inject_pair_noise(labels, 0.4, 10, seed=5, mapping={9: 1, 2: 0, 4: 7, 3: 5, 5: 3})
    np.testing.assert_array_equal(noisy, as_dict)
    t = realised_transition_matrix(labels, noisy, 10)
    for i in (0, 1, 6, 7, 8):  # identity classes stay clean
        assert t[i, i] == 1.0
    counts = np.bincount(labels, minlength=10)
    for src, dst in {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}.items():
        assert t[src, dst] == rhu(0.4 * counts[src]) / counts[src]
        assert t[src, src] + t[src, dst] == 1.0


# ------------------------------------------------------------------------------------------- instance
def test_instance_noise_rate_and_targets() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 8))
    y = rng.integers(0, 5, size=4000)
    noisy = inject_instance_noise(x, y, 0.3, 5, seed=7)
    assert abs((noisy != y).mean() - 0.3) < 0.03
    np.testing.assert_array_equal(noisy, inject_instance_noise(x, y, 0.3, 5, seed=7))
    assert (noisy != inject_instance_noise(x, y, 0.3, 5, seed=8)).any()
    t = realised_transition_matrix(y, noisy, 5)
    assert np.all(np.abs(t.sum(axis=1) - 1) < 1e-12)
    assert np.all(np.abs(np.diag(t) - 0.7) < 0.06)  # every class is flipped at about the mean rate
    with pytest.raises(ValueError, match="one row per label"):
        inject_instance_noise(x[:10], y, 0.3, 5, seed=0)


# ------------------------------------------------------------------------------ noise matrix from trace
@pytest.mark.parametrize(
    ("k", "trace", "frac"),
    [
        (2, 1.4, 0.0),
        (2, 1.4, 0.5),
        (3, 2.0, 0.5),
        (5, 3.0, 0.0),
        (10, 4.0, 0.4),
        (10, 2.5, 0.8),
        (20, 8.0, 0.3),
    ],
)
def test_noise_matrix_from_trace_exact(k: int, trace: float, frac: float) -> None:
    py = np.random.default_rng(k).dirichlet(np.full(k, 5.0))
    for prior in (None, py):
        m = noise_matrix_from_trace(k, trace, frac_zero_noise_rates=frac, seed=11, py=prior)
        assert m.shape == (k, k) and np.all(m >= 0)
        np.testing.assert_allclose(m.sum(axis=0), 1.0, atol=1e-12)
        assert abs(np.trace(m) - trace) < 1e-12
        assert np.all(np.diag(m) > 0)
        off = m[~np.eye(k, dtype=bool)]
        assert (off == 0).sum() == rhu(frac * k * (k - 1))
        assert noise_matrix_is_valid(m, np.full(k, 1 / k) if prior is None else prior)


def test_noise_matrix_matches_cleanlab_properties() -> None:
    k, trace, frac = 6, 3.0, 0.4
    py = np.full(k, 1 / k)
    ours = noise_matrix_from_trace(k, trace, frac_zero_noise_rates=frac, seed=0, py=py)
    ref = generate_noise_matrix_from_trace(k, trace, frac_zero_noise_rates=frac, py=py, seed=0)
    assert ref is not None
    for m in (ours, ref):
        np.testing.assert_allclose(m.sum(axis=0), 1.0, atol=1e-9)
        assert abs(np.trace(m) - trace) < 1e-9
        assert noise_matrix_is_valid(m, py)
    # cleanlab guarantees *at least* the requested zeros; ours gives exactly that many.
    zeros = lambda m: int((m[~np.eye(k, dtype=bool)] == 0).sum())
    assert zeros(ours) == rhu(frac * k * (k - 1)) <= zeros(ref)


def test_noise_matrix_determinism_and_errors() -> None:
    a = noise_matrix_from_trace(5, 3.0, seed=1)
    np.testing.assert_array_equal(a, noise_matrix_from_trace(5, 3.0, seed=1))
    assert not np.array_equal(a, noise_matrix_from_trace(5, 3.0, seed=2))
    with pytest.raises(ValueError, match="trace must lie"):
        noise_matrix_from_trace(5, 1.0, seed=0)
    with pytest.raises(ValueError, match="trace must lie"):
        noise_matrix_from_trace(5, 5.0, seed=0)
    with pytest.raises(ValueError, match="noise-free columns"):
        noise_matrix_from_trace(3, 1.5, frac_zero_noise_rates=1.0, seed=0)
    with pytest.raises(ValueError, match="py must be"):
        noise_matrix_from_trace(3, 2.0, seed=0, py=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="no learnable noise matrix"):
        noise_matrix_from_trace(10, 1.01, seed=0, max_iter=5)


# ---------------------------------------------------------------------------------- class-conditional
def test_class_conditional_exact_counts(labels: np.ndarray) -> None:
    m = noise_matrix_from_trace(10, 6.0, frac_zero_noise_rates=0.5, seed=4)
    noisy = inject_class_conditional_noise(labels, m, seed=9)
    counts = np.zeros((10, 10), dtype=int)  # counts[i, j]: noisy i, true j
    np.add.at(counts, (noisy, labels), 1)
    n_j = np.bincount(labels, minlength=10)
    np.testing.assert_array_equal(counts.sum(axis=0), n_j)
    expected = m * n_j
    assert np.all(np.abs(counts - expected) < 1)  # each count is the floor or the ceiling
    assert np.all(counts[m == 0] == 0)
    assert np.all((counts == np.floor(expected)) | (counts == np.ceil(expected)))


def test_class_conditional_integer_counts_exact() -> None:
    y = np.repeat(np.arange(3), 100)
    m = np.array([[0.7, 0.1, 0.0], [0.2, 0.9, 0.25], [0.1, 0.0, 0.75]])
    noisy = inject_class_conditional_noise(y, m, seed=0)
    np.testing.assert_allclose(realised_transition_matrix(y, noisy, 3), m.T)
    with pytest.raises(ValueError, match="columns summing to 1"):
        inject_class_conditional_noise(y, m.T * 1.1, seed=0)


# -------------------------------------------------------------------------------------------- long tail
def test_long_tail_counts_and_ratio() -> None:
    # CIFAR-10-LT at ratio 100, as in the LDAM code (Cao et al. 2019).
    assert class_counts_long_tailed(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert class_counts_long_tailed(7, 1, 50) == [7]
    y = np.repeat(np.arange(10), 520)
    idx = make_long_tailed(y, 100, seed=0, max_per_class=500)
    assert np.all(np.diff(idx) > 0)
    counts = np.bincount(y[idx], minlength=10)
    assert counts.tolist() == class_counts_long_tailed(500, 10, 100)
    assert counts[0] == 500 and counts[-1] == math.floor(500 / 100)
    default = make_long_tailed(y, 10, seed=0)  # n_max = smallest class = 520
    assert np.bincount(y[default])[0] == 520 and np.bincount(y[default])[-1] == 52
    with pytest.raises(ValueError, match="class 0 has 520"):
        make_long_tailed(y, 10, seed=0, max_per_class=600)
    with pytest.raises(ValueError, match="imbalance_ratio"):
        class_counts_long_tailed(100, 5, 0.5)
    with pytest.raises(ValueError, match="tail class would be empty"):
        class_counts_long_tailed(10, 5, 50)


# ----------------------------------------------------------------------------------------------- PU
def test_pu_counts_and_prior(labels: np.ndarray) -> None:
    pos_classes = [0, 1, 2]
    is_pos = np.isin(labels, pos_classes)
    split = mask_positive_unlabeled(labels, pos_classes, 0.3, seed=0)
    assert isinstance(split, PUSplit)
    assert split.indices.size == labels.size and np.all(np.diff(split.indices) > 0)
    np.testing.assert_array_equal(split.is_positive, is_pos[split.indices])
    assert split.is_labeled.sum() == rhu(0.3 * is_pos.sum())
    assert np.all(split.is_positive[split.is_labeled])
    assert split.class_prior == split.is_positive[~split.is_labeled].mean()

    for prior in (0.1, 0.5, 0.8):
        s = mask_positive_unlabeled(labels, pos_classes, 0.3, seed=0, class_prior=prior)
        unl = ~s.is_labeled
        assert s.is_labeled.sum() == rhu(0.3 * is_pos.sum())
        assert abs(s.class_prior - prior) <= 1.0 / unl.sum()
        # Fewest drops: one of the two unlabeled groups is kept whole.
        n_unl_pos = is_pos.sum() - s.is_labeled.sum()
        assert (s.is_positive & unl).sum() == n_unl_pos or (~s.is_positive).sum() == (~is_pos).sum()


def test_pu_errors(labels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="labeled_fraction"):
        mask_positive_unlabeled(labels, 0, 0.0, seed=0)
    with pytest.raises(ValueError, match="both positives and negatives"):
        mask_positive_unlabeled(labels, list(range(10)), 0.5, seed=0)
    with pytest.raises(ValueError, match="no positive is left unlabeled"):
        mask_positive_unlabeled(labels, 0, 1.0, seed=0, class_prior=0.3)
    with pytest.raises(ValueError, match="class_prior"):
        mask_positive_unlabeled(labels, 0, 0.5, seed=0, class_prior=1.0)


# --------------------------------------------------------------------------------------- SSL splits
def test_split_default_is_partition(labels: np.ndarray) -> None:
    lab, unl = split_labeled_unlabeled(labels, 25, seed=0)
    assert np.intersect1d(lab, unl).size == 0 and lab.size + unl.size == labels.size
    assert np.all(np.diff(lab) > 0) and np.all(np.diff(unl) > 0)
    assert np.bincount(labels[lab], minlength=10).tolist() == [25] * 10


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 1.0])
def test_split_class_mismatch(labels: np.ndarray, ratio: float) -> None:
    known = [2, 3, 4, 5, 6, 7]
    lab, unl = split_labeled_unlabeled(labels, 20, seed=1, labeled_classes=known, mismatch_ratio=ratio)
    assert np.intersect1d(lab, unl).size == 0
    assert set(np.unique(labels[lab])) == set(known) and np.all(np.bincount(labels[lab])[known] == 20)
    out = ~np.isin(labels[unl], known)
    assert out.sum() == rhu(ratio * unl.size)
    fixed_lab, fixed = split_labeled_unlabeled(
        labels, 20, seed=1, labeled_classes=known, mismatch_ratio=ratio, num_unlabeled=300
    )
    np.testing.assert_array_equal(fixed_lab, lab)
    assert fixed.size == 300 and (~np.isin(labels[fixed], known)).sum() == rhu(ratio * 300)
    assert np.intersect1d(fixed_lab, fixed).size == 0


def test_split_errors(labels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="outside labeled_classes"):
        split_labeled_unlabeled(labels, 5, seed=0, mismatch_ratio=0.3)
    with pytest.raises(ValueError, match="fewer than labels_per_class"):
        split_labeled_unlabeled(labels, 1000, seed=0)
    with pytest.raises(ValueError, match="absent"):
        split_labeled_unlabeled(labels, 5, seed=0, labeled_classes=[0, 42])
    with pytest.raises(ValueError, match="lower num_unlabeled"):
        split_labeled_unlabeled(
            labels, 5, seed=0, labeled_classes=[0, 1], mismatch_ratio=0.0, num_unlabeled=10**5
        )


# --------------------------------------------------------------------------- determinism, inputs, errors
CALLS = {
    "symmetric": lambda y, s: inject_symmetric_noise(y, 0.4, 10, seed=s),
    "pair": lambda y, s: inject_pair_noise(y, 0.4, 10, seed=s),
    "class_conditional": lambda y, s: inject_class_conditional_noise(
        y, noise_matrix_from_trace(10, 5.0, seed=0), seed=s
    ),
    "long_tailed": lambda y, s: make_long_tailed(y, 10, seed=s),
    "pu": lambda y, s: mask_positive_unlabeled(y, [0, 1], 0.5, seed=s, class_prior=0.2).indices,
    "split": lambda y, s: np.concatenate(split_labeled_unlabeled(y, 10, seed=s, labeled_classes=[0, 1, 2])),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_seeded_and_pure(labels: np.ndarray, name: str) -> None:
    before = labels.copy()
    labels.setflags(write=False)  # any in-place write would raise
    first = CALLS[name](labels, 0)
    np.testing.assert_array_equal(first, CALLS[name](labels, 0))
    assert not np.array_equal(first, CALLS[name](labels, 1))
    np.testing.assert_array_equal(labels, before)


def test_instance_noise_does_not_mutate() -> None:
    x = np.random.default_rng(0).normal(size=(50, 3))
    y = np.arange(50) % 4
    x0, y0 = x.copy(), y.copy()
    inject_instance_noise(x, y, 0.4, 4, seed=0)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda y: inject_symmetric_noise(y, 1.0, 10, seed=0), r"noise_rate must lie in \[0, 1\)"),
        (lambda y: inject_symmetric_noise(y, -0.1, 10, seed=0), "noise_rate"),
        (lambda y: inject_symmetric_noise(y, 0.2, 5, seed=0), "labels must lie in"),
        (lambda y: inject_symmetric_noise(y.astype(float), 0.2, 10, seed=0), "integer array"),
        (lambda y: inject_symmetric_noise(y - 1, 0.2, 10, seed=0), "must be >= 0"),
        (lambda y: inject_symmetric_noise(y, 0.2, 1, seed=0), "num_classes"),
        (lambda y: inject_pair_noise(y, 0.2, 10, seed=0, mapping=[1, 2]), "length-10"),
        (lambda y: inject_pair_noise(y, 0.2, 10, seed=0, mapping={3: 10}), "out of range"),
        (lambda y: inject_class_conditional_noise(y, np.eye(3), seed=0), "labels must lie in"),
        (lambda y: realised_transition_matrix(y, y[:-1], 10), "same length"),
    ],
)
def test_clear_errors(labels: np.ndarray, call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(labels)


def test_frequency_proportional_noise_counts_and_targets() -> None:
    labels = np.repeat(np.arange(3), [600, 300, 100])
    noisy = inject_frequency_proportional_noise(labels, 0.3, 3, seed=0)
    flipped = noisy != labels
    assert flipped.sum() == 300  # exactly round(0.3 * 1000)
    assert np.array_equal(labels, np.repeat(np.arange(3), [600, 300, 100]))  # input untouched
    # From class 2 (tail), targets 0 and 1 in ratio n_0 : n_1 = 2 : 1; from class 0, 1 and 2 as 3 : 1.
    big = np.repeat(np.arange(3), [6000, 3000, 1000])
    noisy_big = inject_frequency_proportional_noise(big, 0.5, 3, seed=1)
    from_tail = noisy_big[(big == 2) & (noisy_big != big)]
    assert abs(np.mean(from_tail == 0) - 2 / 3) < 0.05
    from_head = noisy_big[(big == 0) & (noisy_big != big)]
    assert abs(np.mean(from_head == 1) - 3 / 4) < 0.03
    assert np.array_equal(noisy, inject_frequency_proportional_noise(labels, 0.3, 3, seed=0))


def test_frequency_proportional_noise_through_the_datamodule_and_edge_cases() -> None:
    from common.data.datamodule import NOISE_TYPES, corrupt_labels

    assert "frequency_proportional" in NOISE_TYPES
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    via_module = corrupt_labels(
        labels, num_classes=4, noise_type="frequency_proportional", noise_rate=0.2, seed=3
    )
    assert np.array_equal(via_module, inject_frequency_proportional_noise(labels, 0.2, 4, seed=3))
    # A single populated class has nowhere to flip to; an empty class never receives a flip.
    assert (inject_frequency_proportional_noise(np.zeros(10, np.int64), 0.5, 3, seed=0) == 0).all()
    assert not np.any(inject_frequency_proportional_noise(np.repeat([0, 1], 20), 0.5, 3, seed=0) == 2)
    with pytest.raises(ValueError, match="noise_rate"):
        inject_frequency_proportional_noise(labels, 1.0, 4, seed=0)
