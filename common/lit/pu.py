"""Binary classifiers trained from positive and unlabelled data: uPU, nnPU, VPU, and the supervised PN oracle.

All are `ClassificationModule`s with two output columns; the score g(x) = logit_1 - logit_0 is what uPU and
nnPU risk, and log Phi(x) = log_softmax(logits)[:, 1] is VPU's positive probability, so the class predicted
(argmax) is g > 0, i.e. Phi > 1/2, for every method. Batches come from `pu_binary` (`y`: 1 for a labelled
positive, 0 unlabelled; `y_clean`: the true label). Besides accuracy, validation records the AUROC of the
score on the clean test split (`val/auroc`, final `test/auroc`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from common.errors import UserError
from common.lit.classification import ClassificationModule
from common.lit.epoch_metrics import log_epoch_metrics
from common.losses.pu import SURROGATES, nnpu_risk, upu_risk, vpu_loss, vpu_mixup_regularizer
from common.registry import register_method


class PUModule(ClassificationModule):
    """Shared PU machinery: the class prior (given, or the data's `unlabeled_prior`) and the AUROC."""

    def __init__(self, *args: Any, prior: float | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.num_classes != 2:
            raise UserError(f"{type(self).__name__} is a binary classifier; use data.datamodule=pu_binary")
        self.prior = prior
        self.curves["val/auroc"] = []
        self._scores: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def on_fit_start(self) -> None:
        if self.prior is None:
            self.prior = getattr(self.trainer.datamodule, "unlabeled_prior", None)
        if self.prior is None or not 0 < float(self.prior) < 1:
            raise UserError(f"{type(self).__name__} needs method.prior in (0, 1), or a pu_binary data module")

    @staticmethod
    def score(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 1] - logits[:, 0]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch["x"])  # one forward for both the accuracy and the AUROC
        self.count_correct(logits, batch)
        self._scores.append(self.score(logits).detach())
        self._labels.append(batch["y_clean"])

    def on_validation_epoch_end(self) -> None:
        from torchmetrics.functional.classification import binary_auroc

        scores, labels = torch.cat(self._scores), torch.cat(self._labels)
        self._scores, self._labels = [], []
        sanity = self.trainer.sanity_checking
        super().on_validation_epoch_end()
        if sanity:
            return
        auroc = 100.0 * float(binary_auroc(scores, labels))
        self.curves["val/auroc"].append(auroc)
        log_epoch_metrics(self, {"val/auroc": auroc})

    def final_metrics(self) -> dict[str, float]:
        metrics = super().final_metrics()
        if self.curves["val/auroc"]:
            metrics["test/auroc"] = self.curves["val/auroc"][-1]
        return metrics


@register_method("pn_oracle")
class PNOracleModule(PUModule):
    """Cross entropy on the true labels of every training example: the supervised upper reference."""

    def compute_loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(logits, batch["y_clean"])


@register_method("upu")
class UPUModule(PUModule):
    """Unbiased PU risk (du Plessis et al., 2015) of the score, sigmoid surrogate by default."""

    def __init__(self, *args: Any, surrogate: str = "sigmoid", **kwargs: Any):
        super().__init__(*args, **kwargs)
        if surrogate not in SURROGATES:
            raise UserError(f"method.surrogate must be one of {SURROGATES}, got {surrogate!r}")
        self.surrogate = surrogate

    def compute_loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return upu_risk(self.score(logits), batch["y"], float(self.prior), surrogate=self.surrogate).loss


@register_method("nnpu")
class NNPUModule(UPUModule):
    """Non-negative PU risk (Kiryo et al., 2017): the negative part is kept above -beta by a defitting step
    of weight gamma."""

    def __init__(self, *args: Any, beta: float = 0.0, gamma: float = 1.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.beta, self.gamma = beta, gamma

    def compute_loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        scores = self.score(logits)
        return nnpu_risk(
            scores, batch["y"], float(self.prior), beta=self.beta, gamma=self.gamma, surrogate=self.surrogate
        ).loss


@register_method("vpu")
class VPUModule(PUModule):
    """Variational PU (Chen et al., 2020): no class prior; the MixUp regulariser (weight `mix_weight`, one
    lam ~ Beta(mix_alpha, mix_alpha) per batch, each unlabelled example mixed with a random labelled positive
    of the batch)."""

    def __init__(self, *args: Any, mix_alpha: float = 0.3, mix_weight: float = 0.03, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.mix_alpha, self.mix_weight = mix_alpha, mix_weight

    def on_fit_start(self) -> None:  # VPU needs no class prior
        pass

    def compute_loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        log_phi = F.log_softmax(logits, dim=1)[:, 1]
        labeled = batch["y"] == 1
        if not labeled.any():
            return log_phi.sum() * 0.0  # no positive in the batch: nothing to learn from
        loss = vpu_loss(log_phi, log_phi[labeled])
        unlabeled = ~labeled
        if self.mix_weight > 0 and unlabeled.any():
            x_u, x_p = batch["x"][unlabeled], batch["x"][labeled]
            pick = torch.randint(len(x_p), (len(x_u),), device=x_u.device)
            lam = torch.distributions.Beta(self.mix_alpha, self.mix_alpha).sample().to(x_u.device)
            mixed = lam * x_u + (1 - lam) * x_p[pick]
            log_phi_mixed = F.log_softmax(self(mixed), dim=1)[:, 1]
            phi_unlabeled = log_phi[unlabeled].detach().exp()
            loss = loss + self.mix_weight * vpu_mixup_regularizer(log_phi_mixed, phi_unlabeled, lam)
        return loss
