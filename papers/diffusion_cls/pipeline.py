"""Frozen diffusion features + a trained head (`method=diffusion_cls_probe`).

One run: (1) the U-Net: the hub checkpoint (paper scale), a DDPM trained here on the unlabeled training
images (mini scale; a stage per seed), or the same architecture at random initialisation (baseline);
(2) features of one block at one diffusion step t for the training and test splits (a stage); (3) a head
trained on the training features and scored on the test split. With ``select`` set, (t, block) is chosen
among a grid by the accuracy on a held-out part of the training split, then the head is refit on the whole
training split: the "best (t, b)" of the paper without choosing it on the test set.

Both are cached stages (`common.lit.stages`, under ``<runtime.output_root>/stages/diffusion_cls/``) keyed by
everything that decides them (data, model and trainer configs, seed; for features also the U-Net's weights,
t, block and pool size), so the cells and tables of a run share one DDPM per seed and one forward pass per
(seed, t)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.seed import isolate_rng
from omegaconf import OmegaConf

from common.errors import UserError
from common.lit import Pipeline, RunContext
from common.registry import register_method
from papers.diffusion_cls.ddpm import DDPMModule
from papers.diffusion_cls.heads import HEADS, HeadFit, Standardize, build_head, head_accuracy, head_loader
from papers.diffusion_cls.unet import build_scheduler, build_unet, noised_block_features, prepare_inputs

log = logging.getLogger("pnu.diffusion_cls")

WEIGHTS = ("diffusion", "random_init")
DDPM_STAGE, FEATURES_STAGE, HEAD_STAGE = "ddpm", "diffusion_features", "diffusion_head"


@register_method("diffusion_cls_probe")
class DiffusionFeatureProbe(Pipeline):
    """Head on the pooled output of U-Net block ``block`` at diffusion step ``timestep``."""

    def __init__(
        self,
        *,
        weights: str = "diffusion",
        timestep: int = 90,
        block: str = "up_blocks.1",
        pool_size: int = 2,
        head: str = "linear",
        head_params: dict[str, Any] | None = None,
        head_training: dict[str, Any] | None = None,
        head_configs: dict[str, dict[str, Any]] | None = None,
        cache_blocks: list[str] | None = None,
        select: dict[str, Any] | None = None,
    ) -> None:
        if weights not in WEIGHTS:
            raise UserError(f"method.weights must be one of {WEIGHTS}, got {weights!r}")
        if head not in HEADS:
            raise UserError(f"method.head must be one of {HEADS}, got {head!r}")
        if select is not None and not (select.get("timesteps") and select.get("blocks")):
            raise UserError("method.select needs non-empty `timesteps` and `blocks` lists")
        self.weights, self.timestep, self.block = weights, int(timestep), str(block)
        # A head's entry in head_configs overrides the generic pool size, parameters and schedule.
        preset = dict((head_configs or {}).get(head) or {})
        self.pool_size, self.head = int(preset.get("pool_size", pool_size)), head
        self.head_params = {**(head_params or {}), **(preset.get("head_params") or {})}
        self.head_training = {**(head_training or {}), **(preset.get("head_training") or {})}
        self.cache_blocks = list(cache_blocks or [])
        self.select = dict(select) if select is not None else None

    # ---- the run --------------------------------------------------------------------------------------
    def run(self, context: RunContext) -> dict[str, float]:
        cfg = context.cfg
        self._context = context
        # Smoke runs that cap Lightning's batches (`trainer.limit_train_batches`, unset in real runs) also cap
        # the head's epochs at `trainer.max_epochs`, as a Lightning fit would.
        self._smoke_cap: dict[str, int] = {}
        if OmegaConf.select(cfg, "trainer.limit_train_batches", default=None) is not None:
            cap = int(cfg.trainer.max_epochs)
            self._smoke_cap = {"epochs": min(int(self.head_training.get("epochs", cap)), cap)}
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        seed = int(cfg.seed)
        device = _device(cfg)
        run_config = _run_config(context, model_cfg, seed)
        unet, weights = self._unet(context, model_cfg, run_config, seed, device)
        scheduler = build_scheduler(model_cfg)
        # Features are decided by the run's config and where the U-Net's weights came from.
        unet_config = {**run_config, "weights": weights}
        extractor = _Extractor(context, model_cfg, unet, unet_config, scheduler, device)
        num_classes = int(context.datamodule.num_classes)
        metrics: dict[str, float] = {}
        if self.select is None:
            timestep, block = self.timestep, self.block
        else:
            timestep, block, val_acc = self._select(extractor, num_classes, seed)
            metrics |= {"selected/timestep": float(timestep), "selected/val_acc": val_acc,
                        "selected/block_index": float(list(self.select["blocks"]).index(block))}  # fmt: skip
        train_x, train_y, test_x, test_y = extractor.features(timestep, block, self.pool_size, self._blocks())
        head = self._fit(
            train_x, train_y, num_classes, seed, device, extractor.key(timestep, block, self.pool_size)
        )
        metrics["test/acc"] = head_accuracy(head, test_x.to(device), test_y)
        metrics["train/acc"] = head_accuracy(head, train_x.to(device), train_y)
        metrics["feature_dim"] = float(train_x[0].numel())
        if self.select is not None:
            # The chosen block at the grid's largest t (0.9 T): how much accuracy the chosen t gains over it.
            largest = max(int(t) for t in self.select["timesteps"])
            far_x, far_y, far_test, far_test_y = extractor.features(
                largest, block, self.pool_size, self._blocks()
            )
            far_key = extractor.key(largest, block, self.pool_size)
            far_head = self._fit(far_x, far_y, num_classes, seed, device, far_key)
            metrics["test/acc_at_largest_t"] = head_accuracy(far_head, far_test.to(device), far_test_y)
            metrics["test/acc_drop_at_largest_t"] = metrics["test/acc"] - metrics["test/acc_at_largest_t"]
        context.extra["unet_weights"] = weights
        context.extra["timestep"], context.extra["block"] = int(timestep), str(block)
        return metrics

    def _blocks(self) -> list[str]:
        return list(dict.fromkeys([self.block, *self.cache_blocks]))

    def _fit(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        num_classes: int,
        seed: int,
        device: torch.device,
        features: dict[str, Any],
    ) -> Any:
        """The head trained on ``(x, y)``: the stage `diffusion_head`, keyed by ``features`` (what decides
        the features and which of their rows are fitted), the head and its training, and the seed."""
        training = {**self.head_training, **self._smoke_cap}

        def make_module() -> HeadFit:
            # Seed the head's initialisation here: whether the U-Net was trained or reused must not change it.
            torch.manual_seed(_derive_seed(seed, "head"))
            head = build_head(self.head, tuple(x.shape[1:]), num_classes, **self.head_params)
            model = torch.nn.Sequential(Standardize(x), head).to(device)
            return HeadFit(model, **{k: v for k, v in training.items() if k != "seed"})

        loader = head_loader(x, y, batch_size=int(training["batch_size"]), seed=seed)
        # Every batch of every epoch, in float32 (the head's precision whatever the scale's trainer says).
        overrides = {"max_epochs": int(training["epochs"]), "max_steps": -1, "limit_train_batches": 1.0,
                     "limit_val_batches": 0, "num_sanity_val_steps": 0, "precision": "32-true"}  # fmt: skip
        fit_seed = _derive_seed(seed, "head_fit")
        context = self._context
        if context.stages is None:
            module = make_module()
            with isolate_rng(include_cuda=True):
                L.seed_everything(fit_seed, verbose=False)
                context.make_trainer(**overrides).fit(module, train_dataloaders=loader)
        else:
            config = {"features": features, "num_classes": num_classes, "head": self.head,
                      "head_params": self.head_params, "head_training": training, "seed": seed}  # fmt: skip
            module = context.stages.fit(
                HEAD_STAGE, config, make_module, trainer_overrides=overrides, seed=fit_seed,
                train_dataloaders=loader,
            )  # fmt: skip
        return module.model.to(device).eval()

    def _select(self, extractor: _Extractor, num_classes: int, seed: int) -> tuple[int, str, float]:
        assert self.select is not None
        blocks = [str(b) for b in self.select["blocks"]]
        fraction = float(self.select.get("val_fraction", 0.2))
        best: tuple[float, int, str] | None = None
        for timestep in [int(t) for t in self.select["timesteps"]]:
            for block in blocks:
                x, y, _, _ = extractor.features(timestep, block, self.pool_size, blocks)
                order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
                n_val = max(1, int(round(fraction * len(y))))
                val, fit = order[:n_val], order[n_val:]
                rows = {
                    **extractor.key(timestep, block, self.pool_size),
                    "rows": "fit",
                    "val_fraction": fraction,
                }
                head = self._fit(x[fit], y[fit], num_classes, seed, extractor.device, rows)
                acc = head_accuracy(head, x[val].to(extractor.device), y[val])
                if best is None or acc > best[0]:
                    best = (acc, timestep, block)
        assert best is not None
        log.info("selected t=%d, block %s (validation accuracy %.2f)", best[1], best[2], best[0])
        return best[1], best[2], best[0]

    # ---- the U-Net --------------------------------------------------------------------------------------
    def _unet(
        self,
        context: RunContext,
        model_cfg: dict[str, Any],
        run_config: dict[str, Any],
        seed: int,
        device: torch.device,
    ) -> tuple[torch.nn.Module, str]:
        """The run's frozen U-Net, and where its weights come from: pretrained, trained (the DDPM stage) or
        random."""
        source = getattr(context.datamodule, "source", None)
        pretrained = bool(model_cfg.get("pretrained")) and self.weights == "diffusion"
        if pretrained and source == "random":
            log.warning(
                "data.source=random: building %s without its pretrained weights", model_cfg["pretrained"]
            )
            pretrained = False
        train_steps = int((model_cfg.get("ddpm_training") or {}).get("steps", 0))
        trains = self.weights == "diffusion" and not model_cfg.get("pretrained") and train_steps > 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_derive_seed(seed, "unet"))
            unet = build_unet(model_cfg, load_pretrained=pretrained)
        if trains:
            self._train_ddpm(context, unet, model_cfg, run_config, seed)
        unet.requires_grad_(False).eval().to(device)
        return unet, "pretrained" if pretrained else "trained" if trains else "random"

    @staticmethod
    def _train_ddpm(
        context: RunContext,
        unet: torch.nn.Module,
        model_cfg: dict[str, Any],
        run_config: dict[str, Any],
        seed: int,
    ) -> None:
        """Train `unet` as a DDPM on the unlabeled training split: the stage `ddpm` (one per `run_config`), or
        a plain fit without stages."""
        settings = dict(model_cfg["ddpm_training"])

        def make_module() -> DDPMModule:
            return DDPMModule(
                unet, build_scheduler(model_cfg), sample_size=int(model_cfg["unet"]["sample_size"]),
                input_scale=float(model_cfg.get("input_scale", 1.0)),
                input_shift=float(model_cfg.get("input_shift", 0.0)),
                lr=float(settings.get("lr", 2e-3)), weight_decay=float(settings.get("weight_decay", 0.0)),
            )  # fmt: skip

        overrides = {"max_steps": int(settings["steps"]), "max_epochs": -1, "limit_val_batches": 0,
                     "num_sanity_val_steps": 0}  # fmt: skip
        loader = context.datamodule.train_dataloader()
        ddpm_seed = _derive_seed(seed, "ddpm")
        if context.stages is None:
            module = make_module()
            with isolate_rng(include_cuda=True):
                L.seed_everything(ddpm_seed, verbose=False)
                context.make_trainer(**overrides).fit(module, train_dataloaders=loader)
        else:
            module = context.stages.fit(
                DDPM_STAGE, run_config, make_module, trainer_overrides=overrides, seed=ddpm_seed,
                train_dataloaders=loader,
            )  # fmt: skip
        unet.cpu()
        losses = module.curves["ddpm/loss"]
        if losses:
            context.curves["ddpm/loss"] = losses[:: max(1, len(losses) // 200)]


class _Extractor:
    """Pooled block features of the run's U-Net for the training and test splits: one stage
    `diffusion_features` per (U-Net, t, block, pool size), or computed directly when the run has no stages."""

    def __init__(
        self,
        context: RunContext,
        model_cfg: dict[str, Any],
        unet: torch.nn.Module,
        unet_config: dict[str, Any],
        scheduler: Any,
        device: torch.device,
    ) -> None:
        self.context, self.model_cfg, self.unet, self.unet_config = context, model_cfg, unet, unet_config
        self.scheduler, self.seed, self.device = scheduler, int(unet_config["seed"]), device

    def features(
        self, timestep: int, block: str, pool_size: int, also: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(train_x, train_y, test_x, test_y) for one block; a miss extracts every block of ``also`` in the
        same forward passes and stores each of them as its own stage."""
        # Without stages nothing would keep the other blocks, so only `block` is extracted.
        blocks = list(dict.fromkeys([block, *also])) if self.context.stages is not None else [block]
        extracted: dict[str, dict[str, torch.Tensor]] = {}

        def extract() -> dict[str, torch.Tensor]:
            extracted.update(self._extract(timestep, blocks, pool_size))
            return extracted[block]

        stored = self._stage(timestep, block, pool_size, extract)
        for other, tensors in extracted.items():
            if other != block:
                self._stage(timestep, other, pool_size, lambda tensors=tensors: tensors)
        return stored["train_x"].float(), stored["train_y"], stored["test_x"].float(), stored["test_y"]

    def _stage(
        self, timestep: int, block: str, pool_size: int, compute: Callable[[], dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        if self.context.stages is None:
            return compute()
        return self.context.stages.compute(FEATURES_STAGE, self.key(timestep, block, pool_size), compute)

    def key(self, timestep: int, block: str, pool_size: int) -> dict[str, Any]:
        """What decides the features of one (t, block, pool size): stage `diffusion_features`'s config."""
        return {**self.unet_config, "timestep": timestep, "block": block, "pool_size": pool_size}

    def _extract(
        self, timestep: int, blocks: list[str], pool_size: int
    ) -> dict[str, dict[str, torch.Tensor]]:
        datamodule, cfg = self.context.datamodule, self.context.cfg
        splits: dict[str, tuple[dict[str, torch.Tensor], torch.Tensor]] = {}
        for split, dataset, train, limit_key in (
            ("train", datamodule.train_dataset(), True, "limit_train_batches"),
            ("test", datamodule.test_dataset(), False, "limit_val_batches"),
        ):
            loader = datamodule.loader(dataset, shuffle=False, train=train)
            labels: list[torch.Tensor] = []
            batches = _take(loader, _limit(cfg, limit_key), labels, self.model_cfg)
            generator = torch.Generator().manual_seed(_derive_seed(self.seed, f"noise:{split}:{timestep}"))
            feats = noised_block_features(
                self.unet, self.scheduler, batches, timestep=timestep, blocks=blocks, pool_size=pool_size,
                generator=generator, device=self.device,
            )  # fmt: skip
            splits[split] = (feats, torch.cat(labels))
        return {
            block: {
                "train_x": splits["train"][0][block],
                "train_y": splits["train"][1],
                "test_x": splits["test"][0][block],
                "test_y": splits["test"][1],
            }
            for block in blocks
        }


def _run_config(context: RunContext, model_cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """What decides a run's U-Net and its features besides (t, block, pool size): the data (split and
    loaders), the model (with its DDPM schedule), the trainer (device, batch limits) and the seed."""
    cfg = context.cfg
    return {
        "split_hash": getattr(context.datamodule, "split_hash", None),
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "model": model_cfg,
        "trainer": OmegaConf.to_container(cfg.trainer, resolve=True),
        "seed": seed,
    }


def _take(loader: Any, limit: int | float, labels: list[torch.Tensor], model_cfg: dict[str, Any]) -> Any:
    """Prepared input batches of ``loader`` (the first ``limit`` batches, or that fraction), collecting the
    clean labels into ``labels``."""
    total = len(loader)
    if isinstance(limit, float):  # Lightning's convention: a float is a fraction, an int a batch count
        count = total if limit >= 1.0 else max(1, int(limit * total))
    else:
        count = min(int(limit), total)
    sample_size = int(model_cfg["unet"]["sample_size"])
    scale, shift = float(model_cfg.get("input_scale", 1.0)), float(model_cfg.get("input_shift", 0.0))
    for index, batch in enumerate(loader):
        if index >= count:
            break
        labels.append(batch["y_clean"].long())
        yield prepare_inputs(batch["x"].float(), sample_size, scale, shift)


def _device(cfg: Any) -> torch.device:
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="cpu"))
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _limit(cfg: Any, key: str) -> int | float:
    value = OmegaConf.select(cfg, f"trainer.{key}", default=None)
    return 1.0 if value is None else value


def _derive_seed(seed: int, purpose: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:4], "little")
