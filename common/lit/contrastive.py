"""Contrastive representation learning on two augmented views (SimCLR's set-up) with the InfoNCE family
(InfoNCE / NT-Xent, DCL debiasing, HCL hard-negative reweighting, false-negative masking with oracle labels)
and supervised contrastive learning, evaluated by weighted kNN and a linear probe on the frozen encoder.

Negatives are global: under data parallelism every process contrasts its rows with the embeddings of all
processes, gathered with gradients (see `gather_with_grad`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from common.errors import NonFiniteLossError, UserError
from common.eval import extract_features, knn_accuracy, logistic_regression_probe, train_linear_probe
from common.kernels import info_nce
from common.lit.epoch_metrics import log_epoch_metrics
from common.losses.supcon import supcon_loss
from common.registry import register_method

OBJECTIVES = ("info_nce", "supcon")
PROBES = ("logistic", "torch")
EVAL_PROTOCOLS = ("knn", "linear")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All processes' rows of `x`, concatenated in rank order, and the offset of this process's rows.

    The gradient flows back to every process's own rows: the backward of the gather sums, over processes,
    the gradients of their losses with respect to this process's rows. With each process's loss a mean over
    its own rows and DDP averaging parameter gradients over processes, the update equals that of one
    process computing the mean loss over the whole global batch. Every process must pass the same number
    of rows. Without an initialised process group (or with one process) this is (x, 0)."""
    if not _distributed():
        return x, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x)), dist.get_rank() * x.shape[0]


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All processes' rows of `x` (labels, ids) concatenated in rank order, without gradient."""
    if not _distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class ProjectionHead(nn.Sequential):
    """MLP projection head: [Linear -> (BatchNorm) -> ReLU] per hidden width, then Linear to the last width.

    With dims (512, 128) on 2048 features it is the head of chingyaoc/DCL and joshr17/HCL (model.py):
    Linear(2048, 512, bias=False), BN, ReLU, Linear(512, 128)."""

    def __init__(self, in_features: int, dims: Sequence[int], batch_norm: bool = True):
        dims = [int(d) for d in dims]
        if not dims or any(d < 1 for d in dims):
            raise UserError(f"method.projection_dims must be positive widths, got {dims}")
        layers: list[nn.Module] = []
        width = in_features
        for hidden in dims[:-1]:
            layers.append(nn.Linear(width, hidden, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.ReLU(inplace=True))
            width = hidden
        layers.append(nn.Linear(width, dims[-1]))
        super().__init__(*layers)


@register_method("contrastive")
class ContrastiveModule(L.LightningModule):
    """Encoder (the backbone, its classifier removed) + projection head, trained on batches with two views
    `x1`, `x2` (see common.data.views).

    objective="info_nce": row i of the 2B normalised projections has its other view as positive and the
    other examples' views of the (global) batch as negatives, through `common.kernels.info_nce` with
    `temperature`, `debias_tau_plus` (DCL) and `hard_negative_beta` (HCL). mask_false_negatives=True also
    removes every key of the anchor's true class (`y_clean`, an oracle) from its negatives.
    objective="supcon": `common.losses.supcon_loss` with the training labels `y`.

    Evaluation on the frozen encoder features: weighted kNN (knn_k, knn_temperature) every
    eval_every_n_epochs epochs (curve `val/knn_acc`) and after training; after training a linear probe
    (probe="logistic": scikit-learn on standardised features; "torch": a linear head trained with Adam,
    on fixed features or, with probe_augment, on features of freshly augmented inputs every epoch). The
    run's `test/acc` is the accuracy of `eval_protocol` (knn or linear); `test/knn_acc` and, when the probe
    ran, `test/linear_acc` are recorded too."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        num_train_examples: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        *,
        objective: str = "info_nce",
        temperature: float = 0.5,
        hard_negative_beta: float = 0.0,
        debias_tau_plus: float = 0.0,
        mask_false_negatives: bool = False,
        projection_dims: Sequence[int] = (512, 128),
        projection_batch_norm: bool = True,
        global_negatives: bool = True,
        loss_backend: str = "auto",
        eval_protocol: str = "linear",
        eval_every_n_epochs: int = 1,
        knn_k: int = 200,
        knn_temperature: float = 0.5,
        probe: str = "torch",
        probe_C: float = 1.0,
        probe_epochs: int = 100,
        probe_lr: float = 1e-3,
        probe_weight_decay: float = 1e-6,
        probe_batch_size: int = 512,
        probe_augment: bool = False,
    ):
        super().__init__()
        for name, value, allowed in (
            ("objective", objective, OBJECTIVES),
            ("probe", probe, PROBES),
            ("eval_protocol", eval_protocol, EVAL_PROTOCOLS),
        ):
            if value not in allowed:
                raise UserError(f"method.{name}={value!r} is not one of {allowed}")
        if objective == "supcon" and (hard_negative_beta or debias_tau_plus or mask_false_negatives):
            raise UserError(
                "method.objective=supcon takes its negatives from the labels; unset hard_negative_beta, "
                "debias_tau_plus and mask_false_negatives"
            )
        if temperature <= 0:
            raise UserError(f"method.temperature must be > 0, got {temperature}")
        if hasattr(backbone, "reset_classifier"):
            backbone.reset_classifier(0)  # the encoder's output is its pooled features
        self.backbone = backbone
        self.feature_dim = int(backbone.num_features)
        self.projector = ProjectionHead(self.feature_dim, projection_dims, projection_batch_norm)
        self.num_classes = num_classes
        self.num_train_examples = num_train_examples
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scheduler_interval = scheduler_interval
        self.objective, self.temperature = objective, float(temperature)
        self.hard_negative_beta, self.debias_tau_plus = float(hard_negative_beta), float(debias_tau_plus)
        self.mask_false_negatives, self.global_negatives = mask_false_negatives, global_negatives
        self.loss_backend = loss_backend
        self.eval_protocol, self.eval_every_n_epochs = eval_protocol, int(eval_every_n_epochs)
        self.knn_k, self.knn_temperature = int(knn_k), float(knn_temperature)
        self.probe, self.probe_C = probe, float(probe_C)
        self.probe_epochs, self.probe_lr = int(probe_epochs), float(probe_lr)
        self.probe_weight_decay, self.probe_batch_size = float(probe_weight_decay), int(probe_batch_size)
        self.probe_augment = probe_augment
        self.curves: dict[str, list[float]] = {"train/loss": [], "val/knn_acc": []}
        self.test_metrics: dict[str, float] = {}
        self._features_at: tuple[int, tuple[torch.Tensor, ...]] | None = None
        self.register_buffer("_epoch_stats", torch.zeros(2), persistent=False)  # loss sum, steps

    # ---- model ---------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder features (the representation that is evaluated)."""
        return self.backbone(x)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised projections (the embeddings the loss contrasts)."""
        return F.normalize(self.projector(self.backbone(x)), dim=1)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # In-memory CPU batches are already where they run; skip Lightning's per-step collection walk.
        if device.type == "cpu":
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    # ---- loss ----------------------------------------------------------------------------------------------
    def contrastive_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """This process's loss on a two-view batch: the mean over its 2B rows, against global keys."""
        # One forward pass per view, as the official DCL/HCL code: BatchNorm sees one view at a time.
        z1, z2 = self.project(batch["x1"]), self.project(batch["x2"])
        queries = torch.cat([z1, z2])
        size = z1.shape[0]
        local = torch.arange(2 * size, device=queries.device)
        if self.global_negatives:
            keys, offset = gather_with_grad(queries)
        else:
            keys, offset = queries, 0
        gather = gather_no_grad if self.global_negatives else (lambda t: t)
        if self.objective == "supcon":
            labels = batch["y"].repeat(2)
            return supcon_loss(
                queries, keys, labels, gather(labels), self.temperature, self_index=local + offset
            )
        # Labels that decide which keys are not negatives: the example id (its own two views) or, with
        # oracle masking, the true class (every same-class key).
        labels = (batch["y_clean"] if self.mask_false_negatives else batch["index"]).repeat(2)
        return info_nce(
            queries,
            keys,
            self.temperature,
            positive_index=(local + size) % (2 * size) + offset,
            query_labels=labels,
            key_labels=gather(labels),
            hard_negative_beta=self.hard_negative_beta,
            debias_tau_plus=self.debias_tau_plus,
            backend=self.loss_backend,
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.contrastive_loss(batch)
        self._epoch_stats += torch.stack([loss.detach().float(), loss.new_ones((), dtype=torch.float32)])
        return loss

    def on_train_epoch_end(self) -> None:
        loss_sum, steps = self._epoch_stats.tolist()
        self._epoch_stats.zero_()
        mean_loss = loss_sum / max(steps, 1)
        if not torch.isfinite(torch.tensor(mean_loss)):
            raise NonFiniteLossError(f"contrastive loss became {mean_loss} in epoch {self.current_epoch}")
        self.curves["train/loss"].append(mean_loss)
        log_epoch_metrics(self, {"train/loss": mean_loss})
        epoch = self.current_epoch + 1
        if self.eval_every_n_epochs > 0 and epoch % self.eval_every_n_epochs == 0 and self._datamodule():
            acc = self._knn(self._eval_features(epoch))
            self.curves["val/knn_acc"].append(acc)
            log_epoch_metrics(self, {"val/knn_acc": acc})

    def on_train_end(self) -> None:
        # Runs before Lightning's teardown moves the model off the accelerator.
        if not self.curves["train/loss"] or self._datamodule() is None:
            return
        features = self._eval_features(len(self.curves["train/loss"]))
        self.test_metrics = {"test/knn_acc": self._knn(features)}
        if self.eval_protocol == "linear":
            self.test_metrics["test/linear_acc"] = self._linear_probe(features)
        self._features_at = None

    # ---- evaluation ----------------------------------------------------------------------------------------
    def _datamodule(self) -> Any:
        trainer = self._trainer
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    @torch.no_grad()
    def _eval_features(self, epoch: int) -> tuple[torch.Tensor, ...]:
        """Encoder features and labels of the unaugmented training and test sets (cached per epoch)."""
        if self._features_at is not None and self._features_at[0] == epoch:
            return self._features_at[1]
        datamodule = self._datamodule()
        was_training = self.training
        self.eval()
        bank, bank_labels = extract_features(self, datamodule.eval_train_dataloader(), self.device)
        test, test_labels = extract_features(
            self, datamodule.test_dataloader(), self.device, label_key="y_clean"
        )
        self.train(was_training)
        self._features_at = (epoch, (bank, bank_labels, test, test_labels))
        return self._features_at[1]

    def _knn(self, features: tuple[torch.Tensor, ...]) -> float:
        bank, bank_labels, test, test_labels = features
        return knn_accuracy(
            bank,
            bank_labels,
            test,
            test_labels,
            self.num_classes,
            k=self.knn_k,
            temperature=self.knn_temperature,
        )

    def _linear_probe(self, features: tuple[torch.Tensor, ...]) -> float:
        bank, bank_labels, test, test_labels = features
        if self.probe == "logistic":
            return logistic_regression_probe(bank, bank_labels, test, test_labels, C=self.probe_C)
        train: Any = (bank, bank_labels)
        if self.probe_augment:
            loader = self._datamodule().probe_train_dataloader(self.probe_batch_size)
            train = lambda: self._encoded_batches(loader)  # noqa: E731
        with torch.enable_grad():
            return train_linear_probe(
                train,
                test,
                test_labels,
                feature_dim=self.feature_dim,
                num_classes=self.num_classes,
                epochs=self.probe_epochs,
                lr=self.probe_lr,
                weight_decay=self.probe_weight_decay,
                batch_size=self.probe_batch_size,
                seed=torch.initial_seed() % 2**31,
            )

    def _encoded_batches(self, loader: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Frozen-encoder features (eval mode) of one pass over `loader`."""
        was_training = self.training
        self.eval()
        try:
            for batch in loader:
                with torch.no_grad():
                    features = self(batch["x"].to(self.device, non_blocking=True)).float()
                yield features, batch["y"].to(self.device)
        finally:
            self.train(was_training)

    def final_metrics(self) -> dict[str, float]:
        """Metrics for the run record: test/acc (the eval_protocol's accuracy), test/knn_acc, the best
        per-epoch kNN accuracy, test/linear_acc when the probe ran, and the last epoch's loss."""
        if not self.test_metrics:
            return {}
        key = "test/knn_acc" if self.eval_protocol == "knn" else "test/linear_acc"
        metrics = {"test/acc": self.test_metrics[key], **self.test_metrics}
        if self.curves["val/knn_acc"]:
            metrics["test/knn_acc_best"] = max(self.curves["val/knn_acc"])
        metrics["train/loss"] = self.curves["train/loss"][-1]
        return metrics

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }
