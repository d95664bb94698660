"""Data: sources, seeded label corruptions that keep the clean labels, and LightningDataModules."""

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
