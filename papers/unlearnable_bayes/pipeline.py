"""Protect part of a training set, train a victim from scratch on it, test on clean data
(`method=unlearnable_bayes_{none,random,error_min,beo,clean_only}`).

One run: choose the protected examples (`protection.protected_fraction` of the training set, seeded), perturb
them with the row's method inside an L_inf ball of radius `protection.eps` (pixels in [0, 1]), train a fresh
victim (the table's model, optimiser and schedule) on the clean rest plus the protected part, and evaluate it
on the clean test split. `clean_only` drops the protected part instead (the reference of the mixed setting).
The record also holds the kernel Bayes-error estimate of the victim's training set and of the same examples
without perturbation (`be_hat/...`, %, one fixed estimator for every row), and BEO's objective per step.

Stages (`common.lit.stages`, under ``<output_root>/stages/unlearnable_bayes/``), each keyed by what decides
it plus the code, so a rerun or a requeued task reuses the finished ones and resumes a killed fit from its
last epoch, and cells that need the same work share it:
- ``victim``: the victim's fit, keyed by a digest of its training set (and data, model, optim, trainer,
  augmentation, seed), so runs that train on the same data (the clean row's two columns) share it;
- ``error_min_noise``: the error-minimising noise, a Lightning fit of one epoch per round, keyed by the
  protected examples and its own settings (not the victim's schedule);
- ``beo_round``: one BEO round (the perturbed examples, the objective per step and the ascent's generator
  state), keyed by the round index and BEO's settings; its surrogate's fit is the stage ``beo_surrogate``.
The stages are unseeded and set the torch seed from the run's seed where the code always did, so their
results are those of the plain runs. Random noise (one draw) and the BE_hat estimates (one kernel pass) are
recomputed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from common.data.datamodule import TensorBatchDataset
from common.data.transforms import RandomTranslate, random_horizontal_flip
from common.errors import UserError
from common.lit import Pipeline, RunContext
from common.registry import register_method
from papers.unlearnable_bayes.bayes_error import kernel_bayes_error, max_abs_normalise
from papers.unlearnable_bayes.perturbations import ErrorMinimisingNoise, bayes_error_pga, random_noise

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
        victim_metrics, victim = self.train_victim(context, settings, x_train[keep].cpu(), labels[keep].cpu())
        metrics.update(victim_metrics)
        metrics.update(
            self.estimate_feature_bayes_error(
                context, settings, victim, x, x_train, labels, keep, protected, seed
            )
        )
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
    ) -> tuple[dict[str, float], L.LightningModule]:
        """The victim's fit (stage `victim`), keyed by a digest of its training set `(x, labels)`: its final
        metrics and the fitted module."""
        datamodule = context.datamodule
        torch.manual_seed(int(context.cfg.seed) * 1000 + 29)
        dataset = _dataset(datamodule, x, labels, augment=bool(settings.augment))
        config = {
            **stage_config(context, "optim", "protection.augment"),
            "trainer": trainer_config(context.cfg),
            "train_x": _digest(x),
            "train_labels": _digest(labels),
        }
        module = _fit(
            context,
            "victim",
            config,
            lambda: context.make_module({"name": "ce"}),
            train_dataloaders=datamodule.loader(dataset, shuffle=True),
            val_dataloaders=datamodule.val_dataloader(),
        )
        context.curves.update({k: list(v) for k, v in module.curves.items() if v})
        return module.final_metrics(), module

    def estimate_feature_bayes_error(
        self,
        context: RunContext,
        settings: DictConfig,
        victim: L.LightningModule,
        x: torch.Tensor,
        x_train: torch.Tensor,
        labels: torch.Tensor,
        keep: torch.Tensor,
        protected: torch.Tensor,
        seed: int,
    ) -> dict[str, float]:
        """Kernel BE_hat (%) as the official code measures it: on the max-|.|-scaled penultimate features of a
        network trained on the data, here the row's own victim (`protection.estimate.feature_sigma`). Of the
        protected examples as the victim saw them (`be_hat/protected`), of the same examples clean through
        the same victim (`be_hat/protected_clean`), and of its whole training set (`be_hat/train`); at most
        `max_examples` examples each. Without `feature_sigma` the pixel-space estimate keeps these names."""
        spec = settings.estimate
        sigma = spec.get("feature_sigma")
        if sigma is None:
            return {}
        features = _feature_map(victim, context.datamodule, x.device)
        num_classes = int(labels.max()) + 1
        limit = spec.get("max_examples")
        rng = np.random.default_rng([seed, 37])
        out: dict[str, float] = {}
        sets = (("train", keep, x_train), ("protected", protected, x_train), ("protected_clean", protected, x))
        for name, index, source in sets:
            if len(index) < 2:
                continue
            if limit is not None and len(index) > int(limit):
                chosen = rng.choice(len(index), int(limit), replace=False)
                index = index[torch.from_numpy(chosen).to(x.device)]
            with torch.no_grad():
                embedded = torch.cat([features(part) for part in source[index].split(1024)])
                value = kernel_bayes_error(max_abs_normalise(embedded), labels[index], num_classes, float(sigma))
            out[f"be_hat/{name}"] = 100 * float(value)
        return out

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
        # With a feature-space estimate (the claims' `be_hat/*`), the pixel-space one is `be_hat_pixels/*`.
        prefix = "be_hat" if spec.get("feature_sigma") is None else "be_hat_pixels"
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
                    out[f"{prefix}/{name}{suffix}"] = 100 * float(value)
        if f"{prefix}/train" in out:
            out[f"{prefix}/train_increase"] = out[f"{prefix}/train"] - out[f"{prefix}/train_clean"]
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
        cap = _smoke_cap(context.cfg)
        params = {
            "eps": float(settings.eps),
            "step_size": float(spec.step_size),
            "lr": float(spec.lr),
            "momentum": float(spec.momentum),
            "weight_decay": float(spec.weight_decay),
            "pgd_steps": _capped(int(spec.pgd_steps), cap),
            "train_steps": _capped(int(spec.train_steps), cap),
            "batch_size": int(spec.batch_size),
            "stop_error": float(spec.stop_error),
        }
        # One epoch per round, in full precision as the official loop (and this one before) ran: the paper
        # scale's bf16-mixed is for the victim. The settings Lightning refuses with manual optimisation go.
        overrides = {
            "max_epochs": _capped(int(spec.max_rounds), cap),
            "max_steps": -1,
            "limit_train_batches": None,
            "precision": "32-true",
            "accumulate_grad_batches": 1,
            "gradient_clip_val": None,
        }

        def make_module() -> ErrorMinimisingNoise:
            torch.manual_seed(seed * 1000 + 13)
            backbone = context.make_module({"name": "ce"}).backbone.to(x.device)
            model = nn.Sequential(Normalise(*_normalisation(context.datamodule)), backbone)
            return ErrorMinimisingNoise(x, labels, model, generator_seed=seed * 1000 + 17, **params)

        config = {
            **stage_config(context),
            "trainer": trainer_config(context.cfg, overrides),
            "protected_x": _digest(x),
            "protected_labels": _digest(labels),
            "error_min": params,
        }
        noise = _fit(
            context,
            "error_min_noise",
            config,
            make_module,
            trainer_overrides=overrides,
            train_dataloaders=ErrorMinimisingNoise.one_batch_per_round(),
        )
        metrics["error_min/rounds"] = float(noise.rounds)
        metrics["error_min/train_error"] = 100 * noise.curves["train_error"][-1]
        return noise.perturbed


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
        params = {
            "eps": float(settings.eps),
            "features": str(spec.features),
            "steps_per_round": steps,
            "step_size": float(spec.step_size),
            "sigma": float(spec.sigma),
            "normalise": bool(spec.normalise),
            "batch_size": spec.get("batch_size"),
        }
        # Round r's result is decided by these and r (`rounds` only says how many there are).
        config = {
            **stage_config(context),
            "device": str(x.device),
            "protected_x": _digest(x),
            "protected_labels": _digest(labels),
            "beo": params,
        }
        if spec.features == "surrogate":  # the surrogate's fit: its optimiser, Trainer and augmentation
            config["optim"] = OmegaConf.to_container(context.cfg.optim, resolve=True)
            config["protection.augment"] = bool(settings.augment)
            config["trainer"] = trainer_config(context.cfg, {"max_epochs": int(spec.surrogate_epochs)})
        current, history = x, []
        for round_index in range(rounds):
            round_config = {**config, "round": round_index}
            ascend = partial(self.ascend, context, x, labels, current, params, generator, round_config)
            stored = _compute(context, "beo_round", round_config, ascend)
            generator.set_state(stored["generator"])  # where the round left it, computed or reused
            current = stored["x"].to(x.device)
            history += stored["history"] if round_index == 0 else stored["history"][1:]
        context.curves["beo/be_hat"] = [100 * v for v in history]
        metrics["beo/objective_start"] = 100 * history[0]
        metrics["beo/objective_end"] = 100 * history[-1]
        return current

    def ascend(
        self,
        context: RunContext,
        x: torch.Tensor,
        labels: torch.Tensor,
        current: torch.Tensor,
        params: dict[str, Any],
        generator: torch.Generator,
        config: dict[str, Any],
    ) -> dict[str, Any]:
        """One round (stage `beo_round`, `config`): the surrogate retrained on the `current` perturbed
        examples (its own stage `beo_surrogate`, same config), then `steps_per_round` PGA steps from
        `current`. Returns the perturbed examples, the objective before every step and after the last, and
        the state the ascent left `generator` in (so a reused round continues the same draws)."""
        features = None
        if params["features"] == "surrogate":
            torch.manual_seed(int(context.cfg.seed) * 1000 + 23 + int(config["round"]))
            features = self.train_surrogate(context, context.cfg.protection, current, labels, config)
        result = bayes_error_pga(
            x,
            labels,
            int(context.datamodule.num_classes),
            eps=params["eps"],
            steps=params["steps_per_round"],
            step_size=params["step_size"],
            sigma=params["sigma"],
            features=features,
            normalise=params["normalise"],
            batch_size=params["batch_size"],
            init=current - x,
            generator=generator,
        )
        return {"x": result.x.cpu(), "history": result.history, "generator": generator.get_state()}

    def train_surrogate(
        self,
        context: RunContext,
        settings: DictConfig,
        x: torch.Tensor,
        labels: torch.Tensor,
        config: dict[str, Any],
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """A fresh model of the victim's architecture trained on `(x, labels)` (stage `beo_surrogate`, with
        the round's `config`); returns its feature map (pre-logits of normalised inputs), frozen."""
        datamodule = context.datamodule
        dataset = _dataset(datamodule, x.cpu(), labels.cpu(), augment=bool(settings.augment))
        module = _fit(
            context,
            "beo_surrogate",
            config,
            lambda: context.make_module({"name": "ce"}),
            trainer_overrides={"max_epochs": int(settings.beo.surrogate_epochs)},
            train_dataloaders=datamodule.loader(dataset, shuffle=True),
        )
        return _feature_map(module, datamodule, x.device)


