"""Protect part of a training set, train a victim from scratch on it, test on clean data
(`method=unlearnable_bayes_{none,random,error_min,beo,clean_only}`).

One run: choose the protected examples (`protection.protected_fraction` of the training set, seeded), perturb
them with the row's method inside an L_inf ball of radius `protection.eps` (pixels in [0, 1]), train a fresh
victim (the table's model, optimiser and schedule) on the clean rest plus the protected part, and evaluate it
on the clean test split. `clean_only` drops the protected part instead (the reference of the mixed setting).
The record also holds the kernel Bayes-error estimate of the victim's training set and of the same examples
without perturbation (`be_hat/...`, %, one fixed estimator for every row), and BEO's objective per step."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from common.data.datamodule import TensorBatchDataset
from common.data.transforms import RandomTranslate, random_horizontal_flip
from common.errors import UserError
from common.lit import Pipeline, RunContext
from common.registry import register_method
from papers.unlearnable_bayes.bayes_error import kernel_bayes_error
from papers.unlearnable_bayes.perturbations import (
    bayes_error_pga,
    error_minimising_noise,
    random_noise,
)

log = logging.getLogger("pnu.unlearnable_bayes")

PERTURBATIONS = ("none", "random", "error_min", "beo", "clean_only")


class ImageBatchDataset(TensorBatchDataset):
    """In-memory training batches of pixels in [0, 1], normalised by `mean`/`std` (None: as they are) after
    an optional CIFAR augmentation (pad-4 random crop as a random translation with zero fill, horizontal
    flip)."""

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        augment: bool = False,
    ):
        super().__init__(tensors)
        self.normalise = Normalise(mean, std)
        self.translate = RandomTranslate(max_shift=4, fill=0.0, always=True) if augment else None

    def __getitem__(self, indices: Any) -> dict[str, torch.Tensor]:
        batch = super().__getitem__(indices)
        x = batch["x"]
        if self.translate is not None:
            x = random_horizontal_flip(self.translate(x))
        return {**batch, "x": self.normalise(x)}


class Normalise(nn.Module):
    """(x - mean) / std per channel; the identity when `mean` is None."""

    def __init__(self, mean: tuple[float, ...] | None, std: tuple[float, ...] | None):
        super().__init__()
        self.enabled = mean is not None
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", torch.tensor(mean or (0.0,)).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(std or (1.0,)).view(shape), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device) if self.enabled else x


class ProtectionPipeline(Pipeline):
    """Perturb the protected part with `perturbation`, train the victim, report clean test accuracy."""

    perturbation: str

    def __init__(self, **params: Any) -> None:
        if params:
            raise UserError(
                f"{type(self).__name__} takes no method parameters (set `protection.*`): {params}"
            )

    def run(self, context: RunContext) -> dict[str, float]:
        cfg, datamodule = context.cfg, context.datamodule
        settings = OmegaConf.select(cfg, "protection", default=None)
        if settings is None:
            raise UserError("unlearnable_bayes methods need a `protection` section (set by the table)")
        seed = int(cfg.seed)
        device = _device(cfg)
        x, labels = training_images(datamodule)
        x, labels = x.to(device), labels.to(device)
        num_protected = int(round(float(settings.protected_fraction) * len(x)))
        order = torch.from_numpy(np.random.default_rng([seed, 7]).permutation(len(x))).to(device)
        protected, clean = order[:num_protected], order[num_protected:]
        if num_protected == 0 and self.perturbation != "none":
            raise UserError("protection.protected_fraction leaves nothing to protect")

        metrics: dict[str, float] = {}
        x_protected = self.perturb(context, settings, x[protected], labels[protected], seed, metrics)
        x_train = x.clone()
        x_train[protected] = x_protected
        keep = clean if self.perturbation == "clean_only" else order
        if len(keep) == 0:
            raise UserError("clean_only with protected_fraction = 1 leaves no training data")
        metrics["protection/linf"] = float((x_train - x).abs().max()) * 255
        metrics["protection/protected_fraction"] = num_protected / len(x)
        metrics["train_size"] = float(len(keep))
        metrics.update(self.estimate_bayes_error(settings, x, x_train, labels, keep, protected, seed))
        metrics.update(self.train_victim(context, settings, x_train[keep].cpu(), labels[keep].cpu()))
        return metrics

    # ---- perturbations ---------------------------------------------------------------------------------
    def perturb(
        self,
        context: RunContext,
        settings: DictConfig,
        x: torch.Tensor,
        labels: torch.Tensor,
        seed: int,
        metrics: dict[str, float],
    ) -> torch.Tensor:
        """The protected examples after the row's perturbation (unchanged for none and clean_only)."""
        return x

    # ---- the victim and the estimate, shared by every row --------------------------------------------
    def train_victim(
        self, context: RunContext, settings: DictConfig, x: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, float]:
        datamodule = context.datamodule
        torch.manual_seed(int(context.cfg.seed) * 1000 + 29)
        dataset = _dataset(datamodule, x, labels, augment=bool(settings.augment))
        module = context.make_module({"name": "ce"})
        trainer = context.make_trainer()
        trainer.fit(
            module,
            train_dataloaders=datamodule.loader(dataset, shuffle=True),
            val_dataloaders=datamodule.val_dataloader(),
        )
        context.curves.update({k: list(v) for k, v in module.curves.items() if v})
        return module.final_metrics()

    def estimate_bayes_error(
        self,
        settings: DictConfig,
        x: torch.Tensor,
        x_train: torch.Tensor,
        labels: torch.Tensor,
        keep: torch.Tensor,
        protected: torch.Tensor,
        seed: int,
    ) -> dict[str, float]:
        """Kernel BE_hat (%) in pixel space with `protection.estimate.sigma`: of the victim's training set
        as perturbed (`be_hat/train`) and without perturbation (`be_hat/train_clean`), and of the protected
        part alone (`be_hat/protected`, `be_hat/protected_clean`); at most `max_examples` examples each."""
        spec = settings.estimate
        num_classes = int(labels.max()) + 1
        sigma = float(spec.sigma)
        limit = spec.get("max_examples")
        rng = np.random.default_rng([seed, 31])
        out: dict[str, float] = {}
        with torch.no_grad():
            for name, index in (("train", keep), ("protected", protected)):
                if len(index) < 2:
                    continue
                if limit is not None and len(index) > int(limit):
                    index = index[
                        torch.from_numpy(rng.choice(len(index), int(limit), replace=False)).to(x.device)
                    ]
                for suffix, source in (("", x_train), ("_clean", x)):
                    value = kernel_bayes_error(source[index].flatten(1), labels[index], num_classes, sigma)
                    out[f"be_hat/{name}{suffix}"] = 100 * float(value)
        if "be_hat/train" in out:
            out["be_hat/train_increase"] = out["be_hat/train"] - out["be_hat/train_clean"]
        return out


