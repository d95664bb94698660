"""The five curriculum policies of DCL (Yang, Burghardt & Mirmehdi, IJCV 2023) as functions of the step.

Shapes follow the official code (youshyee/DCL-Detection @0edf0ab, ``main.py::dealwithpolicies`` and
``util/misc.py::cosine_scheduler``), where each schedule is a per-epoch array over three phases: a supervised
warm-up (``warmup_epochs``), a ramp, and a cool-down at the end value (``post_epochs``):

* unlabelled-data sampling (``data_stragety='up'``): the share of the unlabelled pool in the training set is
  0 in warm-up, ``linspace(0, 1)`` over the ramp, 1 in cool-down; the pool is shuffled once, so the share
  admits a growing prefix of one fixed order (``datasets/coco.py::reinit``). Static: ``'fix'``, 1 throughout;
* confidence threshold: ``filter_start`` in warm-up, ``linspace(filter_start, filter_end)``, then
  ``filter_end``;
* unsupervised-loss weight: the same three-phase shape on ``unsup_weight_start -> unsup_weight_end``;
* teacher momentum: ``linspace(0, momentum_start)`` over the warm-up, then a half cosine from
  ``momentum_start`` to ``momentum_end`` over the rest of training (no cool-down phase);
* augmentation strength: not scheduled in the released code (its strong augmentation is fixed); the paper
  names an augmentation policy, so the same three-phase ramp on a strength in [0, 1] is used (an assumption,
  papers/great_apes_dcl/README.md).

Here time is the optimiser step rather than the epoch (the schedules are the continuous versions of the
per-epoch arrays); phase lengths are fractions of the run. A *static* policy holds the end value of its
dynamic schedule from the first step (the code's ``'fix'`` sampling, which also forbids the warm-up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["POLICIES", "CurriculumSchedule", "Phases", "cosine_value", "ramp_value"]

POLICIES = ("sampling", "threshold", "augmentation", "unsup_weight", "momentum")


@dataclass(frozen=True)
class Phases:
    """Warm-up, ramp and cool-down lengths (in steps) of a run of ``total`` steps."""

    total: int
    warmup: int
    post: int

    @classmethod
    def from_fractions(cls, total: int, warmup_fraction: float, post_fraction: float) -> Phases:
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ValueError(f"total steps must be an integer >= 1, got {total!r}.")
        if not (0 <= warmup_fraction and 0 <= post_fraction and warmup_fraction + post_fraction < 1):
            raise ValueError(
                f"warmup_fraction and post_fraction must be >= 0 with a sum below 1, got "
                f"{warmup_fraction!r} and {post_fraction!r}."
            )
        return cls(total, int(round(warmup_fraction * total)), int(round(post_fraction * total)))

    @property
    def ramp(self) -> int:
        return max(self.total - self.warmup - self.post, 1)


def ramp_value(step: int, phases: Phases, start: float, end: float) -> float:
    """Three-phase schedule: ``start`` in warm-up, linear ``start -> end`` over the ramp (both end points
    included, as ``np.linspace``), ``end`` in cool-down and beyond."""
    if step < phases.warmup:
        return float(start)
    frac = (step - phases.warmup) / max(phases.ramp - 1, 1)
    return float(start + (end - start) * min(max(frac, 0.0), 1.0))


def cosine_value(step: int, phases: Phases, start: float, end: float, warmup_from: float = 0.0) -> float:
    """Teacher-momentum schedule: linear ``warmup_from -> start`` over the warm-up, then
    ``end + (start - end) * (1 + cos(pi * i / n)) / 2`` with ``i`` the step after warm-up and ``n`` the
    number of post-warm-up steps (``cosine_scheduler`` of the official code)."""
    if step < phases.warmup:
        frac = step / max(phases.warmup - 1, 1)
        return float(warmup_from + (start - warmup_from) * frac)
    n = max(phases.total - phases.warmup, 1)
    i = min(step - phases.warmup, n)
    return float(end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * i / n)))


@dataclass(frozen=True)
class CurriculumSchedule:
    """Values of the five policies at a step; each policy is dynamic (scheduled) or static (its end value).

    ``dynamic`` names the dynamic policies (a subset of ``POLICIES``). The supervised warm-up exists only
    through the policies that have one: with static sampling, unlabelled data enter from the first step."""

    dynamic: frozenset[str]
    phases: Phases
    threshold: tuple[float, float] = (0.7, 0.9)
    unsup_weight: tuple[float, float] = (0.1, 1.0)
    momentum: tuple[float, float] = (0.95, 0.99)
    augmentation: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        unknown = set(self.dynamic) - set(POLICIES)
        if unknown:
            raise ValueError(f"unknown policies {sorted(unknown)}; choose from {POLICIES}.")

    def value(self, policy: str, step: int) -> float:
        """The value of one policy at ``step``."""
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose from {POLICIES}.")
        if policy == "sampling":
            return ramp_value(step, self.phases, 0.0, 1.0) if policy in self.dynamic else 1.0
        start, end = getattr(self, policy)
        if policy not in self.dynamic:
            return float(end)
        if policy == "momentum":
            return cosine_value(step, self.phases, start, end)
        return ramp_value(step, self.phases, start, end)

    def values(self, step: int) -> dict[str, float]:
        """All five policy values at ``step``."""
        return {policy: self.value(policy, step) for policy in POLICIES}
