"""Next-token LightningModules, one registered method per loss: the Z-loss and its baselines.

Evaluation is ranking-based, as in the paper: top-k accuracy (torchmetrics) of the next token for several k on
the data module's evaluation split, every epoch; the last epoch is the reported number. Classes are ranked by
what each loss models: the logits, or for the Taylor and spherical softmaxes (not increasing in the logit)
their normalised outputs. Each run also measures
how much its own loss moves when the logits are shifted (o + beta), scaled (alpha * o) or both
(alpha * o + beta), which is the invariance the Z-loss is built to have.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import MeanMetric, MetricCollection

from common.lit import ClassificationModule
from common.lit.epoch_metrics import log_epoch_metrics
from common.registry import register_method
from papers.z_loss import losses

#: Logit transformations of the invariance measurement: o -> o + SHIFT and o -> SCALE * o.
SHIFT, SCALE = 5.0, 3.0


def target_rank(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target among its row's scores; classes tied with the target rank above it."""
    target_logit = logits.gather(1, target.long().unsqueeze(1))
    return (logits >= target_logit).sum(dim=1) - 1


class NextTokenModule(ClassificationModule):
    """Trains on one loss of the spherical-family comparison; reports top-k accuracy (%) for k in ``top_k``.

    Records ``<split>/top{k}`` for every k (``<split>/acc`` = top-1), ``<split>/loss`` and the absolute
    change of the mean loss under a shift (``<split>/loss_change_shift``), a scaling
    (``<split>/loss_change_scale``) and both at once, o -> SCALE * o + SHIFT (``<split>/loss_change_affine``)
    of the logits, ``<split>`` being the data module's evaluation split (``test`` or ``validation``)."""

    def __init__(self, *args: Any, top_k: Sequence[int] = (1, 5, 10, 20), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.top_k = sorted({1, *(int(k) for k in top_k)})  # top-1 is always recorded (it is `acc`)
        if self.top_k[0] < 1 or self.top_k[-1] > self.num_classes:
            raise ValueError(f"top_k values must lie in [1, {self.num_classes}], got {list(top_k)}")
        # Top-k accuracy from the rank of the target, one comparison per logit for all k at once; equal to
        # torchmetrics' MulticlassAccuracy(top_k=k) with continuous logits (a tie counts against the target),
        # and several times cheaper with thousands of classes (tests/papers/test_z_loss.py checks both agree).
        self.topk_metrics = MetricCollection({f"top{k}": MeanMetric() for k in self.top_k})
        self.curves.update({f"val/top{k}": [] for k in self.top_k})
        # Sums over the evaluation split, batch values times batch size: loss, |change| of the batch loss
        # after a shift, |change| after a scaling, |change| after both, examples.
        self.register_buffer("_invariance_stats", torch.zeros(5), persistent=False)
        self._last_eval: dict[str, float] = {}

    def loss_fn(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Batch-mean training loss; subclasses implement it."""
        raise NotImplementedError

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """What the loss ranks the classes by (its predicted probabilities, up to a monotone map); the logits
        themselves unless the loss's normalising function is not increasing."""
        return logits

    def compute_loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # The spherical statistics (sums of D squares) lose too much in bf16/fp16: losses run in float32.
        return self.loss_fn(logits.float(), batch["y"])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch["x"]).float()
        target = batch["y"]
        rank = target_rank(self.scores(logits), target)
        for k in self.top_k:
            self.topk_metrics[f"top{k}"].update((rank < k).float())
        count = logits.new_tensor(float(len(target)))
        loss = self.loss_fn(logits, target)
        shift_change = (self.loss_fn(logits + SHIFT, target) - loss).abs()
        scale_change = (self.loss_fn(SCALE * logits, target) - loss).abs()
        affine_change = (self.loss_fn(SCALE * logits + SHIFT, target) - loss).abs()
        changes = [loss, shift_change, scale_change, affine_change, logits.new_ones(())]
        self._invariance_stats += torch.stack(changes) * count

    def on_validation_epoch_end(self) -> None:
        scores = {name: 100.0 * float(value) for name, value in self.topk_metrics.compute().items()}
        self.topk_metrics.reset()
        loss, shift_change, scale_change, affine_change, examples = self._invariance_stats.tolist()
        self._invariance_stats.zero_()
        if self.trainer.sanity_checking:
            return
        examples = max(examples, 1.0)
        for k in self.top_k:
            self.curves[f"val/top{k}"].append(scores[f"top{k}"])
        self.curves["val/acc"].append(scores[f"top{self.top_k[0]}"])
        self._last_eval = {
            "loss": loss / examples,
            "loss_change_shift": shift_change / examples,
            "loss_change_scale": scale_change / examples,
            "loss_change_affine": affine_change / examples,
        }
        log_epoch_metrics(self, {f"val/top{k}": scores[f"top{k}"] for k in self.top_k})

    def final_metrics(self) -> dict[str, float]:
        """Last-epoch metrics, prefixed by the evaluated split: ``test/...`` or ``validation/...``."""
        if not self.curves["val/acc"]:
            return {}
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        split = getattr(datamodule, "eval_split", "test")
        metrics = {f"{split}/top{k}": self.curves[f"val/top{k}"][-1] for k in self.top_k}
        metrics[f"{split}/acc"] = self.curves["val/acc"][-1]
        metrics.update({f"{split}/{name}": value for name, value in self._last_eval.items()})
        return metrics


@register_method("zl_log_softmax")
class LogSoftmaxModule(NextTokenModule):
    """Log-softmax (cross entropy): the standard loss, not in the spherical family."""

    def loss_fn(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return losses.log_softmax_loss(logits, target)


@register_method("zl_mse")
class MSEModule(NextTokenModule):
    """Squared error of the logits to the one-hot target (spherical)."""

    def loss_fn(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return losses.mse_loss(logits, target)


@register_method("zl_log_taylor_softmax")
class LogTaylorSoftmaxModule(NextTokenModule):
    """Negative log of the second-order Taylor softmax (spherical)."""

    def loss_fn(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return losses.log_taylor_softmax_loss(logits, target)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        # 1 + o + o^2/2 decreases for o < -1: rank by the Taylor softmax itself, not by the logits.
        return 1.0 + logits + 0.5 * logits.square()


@register_method("zl_log_spherical_softmax")
class LogSphericalSoftmaxModule(NextTokenModule):
    """Negative log of the spherical softmax ``(o_c^2 + eps) / sum_k (o_k^2 + eps)`` (spherical)."""

    def __init__(self, *args: Any, eps: float = 1e-2, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if eps <= 0:
            raise ValueError(f"the log-spherical-softmax needs eps > 0, got {eps}")
        self.eps = float(eps)

    def loss_fn(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return losses.log_spherical_softmax_loss(logits, target, eps=self.eps)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        # The spherical softmax gives a large negative logit a large probability: rank by o^2 + eps.
        return logits.square() + self.eps


@register_method("z_loss")
class ZLossModule(NextTokenModule):
    """The Z-loss ``softplus(a (b - z_c)) / a`` of the z-normalised target logit (spherical, shift and scale
    invariant); ``a`` (sharpness) and ``b`` (location) are tuned per task."""

    def __init__(self, *args: Any, a: float = 1.0, b: float = 0.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if a <= 0:
            raise ValueError(f"the Z-loss needs a > 0, got a={a}")
        self.a, self.b = float(a), float(b)

    def loss_fn(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return losses.z_loss(logits, target, a=self.a, b=self.b)