@register_method("unlearnable_bayes_none")
class NoProtection(ProtectionPipeline):
    """No perturbation: the clean training set (the 'clean' reference row)."""

    perturbation = "none"


@register_method("unlearnable_bayes_clean_only")
class CleanOnly(ProtectionPipeline):
    """The protected part is left out: the victim sees only the clean rest."""

    perturbation = "clean_only"


@register_method("unlearnable_bayes_random")
class RandomNoiseProtection(ProtectionPipeline):
    """Uniform random noise in [-eps, eps] on every protected pixel."""

    perturbation = "random"

    def perturb(
        self,
        context: RunContext,
        settings: DictConfig,
        x: torch.Tensor,
        labels: torch.Tensor,
        seed: int,
        metrics: dict[str, float],
    ) -> torch.Tensor:
        return random_noise(x, float(settings.eps), torch.Generator().manual_seed(seed * 1000 + 11))


@register_method("unlearnable_bayes_error_min")
class ErrorMinimisingProtection(ProtectionPipeline):
    """Sample-wise error-minimising noise (Huang et al. 2021) from a model of the victim's architecture."""

    perturbation = "error_min"

    def perturb(
        self,
        context: RunContext,
        settings: DictConfig,
        x: torch.Tensor,
        labels: torch.Tensor,
        seed: int,
        metrics: dict[str, float],
    ) -> torch.Tensor:
        spec = settings.error_min
        torch.manual_seed(seed * 1000 + 13)
        backbone = context.make_module({"name": "ce"}).backbone.to(x.device)
        model = nn.Sequential(Normalise(*_normalisation(context.datamodule)), backbone)
        optimizer = torch.optim.SGD(
            model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
        )
        cap = _smoke_cap(context.cfg)
        result = error_minimising_noise(
            x,
            labels,
            model,
            optimizer,
            eps=float(settings.eps),
            step_size=float(spec.step_size),
            pgd_steps=_capped(int(spec.pgd_steps), cap),
            train_steps=_capped(int(spec.train_steps), cap),
            batch_size=int(spec.batch_size),
            stop_error=float(spec.stop_error),
            max_rounds=_capped(int(spec.max_rounds), cap),
            generator=torch.Generator().manual_seed(seed * 1000 + 17),
        )
        metrics["error_min/rounds"] = float(result.rounds)
        metrics["error_min/train_error"] = 100 * result.train_error
        return result.x


@register_method("unlearnable_bayes_beo")
class BayesErrorProtection(ProtectionPipeline):
    """BEO: projected gradient ascent on the kernel Bayes-error estimate of the protected examples, in the
    pixel space or the penultimate features of a surrogate (retrained on the current perturbed data every
    round, as the official cifar10-retrain.py does)."""

    perturbation = "beo"

    def perturb(
        self,
        context: RunContext,
        settings: DictConfig,
        x: torch.Tensor,
        labels: torch.Tensor,
        seed: int,
        metrics: dict[str, float],
    ) -> torch.Tensor:
        spec = settings.beo
        cap = _smoke_cap(context.cfg)
        rounds = _capped(int(spec.rounds), cap)
        steps = _capped(int(spec.steps_per_round), cap)
        if spec.features not in ("pixels", "surrogate"):
            raise UserError(f"protection.beo.features must be pixels or surrogate, got {spec.features!r}")
        generator = torch.Generator().manual_seed(seed * 1000 + 19)
        num_classes = int(context.datamodule.num_classes)
        current, history = x, []
        for round_index in range(rounds):
            features = None
            if spec.features == "surrogate":
                torch.manual_seed(seed * 1000 + 23 + round_index)
                features = self.train_surrogate(context, settings, current, labels)
            result = bayes_error_pga(
                x,
                labels,
                num_classes,
                eps=float(settings.eps),
                steps=steps,
                step_size=float(spec.step_size),
                sigma=float(spec.sigma),
                features=features,
                normalise=bool(spec.normalise),
                batch_size=spec.get("batch_size"),
                init=current - x,
                generator=generator,
            )
            current = result.x
            history += result.history if round_index == 0 else result.history[1:]
        context.curves["beo/be_hat"] = [100 * v for v in history]
        metrics["beo/objective_start"] = 100 * history[0]
        metrics["beo/objective_end"] = 100 * history[-1]
        return current

    def train_surrogate(
        self, context: RunContext, settings: DictConfig, x: torch.Tensor, labels: torch.Tensor
    ) -> Any:
        """A fresh model of the victim's architecture trained on `(x, labels)`; returns its feature map
        (pre-logits of normalised inputs), frozen."""
        datamodule = context.datamodule
        dataset = _dataset(datamodule, x.cpu(), labels.cpu(), augment=bool(settings.augment))
        module = context.make_module({"name": "ce"})
        trainer = context.make_trainer(max_epochs=int(settings.beo.surrogate_epochs))
        trainer.fit(module, train_dataloaders=datamodule.loader(dataset, shuffle=True))
        backbone = module.backbone.to(x.device).eval()
        backbone.requires_grad_(False)
        normalise = Normalise(*_normalisation(datamodule))

        def features(inputs: torch.Tensor) -> torch.Tensor:
            return backbone.forward_head(backbone.forward_features(normalise(inputs)), pre_logits=True)

        return features


# ---- data helpers ------------------------------------------------------------------------------------------
def training_images(datamodule: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The training inputs as float pixels in [0, 1] `(N, C, H, W)` and their labels. Hub images are decoded
    once (uint8 -> [0, 1]); in-memory sources (digits: already [0, 1]) are used as they are."""
    labels = torch.as_tensor(np.asarray(datamodule.train_labels), dtype=torch.long)
    if datamodule.source == "hub":
        split = datamodule.train_dataset()
        images = np.stack(
            [np.asarray(split.split[int(i)][split.image_key].convert("RGB")) for i in split.positions]
        )
        return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255), labels
    return datamodule.train_x.float(), labels


def _normalisation(datamodule: Any) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """Hub images are normalised by the data config's mean/std; in-memory sources are used as they are."""
    if datamodule.source == "hub":
        return tuple(datamodule.mean), tuple(datamodule.std)
    return None, None


def _dataset(datamodule: Any, x: torch.Tensor, labels: torch.Tensor, augment: bool) -> ImageBatchDataset:
    mean, std = _normalisation(datamodule)
    tensors = {"x": x, "y": labels, "y_clean": labels, "index": torch.arange(len(labels))}
    return ImageBatchDataset(tensors, mean, std, augment=augment and x.dim() == 4)


def _device(cfg: DictConfig) -> torch.device:
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
    return torch.device("cuda" if torch.cuda.is_available() and accelerator != "cpu" else "cpu")


def _smoke_cap(cfg: DictConfig) -> int | None:
    """An integer `trainer.limit_train_batches` (the config smoke test) also caps the perturbation loops."""
    limit = OmegaConf.select(cfg, "trainer.limit_train_batches", default=None)
    return int(limit) if isinstance(limit, int) and not isinstance(limit, bool) else None


def _capped(value: int, cap: int | None) -> int:
    return value if cap is None else max(1, min(value, cap))
