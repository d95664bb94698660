"""Classification metrics shared by the papers, all returned as Python floats in percent (0-100).

``preds`` is either scores (logits or probabilities, shape ``(N, C)``; the arg-max is the prediction) or
predicted labels (shape ``(N,)``); ``targets`` are integer labels ``(N,)``. NumPy arrays and tensors are
both accepted.

Protocols:
  * top-k accuracy and expected calibration error come from torchmetrics (``MulticlassAccuracy`` with
    ``top_k``; ``MulticlassCalibrationError``, equal-width bins, the L1 ECE of Guo et al., ICML 2017);
  * balanced accuracy is the mean per-class recall over the classes present in ``targets``, the definition
    of ``sklearn.metrics.balanced_accuracy_score`` (Brodersen et al., ICPR 2010);
  * many/medium/few-shot accuracy: Liu et al., "Large-scale long-tailed recognition in an open world" (OLTR),
    CVPR 2019, official ``shot_acc``: a class with ``>= many`` training examples is many-shot, ``<= few`` is
    few-shot, the rest medium; a group's accuracy is the mean of its classes' accuracies;
  * clustering accuracy matches clusters to classes one-to-one by the Hungarian algorithm
    (``scipy.optimize.linear_sum_assignment`` on the contingency table), the usual protocol of deep
    clustering and category discovery;
  * multi-label mAP is the mean over classes of average precision (torchmetrics, the definition of
    ``sklearn.metrics.average_precision_score``), over the classes with at least one positive;
  * detection precision/recall/F1 score a predicted boolean mask (e.g. "is a label error", "is clean")
    against the true one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_calibration_error,
    multiclass_recall,
)
from torchmetrics.functional.classification import (
    multilabel_average_precision as _multilabel_ap,
)

__all__ = [
    "balanced_accuracy",
    "clustering_accuracy",
    "detection_scores",
    "expected_calibration_error",
    "hungarian_match",
    "multilabel_average_precision",
    "shot_group_accuracy",
    "top_k_accuracy",
]


def _tensor(values: Any, name: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach()
    try:
        return torch.as_tensor(np.asarray(values))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be an array or tensor, got {type(values).__name__}.") from err


def _targets(targets: Any, n: int | None = None) -> torch.Tensor:
    t = _tensor(targets, "targets")
    if t.ndim != 1 or t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"targets must be integer labels of shape (N,), got {t.dtype} {tuple(t.shape)}.")
    if len(t) == 0:
        raise ValueError("targets is empty; metrics need at least one example.")
    if n is not None and len(t) != n:
        raise ValueError(f"preds has {n} rows, targets has {len(t)}.")
    if t.min() < 0:
        raise ValueError("targets must be >= 0.")
    return t.long()


def _labels_from(preds: Any, targets: torch.Tensor) -> torch.Tensor:
    """Predicted labels from scores (arg-max) or labels, validated against ``targets``."""
    p = _tensor(preds, "preds")
    if p.ndim == 2:
        if len(p) != len(targets):
            raise ValueError(f"preds has {len(p)} rows, targets has {len(targets)}.")
        return p.argmax(dim=1).to(targets.device)
    if p.ndim != 1 or p.is_floating_point() or p.dtype == torch.bool:
        raise ValueError(
            f"preds must be scores (N, C) or integer labels (N,), got {p.dtype} {tuple(p.shape)}."
        )
    if len(p) != len(targets):
        raise ValueError(f"preds has {len(p)} entries, targets has {len(targets)}.")
    if p.min() < 0:
        raise ValueError("predicted labels must be >= 0.")
    return p.long().to(targets.device)


def top_k_accuracy(preds: Any, targets: Any, k: int = 1) -> float:
    """Share (%) of examples whose target is among the ``k`` highest-scoring classes (torchmetrics);
    predicted labels ``(N,)`` are accepted for ``k = 1``."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}.")
    t = _targets(targets)
    p = _tensor(preds, "preds")
    if p.ndim == 2:
        if len(p) != len(t):
            raise ValueError(f"preds has {len(p)} rows, targets has {len(t)}.")
        num_classes = p.shape[1]
        if k > num_classes:
            raise ValueError(f"k={k} exceeds the number of classes {num_classes}.")
        if t.max() >= num_classes:
            raise ValueError(f"targets must be < {num_classes}, the number of score columns.")
        p = p.float().to(t.device)
    else:
        if k != 1:
            raise ValueError(
                f"top-{k} accuracy needs scores of shape (N, C), got labels of shape {tuple(p.shape)}."
            )
        p = _labels_from(p, t)
        num_classes = int(max(p.max(), t.max())) + 1
    acc = multiclass_accuracy(p, t, num_classes=max(num_classes, 2), average="micro", top_k=k)
    return 100.0 * float(acc)


