"""SimPLe's train - fine-tune - retrain process as a harness method (`method=simple_seg`).

Stages (Abner228/SmileCode @52b1944):
  1. ``stage1``: a fresh U-Net trained on the initial extreme-point pseudo-masks (unlabeled pixels ignored)
     with ``CE + CE + L_con`` (stage1/train.py); ``supervision=ground_truth`` trains on the true masks instead
     (the fully supervised reference) and ``contrastive_weight=0`` drops ``L_con``;
  2. ``finetune``: the stage-1 network fine-tuned for ``finetune_iters`` iterations at ``finetune_lr`` with
     SimPLe's propagated pseudo-labels (stage2/train.py); ``propagate=false`` fine-tunes with the CE terms
     only (the control that separates propagation from extra iterations);
  3. ``retrain``: the fine-tuned network labels the training images (argmax inside the extreme-point box,
     negative outside: stage2/infer.py) and a fresh U-Net is trained on these masks with CE (stage3/train.py).
``stop_after`` picks the stage whose network is scored; the metrics also hold every earlier stage's score.
Networks are scored by the Dice (%) of their argmax on the fully labelled test images (torchmetrics
``dice_score``, lesion class, per image, then averaged over images).

Each stage is seeded from (run seed, stage) and is a cached stage (`common.lit.stages`): its network, losses
and propagation counts are stored under ``<output_root>/stages/simple_seg/<stage>/<key>/``, keyed by
everything that decides them (the stage's configuration and those of the stages before it), so the table's
rows (one per stage) share their common stages; stored and fresh results are identical.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torchmetrics.functional.segmentation import dice_score

from common.errors import UserError
from common.lit import Pipeline, RunContext
from common.registry import register_method
from papers.simple_seg.data import LesionSegmentationDataModule
from papers.simple_seg.module import SegmentationStage, epochs_for_steps
from papers.simple_seg.unet import SegUNet

STAGES = ("stage1", "finetune", "retrain")
SUPERVISION = ("extreme_points", "ground_truth")


def dice_percent(pred: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Per-image Dice (%) of the lesion class between binary masks (N, H, W): torchmetrics ``dice_score``
    (an empty prediction of a non-empty lesion scores 0)."""
    pred_t = torch.as_tensor(np.asarray(pred)).long()
    truth_t = torch.as_tensor(np.asarray(truth)).long()
    scores = dice_score(
        pred_t, truth_t, num_classes=2, include_background=False, average="micro", input_format="index"
    )
    return 100.0 * scores.reshape(-1)


@torch.no_grad()
def predict_masks(net: SegUNet, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """Argmax masks (N, H, W) of whole images (N, H, W); the official sliding window is not needed for a
    fully convolutional net on images of a size it accepts."""
    net = net.to(device).eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start : start + batch_size, None]).to(device)
        logits, _ = net(x)
        out.append(logits.argmax(1).cpu().numpy().astype(np.int8))
    net.train()
    return np.concatenate(out)


