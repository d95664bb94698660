"""CPC: Class Prototype-based Cleaner for Label Noise Learning (Huang, Chen, Feng & Wu, arXiv 2212.10766)."""

from papers.cpc.cleaner import (
    CLEANERS,
    class_prototypes,
    clean_probability,
    ema_prototypes,
    partition_quality,
    prototype_logits,
    prototype_nll,
)
from papers.cpc.module import CPCModule

__all__ = [
    "CLEANERS",
    "CPCModule",
    "class_prototypes",
    "clean_probability",
    "ema_prototypes",
    "partition_quality",
    "prototype_logits",
    "prototype_nll",
]