def balanced_accuracy(preds: Any, targets: Any) -> float:
    """Mean per-class recall (%) over the classes present in ``targets``, as
    ``sklearn.metrics.balanced_accuracy_score``; predicting a class absent from ``targets`` lowers the
    recall of the true class but adds no class to the mean."""
    t = _targets(targets)
    p = _labels_from(preds, t)
    num_classes = max(int(max(p.max(), t.max())) + 1, 2)
    # torchmetrics' macro recall also averages classes that are only predicted (recall 0); sklearn does not.
    recall = multiclass_recall(p, t, num_classes=num_classes, average="none")
    present = torch.bincount(t, minlength=num_classes) > 0
    return 100.0 * float(recall[present].mean())


def shot_group_accuracy(
    preds: Any,
    targets: Any,
    train_class_counts: Sequence[int] | np.ndarray | torch.Tensor,
    many: int = 100,
    few: int = 20,
) -> dict[str, float]:
    """Many/medium/few-shot accuracy (%) of OLTR: classes grouped by their number of training examples
    (``>= many``: many-shot; ``<= few``: few-shot; otherwise medium), each group's accuracy the mean of its
    classes' accuracies over the classes present in ``targets``; a group with no such class is NaN.

    The defaults 100 / 20 are the ImageNet-LT / Places-LT thresholds; on a smaller training set (a mini
    scale, CIFAR-LT) scale them with the class sizes or no class lands in some groups."""
    counts = _tensor(train_class_counts, "train_class_counts").flatten()
    if counts.numel() == 0 or counts.is_floating_point() and not torch.equal(counts, counts.round()):
        raise ValueError("train_class_counts must be non-empty integer counts, one per class.")
    if (counts < 0).any():
        raise ValueError("train_class_counts must be >= 0.")
    if not few < many:
        raise ValueError(f"few ({few}) must be smaller than many ({many}).")
    num_classes = counts.numel()
    t = _targets(targets)
    p = _labels_from(preds, t)
    if t.max() >= num_classes:
        raise ValueError(f"targets hold class {int(t.max())}, train_class_counts has {num_classes} classes.")
    # Per-class accuracy as OLTR counts it (a prediction outside the known classes is simply wrong).
    support = torch.bincount(t, minlength=num_classes).cpu()
    correct = torch.bincount(t[p == t], minlength=num_classes).cpu()
    counts = counts.cpu()
    present = support > 0
    per_class = torch.where(present, correct / support.clamp_min(1), torch.nan)
    groups = {"many": counts >= many, "medium": (counts > few) & (counts < many), "few": counts <= few}
    result: dict[str, float] = {}
    for name, members in groups.items():
        sel = members & present
        result[name] = 100.0 * float(per_class[sel].mean()) if sel.any() else math.nan
    return result


