"""Pseudo-labels from a teacher's class probabilities: which unlabeled examples to train on, and as what.

Every selector returns ``(labels, mask)``: ``labels`` is the arg-max class (long, shape ``(N,)``) and
``mask`` is a float tensor of 0/1 weights of the same shape, in the probabilities' dtype, so that the
unlabeled loss is ``(loss * mask).mean()`` as in FixMatch. Inputs are probabilities (softmax outputs,
possibly sharpened or aligned), shape ``(N, C)``; they are treated as constants (detached).

Protocols:
  * fixed threshold: Sohn et al., "FixMatch", NeurIPS 2020 (``max p >= tau``, tau = 0.95);
  * scheduled threshold: a linear or cosine ramp of tau over training steps (e.g. Dash, Xu et al. ICML 2021,
    and curriculum self-training schedules); the ramp is generic, the caller picks its end points;
  * FlexMatch: Zhang et al., "FlexMatch: Boosting semi-supervised learning with curriculum pseudo labeling",
    NeurIPS 2021 (class-wise learning effect, threshold warm-up, convex mapping), following the USB/TorchSSL
    code (``FlexMatchThresholdingHook``);
  * FreeMatch: Wang et al., "FreeMatch: Self-adaptive thresholding for semi-supervised learning", ICLR 2023
    (self-adaptive global threshold times normalised local class thresholds);
  * distribution alignment: Berthelot et al., "ReMixMatch", ICLR 2020 (``p * p_target / p_model``,
    renormalised), with the running ``p_model`` kept as an EMA as in USB's ``DistAlignEMAHook``.

Stateful selectors are ``nn.Module`` s whose state lives in buffers, so a Lightning checkpoint restores them.
Under DDP, pass probabilities (and indices) gathered over all ranks so every rank holds the same state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

__all__ = [
    "DistributionAlignment",
    "FlexMatchThreshold",
    "FreeMatchThreshold",
    "confidence_pseudo_labels",
    "scheduled_threshold",
]


def _check_probs(probs: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    if not isinstance(probs, torch.Tensor) or probs.ndim != 2 or probs.shape[1] < 2:
        shape = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
        raise ValueError(f"probs must be a tensor of shape (N, C) with C >= 2, got {shape}.")
    if not probs.is_floating_point():
        raise ValueError(f"probs must be floating point, got {probs.dtype}.")
    if num_classes is not None and probs.shape[1] != num_classes:
        raise ValueError(f"probs has {probs.shape[1]} classes, this selector was built for {num_classes}.")
    return probs.detach()


def _check_unit(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")
    return float(value)


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    return num_classes


def _class_counts(labels: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """Histogram of integer labels in [0, length); 1-D scatter_add_ stays deterministic on CUDA (bincount
    does not under ``torch.use_deterministic_algorithms``)."""
    counts = torch.zeros(length, dtype=dtype, device=labels.device)
    return counts.scatter_add_(0, labels, torch.ones_like(labels, dtype=dtype))


def confidence_pseudo_labels(
    probs: torch.Tensor, threshold: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's selection: arg-max labels, kept where the top probability is ``>= threshold``."""
    probs = _check_probs(probs)
    threshold = _check_unit("threshold", threshold)
    max_probs, labels = probs.max(dim=1)
    return labels, (max_probs >= threshold).to(probs.dtype)


def scheduled_threshold(
    step: int,
    total_steps: int,
    start: float,
    end: float,
    shape: Literal["linear", "cosine"] = "linear",
) -> float:
    """A threshold ramped from ``start`` (step 0) to ``end`` (``step >= total_steps``), linearly or along a
    half cosine (``start + (end - start) * (1 - cos(pi * t)) / 2``, t = step / total_steps)."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}.")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}.")
    start, end = _check_unit("start", start), _check_unit("end", end)
    t = min(step / total_steps, 1.0)
    if shape == "linear":
        frac = t
    elif shape == "cosine":
        frac = (1.0 - math.cos(math.pi * t)) / 2.0
    else:
        raise ValueError(f"shape must be 'linear' or 'cosine', got {shape!r}.")
    return start + (end - start) * frac


class FlexMatchThreshold(nn.Module):
    """FlexMatch's curriculum pseudo-labelling: per-class thresholds ``tau * M(beta_c)``.

    ``sigma_c`` counts the unlabeled examples whose latest confident prediction (``max p >= tau``) was class
    ``c`` (each example is remembered by its dataset index). The learning effect is
    ``beta_c = sigma_c / max(max_c sigma_c, N - sum_c sigma_c)`` with threshold warm-up (the never-selected
    examples act as an extra class, so thresholds start low and rise as the model commits), or
    ``sigma_c / max_c sigma_c`` without. ``M`` maps [0, 1] to [0, 1]: ``"convex"`` ``x / (2 - x)`` (the
    paper's default), ``"linear"`` ``x``, ``"concave"`` ``log2(1 + x)``. Until some example has been
    selected, all ``beta_c = 0``.

    ``forward(probs, indices)`` masks with the current thresholds, then records the batch's confident
    predictions and refreshes ``beta`` (the order of the reference code).
    """

    selected_label: torch.Tensor
    learning_effect: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        num_unlabeled: int,
        threshold: float = 0.95,
        warmup: bool = True,
        mapping: Literal["convex", "linear", "concave"] = "convex",
    ) -> None:
        super().__init__()
        self.num_classes = _check_num_classes(num_classes)
        if isinstance(num_unlabeled, bool) or not isinstance(num_unlabeled, int) or num_unlabeled < 1:
            raise ValueError(f"num_unlabeled must be an integer >= 1, got {num_unlabeled!r}.")
        if mapping not in ("convex", "linear", "concave"):
            raise ValueError(f"mapping must be 'convex', 'linear' or 'concave', got {mapping!r}.")
        self.num_unlabeled = num_unlabeled
        self.threshold = _check_unit("threshold", threshold)
        self.warmup = bool(warmup)
        self.mapping = mapping
        # -1 marks an example never predicted confidently.
        self.register_buffer("selected_label", torch.full((num_unlabeled,), -1, dtype=torch.long))
        self.register_buffer("learning_effect", torch.zeros(num_classes))

    def class_thresholds(self) -> torch.Tensor:
        """The current per-class thresholds ``tau * M(beta_c)``, shape ``(C,)``."""
        beta = self.learning_effect
        if self.mapping == "convex":
            mapped = beta / (2.0 - beta)
        elif self.mapping == "concave":
            mapped = torch.log2(1.0 + beta)
        else:
            mapped = beta
        return self.threshold * mapped

    def mask(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels and mask under the current thresholds, without changing the state."""
        probs = _check_probs(probs, self.num_classes)
        max_probs, labels = probs.max(dim=1)
        thresholds = self.class_thresholds().to(probs.dtype)[labels]
        return labels, (max_probs >= thresholds).to(probs.dtype)

    @torch.no_grad()
    def update(self, probs: torch.Tensor, indices: torch.Tensor) -> None:
        """Record the confident predictions (``max p >= tau``) of examples ``indices``; refresh ``beta``."""
        probs = _check_probs(probs, self.num_classes)
        indices = self._check_indices(indices, len(probs))
        max_probs, labels = probs.max(dim=1)
        confident = max_probs >= self.threshold
        # index_put_ over the whole batch instead of boolean indexing: no host sync.
        current = self.selected_label[indices]
        self.selected_label.index_put_((indices,), torch.where(confident, labels.to(current.device), current))

        # counts[0] is the never-selected count, counts[1:] is sigma_c.
        counts = _class_counts(self.selected_label + 1, self.num_classes + 1, self.learning_effect.dtype)
        sigma = counts[1:]
        # The reference leaves beta unchanged while no example has been selected yet.
        if self.warmup:
            norm = torch.maximum(sigma.max(), counts[0])
        else:
            norm = sigma.max()
        any_selected = counts[0] < self.num_unlabeled
        self.learning_effect.copy_(
            torch.where(any_selected, sigma / norm.clamp_min(1.0), self.learning_effect)
        )

    def forward(self, probs: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask with the current thresholds, then update the state with this batch."""
        labels, mask = self.mask(probs)
        self.update(probs, indices)
        return labels, mask

    def _check_indices(self, indices: torch.Tensor, n: int) -> torch.Tensor:
        if not isinstance(indices, torch.Tensor) or indices.shape != (n,) or indices.is_floating_point():
            raise ValueError(
                f"indices must be an integer tensor of shape ({n},) holding the examples' positions in the "
                f"unlabeled set, got {indices!r}."
            )
        # Range check on CPU only: on an accelerator it would sync, and a bad index fails there anyway.
        if n and indices.device.type == "cpu" and (indices.min() < 0 or indices.max() >= self.num_unlabeled):
            raise ValueError(f"indices must lie in [0, {self.num_unlabeled}), the unlabeled set's size.")
        return indices.to(self.selected_label.device, torch.long)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, num_unlabeled={self.num_unlabeled}, "
            f"threshold={self.threshold}, warmup={self.warmup}, mapping={self.mapping!r}"
        )


class FreeMatchThreshold(nn.Module):
    """FreeMatch's self-adaptive thresholding (SAT): global ``tau_t`` times normalised local ``p_t(c)``.

    Each call first updates, with EMA momentum ``lambda``, the global threshold ``tau_t`` (mean top
    probability of the batch) and the local class expectation ``p_t(c)`` (mean probability of class c), then
    keeps an example with top class c where ``max p >= tau_t * p_t(c) / max_c' p_t(c')``. Both start at
    ``1 / C`` as in the paper (Eq. 5-7). ``label_hist``, an EMA of the histogram of arg-max predictions, is
    kept for FreeMatch's self-adaptive fairness loss.
    """

    global_threshold: torch.Tensor
    class_expectation: torch.Tensor
    label_hist: torch.Tensor

    def __init__(self, num_classes: int, momentum: float = 0.999) -> None:
        super().__init__()
        self.num_classes = _check_num_classes(num_classes)
        self.momentum = _check_unit("momentum", momentum)
        self.register_buffer("global_threshold", torch.tensor(1.0 / num_classes))
        self.register_buffer("class_expectation", torch.full((num_classes,), 1.0 / num_classes))
        self.register_buffer("label_hist", torch.full((num_classes,), 1.0 / num_classes))

    def class_thresholds(self) -> torch.Tensor:
        """The current per-class thresholds ``tau_t * p_t(c) / max p_t``, shape ``(C,)``."""
        return self.global_threshold * self.class_expectation / self.class_expectation.max()

    def mask(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels and mask under the current thresholds, without changing the state."""
        probs = _check_probs(probs, self.num_classes)
        max_probs, labels = probs.max(dim=1)
        thresholds = self.class_thresholds().to(probs.dtype)[labels]
        return labels, (max_probs >= thresholds).to(probs.dtype)

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:
        """Fold one batch of probabilities into the EMAs."""
        probs = _check_probs(probs, self.num_classes)
        if len(probs) == 0:
            return
        probs = probs.to(self.class_expectation.dtype)
        max_probs, labels = probs.max(dim=1)
        weight = 1.0 - self.momentum
        self.global_threshold.lerp_(max_probs.mean(), weight)
        self.class_expectation.lerp_(probs.mean(dim=0), weight)
        hist = _class_counts(labels, self.num_classes, self.label_hist.dtype)
        self.label_hist.lerp_(hist / hist.sum(), weight)

    def forward(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Update the state with this batch, then mask with the new thresholds (FreeMatch's order)."""
        self.update(probs)
        return self.mask(probs)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, momentum={self.momentum}"


class DistributionAlignment(nn.Module):
    """ReMixMatch distribution alignment: ``p <- normalise(p * p_target / p_model)``.

    ``p_model`` is an EMA (momentum ``m``) of the mean unlabeled prediction, set to the first batch's mean
    on the first call; ``p_target`` is the class prior to align to (uniform unless given, e.g. the labeled
    class frequencies). A small ``eps`` (1e-6, as in USB) keeps the ratio finite.
    """

    p_model: torch.Tensor
    p_target: torch.Tensor
    initialized: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        momentum: float = 0.999,
        p_target: Sequence[float] | torch.Tensor | None = None,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.num_classes = _check_num_classes(num_classes)
        self.momentum = _check_unit("momentum", momentum)
        if p_target is None:
            target = torch.full((num_classes,), 1.0 / num_classes)
        else:
            target = torch.as_tensor(p_target, dtype=torch.float32).flatten()
            if target.shape != (num_classes,) or not torch.isfinite(target).all() or (target < 0).any():
                raise ValueError(
                    f"p_target must be {num_classes} non-negative finite numbers, got {p_target!r}."
                )
            if target.sum() <= 0:
                raise ValueError("p_target must have a positive sum.")
            target = target / target.sum()
        self.eps = float(eps)
        self.register_buffer("p_target", target)
        self.register_buffer("p_model", torch.full((num_classes,), 1.0 / num_classes))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:
        """Fold the batch's mean prediction into ``p_model``."""
        probs = _check_probs(probs, self.num_classes)
        if len(probs) == 0:
            return
        batch_mean = probs.to(self.p_model.dtype).mean(dim=0)
        # First call: take the batch mean as is (torch.where avoids a host sync on the flag).
        ema = torch.lerp(self.p_model, batch_mean, 1.0 - self.momentum)
        self.p_model.copy_(torch.where(self.initialized, ema, batch_mean))
        self.initialized.fill_(True)

    def align(self, probs: torch.Tensor) -> torch.Tensor:
        """Aligned, renormalised probabilities under the current ``p_model`` (no state change)."""
        probs = _check_probs(probs, self.num_classes)
        ratio = (self.p_target + self.eps) / (self.p_model + self.eps)
        aligned = probs * ratio.to(probs.dtype)
        return aligned / aligned.sum(dim=1, keepdim=True)

    def forward(self, probs: torch.Tensor, update: bool = True) -> torch.Tensor:
        """Update ``p_model`` with this batch (unless ``update=False``), then align it."""
        if update:
            self.update(probs)
        return self.align(probs)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, momentum={self.momentum}"