def _feature_map(
    module: L.LightningModule, datamodule: Any, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The frozen pre-logit features of a fitted module's backbone, on inputs in [0, 1] (normalised here)."""
    backbone = module.backbone.to(device).eval()
    backbone.requires_grad_(False)
    normalise = Normalise(*_normalisation(datamodule))

    def features(inputs: torch.Tensor) -> torch.Tensor:
        return backbone.forward_head(backbone.forward_features(normalise(inputs)), pre_logits=True)

    return features


# ---- stages ------------------------------------------------------------------------------------------------
def stage_config(context: RunContext, *keys: str) -> dict[str, Any]:
    """What every stage's result depends on: the data (its split and config), the network (`model`) and the
    run's seed (the stages are unseeded and set the torch seed from it, as the runs always did), plus the
    config entries at the dotted `keys`. The stages add the Trainer they run and digests of their inputs."""
    cfg = context.cfg
    config = {
        "split_hash": getattr(context.datamodule, "split_hash", None),
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "seed": int(cfg.seed),
    }
    for key in keys:
        value = OmegaConf.select(cfg, key)
        config[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return config


def trainer_config(cfg: DictConfig, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Trainer settings a fit runs with: the run's `trainer` with `overrides`."""
    return {**OmegaConf.to_container(cfg.trainer, resolve=True), **(overrides or {})}


def _fit(
    context: RunContext,
    name: str,
    config: dict[str, Any],
    make_module: Callable[[], L.LightningModule],
    *,
    trainer_overrides: dict[str, Any] | None = None,
    **fit_kwargs: Any,
) -> L.LightningModule:
    """The fitted module of stage `name`; fitted here, unstored, when the run has no stages."""
    if context.stages is not None:
        return context.stages.fit(
            name, config, make_module, trainer_overrides=trainer_overrides, **fit_kwargs
        )
    module = make_module()
    context.make_trainer(**(trainer_overrides or {})).fit(module, **fit_kwargs)
    return module


def _compute(context: RunContext, name: str, config: dict[str, Any], compute: Callable[[], Any]) -> Any:
    """`compute()` as the run's stage `name`, or directly when the run has no stages."""
    return compute() if context.stages is None else context.stages.compute(name, config, compute)


def _digest(values: torch.Tensor) -> str:
    """The SHA-256 of a tensor's shape, type and values: names a stage's input examples in its config."""
    values = values.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{tuple(values.shape)} {values.dtype}".encode())
    digest.update(values.numpy().tobytes())
    return digest.hexdigest()


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
