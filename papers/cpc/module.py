"""DivideMix-style training with a choice of label-noise cleaner (global GMM, per-class GMM, CPC).

One network (co-divide omitted, see README.md): CE warm-up, then every epoch a division of the training set
into a labeled (clean) and an unlabeled (noisy) part by the cleaner, and DivideMix's MixMatch step on each
batch, whose examples fall on either side according to the division. The second network of DivideMix's
label co-guessing is replaced by an EMA copy of the network (`common.lit.ema.EMATeacher`). With
``cleaner="cpc"`` the prototypes of the division also regularise the labeled features (intra-class
consistency) during the epoch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common.data.transforms import GaussianNoise, RandomTranslate, random_horizontal_flip
from common.lit import ClassificationModule
from common.lit.ema import EMATeacher
from common.lit.epoch_metrics import log_epoch_metrics
from common.registry import register_method
from papers.cpc.cleaner import (
    CLEANERS,
    class_prototypes,
    clean_probability,
    ema_prototypes,
    partition_quality,
    prototype_nll,
)
from papers.cpc.mixmatch import (
    linear_rampup,
    mixmatch_losses,
    negative_entropy,
    prior_penalty,
    refine_labels,
    sharpen,
)

NO_CLEANER = "none"
PARTITION_KEYS = ("precision", "recall", "f1", "selected", "f1_worst_class")


@register_method("cpc")
class CPCModule(ClassificationModule):
    """Warm-up with cross entropy, then divide-and-MixMatch with the chosen cleaner.

    Args (beyond ClassificationModule's):
        cleaner: ``none`` (cross entropy all along: the CE baseline), ``global_gmm`` (DivideMix),
            ``per_class_gmm`` or ``cpc``.
        warmup_epochs: cross-entropy epochs before the first division (DivideMix: 10 CIFAR-10, 30 CIFAR-100).
        p_threshold: clean if the posterior exceeds it (DivideMix 0.5).
        lambda_u, rampup_epochs, sharpen_temperature, mixup_alpha: DivideMix's MixMatch settings.
        confidence_penalty: add DivideMix's negative-entropy penalty in warm-up (its asymmetric setting).
        proto_weight: weight of the prototype (intra-class consistency) loss on labeled examples (cpc only).
        proto_temperature: temperature of the prototype classifier (cleaner score and regulariser).
        proto_momentum: EMA momentum of the prototypes from one division to the next.
        ema_decay: decay of the EMA network that co-guesses the unlabeled labels.
        flip, max_shift, noise_std: batch augmentations of images (flip, shift with zero fill) and inputs.
    """

    clean_prob: torch.Tensor
    clean_mask: torch.Tensor
    prototypes: torch.Tensor

    def __init__(
        self,
        *args: Any,
        cleaner: str = "cpc",
        warmup_epochs: int = 10,
        p_threshold: float = 0.5,
        lambda_u: float = 25.0,
        rampup_epochs: float = 16.0,
        sharpen_temperature: float = 0.5,
        mixup_alpha: float = 4.0,
        confidence_penalty: bool = False,
        proto_weight: float = 1.0,
        proto_temperature: float = 0.1,
        proto_momentum: float = 0.9,
        ema_decay: float = 0.99,
        flip: bool = False,
        max_shift: int = 0,
        noise_std: float = 0.0,
        gmm_max_iter: int = 10,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        if cleaner not in (*CLEANERS, NO_CLEANER):
            raise ValueError(f"method.cleaner must be one of {(*CLEANERS, NO_CLEANER)}; got {cleaner!r}")
        if warmup_epochs < 1 and cleaner != NO_CLEANER:
            raise ValueError("method.warmup_epochs must be >= 1: the first division needs a trained network")
        self.cleaner, self.warmup_epochs, self.p_threshold = cleaner, int(warmup_epochs), float(p_threshold)
        self.lambda_u, self.rampup_epochs = float(lambda_u), float(rampup_epochs)
        self.sharpen_temperature, self.mixup_alpha = float(sharpen_temperature), float(mixup_alpha)
        self.confidence_penalty = bool(confidence_penalty)
        self.proto_weight = float(proto_weight) if cleaner == "cpc" else 0.0
        self.proto_temperature, self.proto_momentum = float(proto_temperature), float(proto_momentum)
        self.gmm_max_iter = int(gmm_max_iter)
        self.flip = bool(flip)
        self.translate = RandomTranslate(int(max_shift), always=True)
        self.noise = GaussianNoise(float(noise_std), always=True)
        n, c = self.num_train_examples, self.num_classes
        self.register_buffer("clean_prob", torch.ones(n))
        self.register_buffer("clean_mask", torch.ones(n, dtype=torch.bool))
        self.register_buffer("prototypes", torch.zeros(c, self.backbone.num_features))
        self.teacher = (
            EMATeacher(self.backbone, decay=ema_decay, warmup="mean_teacher")
            if cleaner != NO_CLEANER
            else None
        )
        self.divisions: list[dict[str, float]] = []
        for key in PARTITION_KEYS:
            self.curves[f"partition/{key}"] = []

    # ---- pieces -------------------------------------------------------------------------------------------
    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            if self.flip:
                x = random_horizontal_flip(x)
            x = self.translate(x)
        return self.noise(x)

    def _features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features and logits in one pass (timm and our small nets share this interface)."""
        maps = self.backbone.forward_features(x)
        return self.backbone.forward_head(maps, pre_logits=True), self.backbone.forward_head(maps)

    def _in_ssl_phase(self) -> bool:
        return self.cleaner != NO_CLEANER and self.current_epoch >= self.warmup_epochs

    def _record_stats(self, loss: torch.Tensor, preds: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            noisy = batch["y"] != batch["y_clean"]
            fit_noisy = ((preds == batch["y"]) & noisy).sum()
            self._epoch_stats += torch.stack(
                [loss.detach().float(), loss.new_ones(()), fit_noisy, noisy.sum()]
            )

    # ---- division (E-step) --------------------------------------------------------------------------------
    @torch.no_grad()
    def divide(self, loader: Any) -> dict[str, float]:
        """Evaluate every training example, fit the cleaner, set the clean posterior and mask; returns the
        partition's precision / recall / F1 against the truly clean labels."""
        was_training = self.training
        self.eval()
        n = self.num_train_examples
        losses = torch.zeros(n, device=self.device)
        features = torch.zeros(n, self.backbone.num_features, device=self.device)
        labels = torch.zeros(n, dtype=torch.long, device=self.device)
        clean = torch.zeros(n, dtype=torch.long, device=self.device)
        for batch in loader:
            index = batch["index"].to(self.device)
            feats, logits = self._features_and_logits(batch["x"].to(self.device))
            y = batch["y"].to(self.device)
            losses[index] = F.cross_entropy(logits.float(), y, reduction="none")
            features[index] = feats.float()
            labels[index], clean[index] = y, batch["y_clean"].to(self.device)
        self.train(was_training)
        proto_losses = None
        if self.cleaner == "cpc":
            # M-step for the prototypes: weights = the previous division's posterior (all ones at first).
            current, mass = class_prototypes(features, labels, self.num_classes, self.clean_prob)
            self.prototypes.copy_(ema_prototypes(self.prototypes, current, self.proto_momentum, mass > 0))
            proto_losses = prototype_nll(features, labels, self.prototypes, self.proto_temperature)
        prob = clean_probability(
            self.cleaner,
            losses,
            labels,
            self.num_classes,
            prototype_losses=proto_losses,
            seed=len(self.divisions),
            max_iter=self.gmm_max_iter,
        )
        prob_t = torch.as_tensor(prob, dtype=torch.float32, device=self.device)
        self.clean_prob.copy_(prob_t)
        self.clean_mask.copy_(prob_t > self.p_threshold)
        lab = labels.cpu().numpy()
        quality = partition_quality(
            self.clean_mask.cpu().numpy(), lab == clean.cpu().numpy(), lab, self.num_classes
        )
        self.divisions.append(quality)
        for key in PARTITION_KEYS:
            self.curves[f"partition/{key}"].append(quality[key])
        return quality

    def on_train_epoch_start(self) -> None:
        if not self._in_ssl_phase():
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            raise RuntimeError(
                "the cpc method divides the training set every epoch: fit it with a datamodule"
            )
        loader = datamodule.loader(datamodule.train_dataset(), shuffle=False, train=False)
        quality = self.divide(loader)
        log_epoch_metrics(self, {f"partition/{k}": v for k, v in quality.items()})

    # ---- training (M-step) --------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if not self._in_ssl_phase():
            logits = self(self._augment(batch["x"]))
            loss = F.cross_entropy(logits, batch["y"])
            if self.confidence_penalty:
                loss = loss + negative_entropy(logits)
            self._record_stats(loss, logits.detach().argmax(1), batch)
            return loss
        return self._ssl_step(batch, batch_idx)

    def _ssl_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch["x"], batch["y"]
        mask = self.clean_mask[batch["index"].to(self.clean_mask.device)].to(x.device)
        weight = self.clean_prob[batch["index"].to(self.clean_prob.device)].to(x.device)
        x_l, y_l, w_l, x_u = x[mask], y[mask], weight[mask], x[~mask]
        n_l, n_u, temp = len(x_l), len(x_u), self.sharpen_temperature
        views_l = torch.cat([self._augment(x_l), self._augment(x_l)])
        views_u = torch.cat([self._augment(x_u), self._augment(x_u)])
        preds = torch.empty_like(y)
        targets = []
        if n_l:
            use_proto = self.proto_weight > 0 and bool(self.prototypes.norm(dim=1).gt(0).any())
            with torch.set_grad_enabled(use_proto):
                feats_l, logits_l = self._features_and_logits(views_l)
            with torch.no_grad():
                probs_l = F.softmax(logits_l.detach().float(), dim=1)
                targets_x = refine_labels((probs_l[:n_l] + probs_l[n_l:]) / 2, y_l, w_l, temp)
            targets += [targets_x, targets_x]
            preds[mask] = probs_l[:n_l].argmax(1)
        if n_u:
            with torch.no_grad():
                # Label co-guessing by the network and its EMA copy on two views (DivideMix: two networks).
                student = F.softmax(self(views_u).float(), dim=1)
                teacher = F.softmax(self.teacher(views_u).float(), dim=1)
                guess = (student[:n_u] + student[n_u:] + teacher[:n_u] + teacher[n_u:]) / 4
                targets_u = sharpen(guess, temp)
            targets += [targets_u, targets_u]
            preds[~mask] = student[:n_u].argmax(1)
        all_inputs, all_targets = torch.cat([views_l, views_u]), torch.cat(targets)
        lam = float(torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha).sample())
        lam = max(lam, 1.0 - lam)
        perm = torch.randperm(len(all_inputs), device=all_inputs.device)
        mixed_input = lam * all_inputs + (1 - lam) * all_inputs[perm]
        mixed_target = lam * all_targets + (1 - lam) * all_targets[perm]
        logits = self(mixed_input)
        loss_x, loss_u = mixmatch_losses(logits, mixed_target, 2 * n_l)
        num_batches = max(int(self.trainer.num_training_batches), 1) if self._trainer is not None else 1
        ramp = linear_rampup(
            self.current_epoch + batch_idx / num_batches, self.warmup_epochs, self.rampup_epochs
        )
        loss = loss_x + self.lambda_u * ramp * loss_u + prior_penalty(logits)
        if n_l and self.proto_weight > 0 and feats_l.requires_grad:
            proto = prototype_nll(feats_l.float(), y_l.repeat(2), self.prototypes, self.proto_temperature)
            loss = loss + self.proto_weight * proto.mean()
        self._record_stats(loss, preds, batch)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.teacher is not None:
            self.teacher.update(self.backbone)

    # ---- record -------------------------------------------------------------------------------------------
    def final_metrics(self) -> dict[str, float]:
        """ClassificationModule's accuracies plus the partition quality at the first and last division and
        averaged over all divisions."""
        metrics = super().final_metrics()
        if metrics and self.divisions:
            for key in PARTITION_KEYS:
                values = [d[key] for d in self.divisions]
                metrics[f"partition/{key}_first"] = values[0]
                metrics[f"partition/{key}_last"] = values[-1]
                metrics[f"partition/{key}_mean"] = float(np.mean(values))
            metrics["partition/divisions"] = float(len(self.divisions))
        return metrics