@register_method("simple_seg")
class SimPLePipeline(Pipeline):
    """Train - fine-tune - retrain (see the module docstring); the parameters mirror the official scripts'."""

    def __init__(
        self,
        stop_after: str = "retrain",
        supervision: str = "extreme_points",
        contrastive_weight: float = 1.0,
        num_contrast: int = 100,
        temperature: float = 0.1,
        finetune_iters: int = 100,
        finetune_lr: float = 1e-4,
        propagate: bool = True,
        pseudo_weight: float = 0.1,
        num_anchors: int = 100,
        similarity_threshold: float = 0.96,
        vote_fraction: float = 0.96,
        retrain_contrastive_weight: float = 0.0,
        poly_power: float = 0.9,
    ) -> None:
        if stop_after not in STAGES:
            raise UserError(f"method.stop_after must be one of {STAGES}, got {stop_after!r}")
        if supervision not in SUPERVISION:
            raise UserError(f"method.supervision must be one of {SUPERVISION}, got {supervision!r}")
        if supervision == "ground_truth" and stop_after != "stage1":
            raise UserError(
                "method.supervision=ground_truth is the fully supervised reference: stop_after=stage1"
            )
        self.stop_after, self.supervision = stop_after, supervision
        self.stage1_params = {
            "supervision": supervision,
            "contrastive_weight": float(contrastive_weight),
            "num_contrast": int(num_contrast),
            "temperature": float(temperature),
            "poly_power": float(poly_power),
        }
        self.finetune_params = {
            "finetune_iters": int(finetune_iters),
            "finetune_lr": float(finetune_lr),
            "propagate": bool(propagate),
            "pseudo_weight": float(pseudo_weight),
            "num_anchors": int(num_anchors),
            "similarity_threshold": float(similarity_threshold),
            "vote_fraction": float(vote_fraction),
        }
        self.retrain_params = {"retrain_contrastive_weight": float(retrain_contrastive_weight)}

    # ---- the run -------------------------------------------------------------------------------------------
    def run(self, context: RunContext) -> dict[str, float]:
        data = context.datamodule
        if not isinstance(data, LesionSegmentationDataModule):
            raise UserError("method=simple_seg needs data from the simple_seg_lesions data module")
        cfg = context.cfg
        self.context, self.data = context, data
        self.device = torch.device(
            "cuda" if torch.cuda.is_available() and cfg.trainer.get("accelerator") != "cpu" else "cpu"
        )
        # What every stage's training depends on; each stage adds its own parameters.
        base = {
            "data": data.params(),
            "patch_size": data.patch_size,
            "batch_size": data.batch_size,
            **{key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "optim", "trainer")},
            "seed": int(cfg.seed),
        }
        metrics: dict[str, float] = {}
        curves: dict[str, list[float]] = {}

        # Stage 1: train on the initial pseudo-masks (or the truth, for the fully supervised reference).
        config1 = {**base, **self.stage1_params}
        if self.supervision == "ground_truth":  # the weak labels play no part: share it across columns
            config1["data"] = {k: v for k, v in config1["data"].items() if k not in ("initial_mask", "mask")}
        targets = data.train_truth.astype(np.int8) if self.supervision == "ground_truth" else data.train_weak
        if self.supervision == "extreme_points":
            metrics.update(self._mask_quality("initial", data.train_weak))
        net1, _, losses = self._train_stage("stage1", config1, targets, init=None)
        curves["stage1/loss"] = losses
        metrics["stage1/test_dice"] = self._test_dice(net1)
        final = metrics["stage1/test_dice"]

        if self.stop_after in ("finetune", "retrain"):
            config2 = {"stage1": config1, **self.finetune_params}
            net2, stats, losses = self._train_stage("finetune", config2, data.train_weak, init=net1)
            curves["finetune/loss"] = losses
            metrics["finetune/test_dice"] = final = self._test_dice(net2)
            if self.finetune_params["propagate"]:
                metrics.update({f"finetune/{k}": v for k, v in stats.items()})
            # The fine-tuned network's masks for retraining: its argmax inside the box, negative outside.
            predicted = predict_masks(net2, data.train_images, data.eval_batch_size, self.device)
            retrain_masks = (predicted * data.train_box).astype(np.int8)
            metrics.update(self._mask_quality("retrain_mask", retrain_masks))

            if self.stop_after == "retrain":
                config3 = {"finetune": config2, **self.retrain_params}
                net3, _, losses = self._train_stage("retrain", config3, retrain_masks, init=None)
                curves["retrain/loss"] = losses
                metrics["retrain/test_dice"] = final = self._test_dice(net3)

        metrics["test/dice"] = final
        context.curves = curves
        return metrics

    # ---- pieces --------------------------------------------------------------------------------------------
    def _mask_quality(self, name: str, masks: np.ndarray) -> dict[str, float]:
        """Dice (%) of a set of training masks' positives against the truth, and their unlabeled share."""
        truth = self.data.train_truth
        return {
            f"train/{name}_dice": float(dice_percent(masks == 1, truth).mean()),
            f"train/{name}_unlabeled_in_box": float(
                100.0 * ((masks < 0) & self.data.train_box).sum() / self.data.train_box.sum()
            ),
        }

    def _test_dice(self, net: SegUNet) -> float:
        pred = predict_masks(net, self.data.test_images, self.data.eval_batch_size, self.device)
        return float(dice_percent(pred, self.data.test_truth).mean())

    def _new_net(self) -> SegUNet:
        model = OmegaConf.to_container(self.context.cfg.model, resolve=True)
        name = model.pop("backbone", "simple_seg_unet")
        if name != "simple_seg_unet":
            raise UserError(
                f"method=simple_seg builds its own U-Net: set model.backbone=simple_seg_unet, not {name!r}"
            )
        return SegUNet(in_channels=1, num_classes=2, **model)

    def _train_stage(
        self, stage: str, config: dict[str, Any], targets: np.ndarray, init: SegUNet | None
    ) -> tuple[SegUNet, dict[str, float], list[float]]:
        """Train one stage on `targets`, from a copy of `init` or a fresh network, as the run's stage `stage`
        with `config` (reused when stored); returns the network, propagation stats and per-step losses."""
        cfg = self.context.cfg
        loader = self.data.loader_for(targets)
        overrides: dict[str, Any] = {}
        if stage == "finetune":
            iters = self.finetune_params["finetune_iters"]
            # Iterations as in the official script; the trainer's epoch (and batch) limits still apply.
            overrides = {
                "max_steps": iters,
                "max_epochs": min(int(cfg.trainer.max_epochs), epochs_for_steps(iters, len(loader))),
            }

        def make_module() -> SegmentationStage:
            # Seeded before the network is built, so its weights and batches depend on (run seed, stage) only.
            L.seed_everything(_stage_seed(cfg.seed, stage), workers=True, verbose=False)
            net = copy.deepcopy(init) if init is not None else self._new_net()
            return self._stage_module(stage, net)

        if self.context.stages is None:
            module = make_module()
            self.context.make_trainer(**overrides).fit(module, train_dataloaders=loader)
        else:
            module = self.context.stages.fit(
                stage, config, make_module, trainer_overrides=overrides, train_dataloaders=loader
            )
        stats = module.propagation_stats() if module.propagate else {}
        return module.net.cpu(), stats, module.curves["train/loss"]

    def _stage_module(self, stage: str, net: SegUNet) -> SegmentationStage:
        """The LightningModule that trains `net` for `stage`: the official schedule and loss terms."""
        cfg = self.context.cfg
        optimizer = instantiate(cfg.optim.optimizer)
        if stage == "finetune":
            iters = self.finetune_params["finetune_iters"]
            return SegmentationStage(
                net,
                optimizer,
                lr=self.finetune_params["finetune_lr"],
                decay_length=iters,
                decay_interval="step",
                poly_power=self.stage1_params["poly_power"],
                propagate=self.finetune_params["propagate"],
                pseudo_weight=self.finetune_params["pseudo_weight"],
                num_anchors=self.finetune_params["num_anchors"],
                similarity_threshold=self.finetune_params["similarity_threshold"],
                vote_fraction=self.finetune_params["vote_fraction"],
            )
        weight = (
            self.stage1_params["contrastive_weight"]
            if stage == "stage1"
            else self.retrain_params["retrain_contrastive_weight"]
        )
        return SegmentationStage(
            net,
            optimizer,
            lr=float(cfg.optim.optimizer.lr),
            decay_length=int(cfg.trainer.max_epochs),
            decay_interval="epoch",
            poly_power=self.stage1_params["poly_power"],
            contrastive_weight=weight,
            num_contrast=self.stage1_params["num_contrast"],
            temperature=self.stage1_params["temperature"],
        )


def _stage_seed(seed: int, stage: str) -> int:
    return int(seed) * 100 + STAGES.index(stage) + 1