def expected_calibration_error(
    probs: Any, targets: Any, n_bins: int = 15, norm: Literal["l1", "l2", "max"] = "l1"
) -> float:
    """Expected calibration error (%) of the top-class confidence over ``n_bins`` equal-width bins
    (torchmetrics; ``norm="max"`` is the maximum calibration error). Scores outside [0, 1] are treated as
    logits and soft-maxed by torchmetrics."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}.")
    if norm not in ("l1", "l2", "max"):
        raise ValueError(f"norm must be 'l1', 'l2' or 'max', got {norm!r}.")
    t = _targets(targets)
    p = _tensor(probs, "probs")
    if p.ndim != 2 or p.shape[1] < 2 or len(p) != len(t):
        raise ValueError(f"probs must have shape (N, C) with C >= 2 and N = {len(t)}, got {tuple(p.shape)}.")
    if t.max() >= p.shape[1]:
        raise ValueError(f"targets must be < {p.shape[1]}, the number of classes in probs.")
    ece = multiclass_calibration_error(
        p.float().to(t.device), t, num_classes=p.shape[1], n_bins=n_bins, norm=norm
    )
    return 100.0 * float(ece)


def hungarian_match(clusters: Any, targets: Any, num_classes: int | None = None) -> dict[int, int]:
    """The one-to-one map cluster -> class with the most agreements (Hungarian).

    Without ``num_classes``, clusters left without a class stay out of the map. With it, ids must lie in
    ``[0, num_classes)`` and the map is completed into a permutation of ``range(num_classes)``: ids never
    matched (never predicted, or matched to nothing) take the unused classes in increasing order, which is
    what permuting a per-class estimate (e.g. a K x D matrix) needs."""
    c = _targets(clusters).cpu().numpy()
    t = _targets(targets, len(c)).cpu().numpy()
    if num_classes is not None:
        k = int(num_classes)
        if k < 1 or (c.size and (c.min() < 0 or c.max() >= k or t.min() < 0 or t.max() >= k)):
            raise ValueError(f"with num_classes={num_classes}, clusters and targets must lie in [0, {k}).")
    cluster_ids, c_idx = np.unique(c, return_inverse=True)
    class_ids, t_idx = np.unique(t, return_inverse=True)
    table = np.zeros((cluster_ids.size, class_ids.size), dtype=np.int64)
    np.add.at(table, (c_idx, t_idx), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    mapping = {int(cluster_ids[r]): int(class_ids[col]) for r, col in zip(rows, cols, strict=True)}
    if num_classes is None:
        return mapping
    free = iter(sorted(set(range(k)) - set(mapping.values())))
    return {cluster: mapping[cluster] if cluster in mapping else next(free) for cluster in range(k)}


def clustering_accuracy(clusters: Any, targets: Any) -> float:
    """Accuracy (%) after the best one-to-one matching of cluster ids to class ids (Hungarian)."""
    mapping = hungarian_match(clusters, targets)
    c = _targets(clusters).cpu().numpy()
    t = _targets(targets, len(c)).cpu().numpy()
    mapped = np.array([mapping.get(int(x), -1) for x in c])
    return 100.0 * float((mapped == t).mean())


def gcd_accuracy(clusters: Any, targets: Any, old_classes: Any) -> dict[str, float]:
    """Generalized category discovery's All / Old / New accuracy (%): one Hungarian matching of cluster ids to
    classes over all the unlabelled examples, then the share of matched predictions among all examples, among
    those of the known ("old") classes and among those of the novel ("new") ones, each weighted by instance
    (Vaze et al., CVPR 2022; `split_cluster_acc_v2` of the GCD and SimGCD code). A part with no example is
    NaN."""
    c = _targets(clusters).cpu().numpy()
    t = _targets(targets, len(c)).cpu().numpy()
    mapping = hungarian_match(c, t)
    correct = np.array([mapping.get(int(x), -1) for x in c]) == t
    old = np.isin(t, np.asarray(list(old_classes), dtype=np.int64))

    def share(mask: np.ndarray) -> float:
        return 100.0 * float(correct[mask].mean()) if mask.any() else float("nan")

    return {"all": share(np.ones_like(old)), "old": share(old), "new": share(~old)}


def multilabel_average_precision(scores: Any, targets: Any) -> float:
    """Mean average precision (%) over the classes that have a positive in ``targets`` ((N, C) of 0/1)."""
    s = _tensor(scores, "scores").float()
    y = _tensor(targets, "targets")
    if s.ndim != 2 or y.shape != s.shape:
        raise ValueError(
            f"scores and targets must both be (N, C); got {tuple(s.shape)} and {tuple(y.shape)}."
        )
    if not torch.isin(y.unique(), torch.tensor([0, 1], dtype=y.dtype)).all():
        raise ValueError("targets must be 0/1; mark unknown labels in the training data, not in evaluation.")
    present = y.sum(0) > 0
    if not present.any():
        raise ValueError("no class has a positive in targets; mAP is undefined.")
    per_class = _multilabel_ap(
        s[:, present], y[:, present].long(), num_labels=int(present.sum()), average=None
    )
    return 100.0 * float(per_class.mean())


def detection_scores(predicted: Any, actual: Any) -> dict[str, float]:
    """Precision, recall and F1 (%) of a predicted boolean mask against the true one (0 where undefined)."""
    p = _tensor(predicted, "predicted").bool().flatten()
    a = _tensor(actual, "actual").bool().flatten()
    if p.shape != a.shape:
        raise ValueError(f"predicted and actual masks differ in size: {p.numel()} vs {a.numel()}.")
    tp = float((p & a).sum())
    precision = tp / float(p.sum()) if p.any() else 0.0
    recall = tp / float(a.sum()) if a.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": 100.0 * precision, "recall": 100.0 * recall, "f1": 100.0 * f1}
