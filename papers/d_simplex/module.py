"""One model of a compatible-learning sequence: backbone -> (projection) -> classifier.

`classifier="dsimplex"`: the classifier is the fixed matrix of the K preallocated d-Simplex vertices and
the features are a bias-free linear projection of the pooled backbone features to d = K - 1 dimensions
(official `Incremental_ResNet` with `fixed=True`: fc1 512 -> 1023, fc2 frozen to the simplex,
miccunifi/iamcl2r @ 18495ac, src/iamcl2r/models/__init__.py lines 49-105 and 161-165). The training loss
is cross entropy against vertex K - 1 - y, plus the HOC term when `hoc_lambda < 1`.
`classifier="learnable"`: the ER baseline, a bias-free learnable linear head on the pooled backbone
features (fc1 absent: the features are the 512-d pooled output) with one row per class seen so far.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.lit import ClassificationModule
from common.registry import register_method
from papers.d_simplex.losses import hoc_loss
from papers.d_simplex.simplex import dsimplex_vertices, vertex_of_class

CLASSIFIERS = ("dsimplex", "learnable")


class FrozenEmbedder(nn.Module):
    """A frozen copy of a learner's feature path (backbone + projection), in eval mode: the old model of
    the HOC loss (official `previous_net`, train.py lines 45-48)."""

    def __init__(self, backbone: nn.Module, projection: nn.Module):
        super().__init__()
        self.backbone = copy.deepcopy(backbone)
        self.projection = copy.deepcopy(projection)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenEmbedder:
        return super().train(False)  # stays in eval mode (batch-norm statistics frozen), as the official

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.backbone(x))


@register_method("d_simplex_learner")
class CompatibleLearner(ClassificationModule):
    """A backbone with a fixed d-Simplex or a learnable classifier, trained with (HOC-)cross entropy.

    Args beyond `ClassificationModule`'s: `classifier` (dsimplex | learnable), `num_outputs` (rows of the
    learnable head), `preallocated_classes` (K, the number of simplex vertices), `hoc_lambda` (weight of
    the cross entropy; 1 = no HOC term), `hoc_mu` (scale of the HOC similarities)."""

    def __init__(
        self,
        *args: Any,
        classifier: str = "dsimplex",
        num_outputs: int | None = None,
        preallocated_classes: int = 1024,
        hoc_lambda: float = 1.0,
        hoc_mu: float = 10.0,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        if classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
        if not 0.0 <= hoc_lambda <= 1.0:
            raise ValueError(f"hoc_lambda must be in [0, 1], got {hoc_lambda}")
        if classifier == "learnable" and hoc_lambda < 1.0:
            raise ValueError("the HOC loss is defined for the d-Simplex classifier (classifier=dsimplex)")
        self.classifier_kind, self.hoc_lambda, self.hoc_mu = classifier, float(hoc_lambda), float(hoc_mu)
        self.backbone.reset_classifier(0)  # pooled features; the head is ours
        width = int(self.backbone.num_features)
        if classifier == "dsimplex":
            self.preallocated_classes = int(preallocated_classes)
            dim = self.preallocated_classes - 1
            self.projection: nn.Module = nn.Linear(width, dim, bias=False) if width != dim else nn.Identity()
            self.register_buffer("vertices", dsimplex_vertices(self.preallocated_classes))
            self.head: nn.Module | None = None
        else:
            outputs = int(num_outputs or self.num_classes)
            self.preallocated_classes = outputs
            self.projection = nn.Identity()
            self.head = nn.Linear(width, outputs, bias=False)
        # Not a registered submodule: never in the optimiser, the state dict or a later deep copy.
        self._old: tuple[FrozenEmbedder, ...] = ()

    # ---- model ------------------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The representation used for retrieval (before L2 normalisation)."""
        return self.projection(self.backbone(x))

    def logits_from(self, features: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            return features @ self.vertices.to(features.dtype).T
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from(self.embed(x))

    def output_of_class(self, labels: torch.Tensor) -> torch.Tensor:
        """Classifier output (vertex or head row) that stands for each class id."""
        if self.head is None:
            return vertex_of_class(labels, self.preallocated_classes)
        return labels

    def class_of_output(self, outputs: torch.Tensor) -> torch.Tensor:
        return self.preallocated_classes - 1 - outputs if self.head is None else outputs

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted class ids (argmax over every classifier output)."""
        return self.class_of_output(self(x).argmax(dim=1))

    # ---- sequence bookkeeping ------------------------------------------------------------------------------
    def frozen_embedder(self) -> FrozenEmbedder:
        return FrozenEmbedder(self.backbone, self.projection)

    def set_old_model(self, old: FrozenEmbedder | None) -> None:
        self._old = () if old is None else (old,)

    @torch.no_grad()
    def load_weights_from(self, other: CompatibleLearner, keep_classifier: bool) -> None:
        """Start from `other`'s backbone and projection; with `keep_classifier`, its learnable head rows too
        (the rest stay freshly initialised, as the official `expand_classifier`)."""
        if other.classifier_kind != self.classifier_kind:
            raise ValueError(
                f"cannot start a {self.classifier_kind} model from a {other.classifier_kind} one"
            )
        self.backbone.load_state_dict(other.backbone.state_dict())
        self.projection.load_state_dict(other.projection.state_dict())
        if keep_classifier and self.head is not None and other.head is not None:
            rows = min(self.head.weight.shape[0], other.head.weight.shape[0])
            self.head.weight[:rows] = other.head.weight[:rows]

    # ---- training ------------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        for old in self._old:
            old.to(self.device)

    def on_fit_end(self) -> None:
        for old in self._old:
            old.to("cpu")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        features = self.embed(batch["x"])
        logits = self.logits_from(features)
        targets = self.output_of_class(batch["y"])
        if self.hoc_lambda < 1.0:
            if not self._old:
                raise RuntimeError("hoc_lambda < 1 needs the previous model: call set_old_model first")
            with torch.no_grad():
                old_features = self._old[0](batch["x"])
            loss = hoc_loss(logits, targets, features, old_features, self.hoc_lambda, self.hoc_mu)
        else:
            loss = F.cross_entropy(logits, targets)
        with torch.no_grad():
            zero = loss.new_zeros(())
            self._epoch_stats += torch.stack([loss.detach().float(), loss.new_ones(()), zero, zero])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        correct = (self.predict(batch["x"]) == batch["y_clean"]).sum()
        self._val_stats += torch.stack([correct, correct.new_tensor(len(batch["x"]))]).float()

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }
