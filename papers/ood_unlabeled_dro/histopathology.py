"""Histopathology experiment (paper scale): RSS vs ERM on frozen patch embeddings, NCT-CRC-HE-100K labels with
unlabeled patches from the same dataset or from PatchCamelyon.

Official pipeline (deepmancer/rss-training-iclr2024 @b526e0a, code/Histopathology): embeddings of every patch
by an ImageNet ResNet-50 truncated after layer 3 (PatchExtraction/resnet.py, 1024-d, ImageNet normalisation,
no resize), then a 4-hidden-layer MLP (MainPart/ModelFC.py: 2048 units, LeakyReLU) trained for 70 epochs with
Adam on the RSS loss: robust cross entropy with 10 gradient-ascent perturbation steps on the embeddings, on
the labelled batch and on the unlabeled batch against the model's predictions (MainPart/TrainingFlow.py),
keeping the epoch with the best validation accuracy. "Same distribution": 9 tissue classes, unlabeled = other
NCT-CRC-HE-100K patches. "Different distribution": binary labels (TUM and STR vs the rest, Utils.read_data)
with class-balanced labelled samples (Utils.equal_sampling), unlabeled = PatchCamelyon patches. Test:
CRC-VAL-HE-7K. Hyper-parameters were searched per cell (code/Hyperparameter-Histopathology.csv).

Deviations (see README): the backbone is a timm model with pooled features (`model.backbone`, default
timm:resnet50.tv_in1k, 2048-d) instead of the layer-3 truncation; one hyper-parameter setting for every cell;
pseudo-labels are the model's hard predictions (the official code feeds its softmax outputs as soft targets).

Stages (`context.stages`): the backbone pass is the stage "embeddings" (the patches' features and labels,
keyed on the data, backbone, seed and sample sizes; the ERM row leaves out n, so its columns share it), and
the head's training is the stage "head", a Lightning fit of `RobustHead` that checkpoints every epoch (with
its best epoch's weights) and resumes after a kill. Both are unseeded, as the old in-process code drew from
the run's random state, so a run's numbers do not depend on whether a stage was computed or reused.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import OmegaConf
from sklearn.metrics import f1_score
from torch import nn
from torch.utils.data import DataLoader, Subset

from common.backbones import build_backbone
from common.data.datamodule import ClassificationDataModule, HubImageDataset
from common.data.sources import load_hub_dataset
from common.errors import UserError
from common.eval.linear_probe import extract_features
from common.lit import Pipeline, RunContext
from common.registry import register_datamodule, register_method
from papers.ood_unlabeled_dro.losses import rss_loss

log = logging.getLogger("pnu.ood_unlabeled_dro")


@register_datamodule("ood_unlabeled_dro_histo")
class HistoDataModule(ClassificationDataModule):
    """ClassificationDataModule with a named training split (`train_split`; NCT-CRC-HE on the hub has no
    "train") and an optional binary relabelling (`positive_classes`: class names mapped to 1, the rest to 0).

    Local stand-in for a `train_split` option of common.data.datamodule.ClassificationDataModule."""

    def __init__(
        self, *, train_split: str = "train", positive_classes: list[str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.train_split = train_split
        self.positive_classes = list(positive_classes) if positive_classes else None

    def _setup_hub(self) -> None:
        from torchvision.transforms import v2

        if not self.hub_id:
            raise UserError("data.source=hub needs data.hub_id (a HuggingFace dataset id)")
        extra = {"name": self.hub_name} if self.hub_name else {}
        dataset = load_hub_dataset(self.hub_id, cache_dir=self.cache_dir, **extra)
        for split in (self.train_split, self.test_split):
            if split not in dataset:
                raise UserError(f"{self.hub_id} has no split {split!r}; its splits: {list(dataset)}")
        train, test = dataset[self.train_split], dataset[self.test_split]
        names = getattr(train.features[self.label_key], "names", None)
        self.num_classes = self._declared_num_classes or train.features[self.label_key].num_classes
        train_labels = self._map(np.asarray(train[self.label_key], dtype=np.int64), names)
        self.test_labels = self._map(np.asarray(test[self.label_key], dtype=np.int64), names)
        if self.positive_classes:
            self.num_classes = 2
        self.input_shape = (3, self.image_size, self.image_size)
        transform = v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(self.image_size, antialias=True),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(self.mean, self.std),
            ]
        )
        self.train_labels_clean = self.train_labels = train_labels
        self._train_set = HubImageDataset(train, self.image_key, train_labels, train_labels, transform)
        self._test_set = HubImageDataset(test, self.image_key, self.test_labels, self.test_labels, transform)
        self._hash_parts = [train_labels, self.test_labels]

    def _setup_arrays(self, data: Any) -> None:
        super()._setup_arrays(data)
        if self.positive_classes:  # random smoke-test labels: keep the binary task's shape
            self.train_labels = self.train_labels_clean = self.train_labels % 2
            self.test_labels = self.test_labels % 2
            self.num_classes = 2

    def _map(self, labels: np.ndarray, names: list[str] | None) -> np.ndarray:
        if not self.positive_classes:
            return labels
        if names is None:
            raise UserError(f"{self.hub_id}: positive_classes needs a ClassLabel column with names")
        unknown = set(self.positive_classes) - set(names)
        if unknown:
            raise UserError(f"positive_classes {sorted(unknown)} are not classes of {self.hub_id}: {names}")
        positive = np.isin(np.asarray(names)[labels], self.positive_classes)
        return positive.astype(np.int64)


class FeatureHead(nn.Module):
    """The official classifier (ModelFC.myFC) on embeddings: Linear + LeakyReLU blocks, then a linear layer to
    the classes (logits; the official model applies a softmax before its cross entropy)."""

    def __init__(self, in_features: int, hidden: list[int], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.LeakyReLU()]
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class RobustHead(L.LightningModule):
    """Trains a `FeatureHead` on fixed embeddings with the RSS loss (`rss_loss`; lam = 0 or no unlabeled
    embeddings: the labelled robust loss alone). Each epoch takes `steps` full-batch Adam steps, on the
    labelled embeddings in order and on a fresh permutation of the unlabeled ones cut into as many chunks (the
    official batches are half of each pool); the head keeps the weights of the epoch with the best validation
    accuracy (`curves["val/acc"]`), which it holds once the fit ends.

    `embeddings` (x_train, y_train, x_val, y_val, optional x_unlabeled) lie on the fit's device and are plain
    attributes, not parameters, so they stay out of checkpoints and of the stored stage."""

    def __init__(
        self,
        head: FeatureHead,
        embeddings: dict[str, torch.Tensor],
        *,
        lr: float,
        weight_decay: float,
        gamma: float,
        gamma_unlabeled: float,
        lam: float,
        step_size: float,
        ascent_steps: int,
        steps: int,
    ) -> None:
        super().__init__()
        self.head, self.embeddings = head, embeddings
        self.lr, self.weight_decay = lr, weight_decay
        self.loss_params = {
            "gamma": gamma,
            "gamma_unlabeled": gamma_unlabeled,
            "lam": lam,
            "steps": ascent_steps,
            "step_size": step_size,
        }
        self.steps = steps
        self.curves: dict[str, list[float]] = {"val/acc": []}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.epoch_chunks: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.head.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def train_dataloader(self) -> DataLoader:
        # One item per step, its position in the epoch's chunks. The loader's own generator keeps it from
        # drawing a seed from torch's global generator, which draws the unlabeled permutations.
        pools = [len(self.embeddings["x_train"])]
        if "x_unlabeled" in self.embeddings:
            pools.append(len(self.embeddings["x_unlabeled"]))
        num_chunks = min(len(torch.arange(size).chunk(self.steps)) for size in pools)
        return DataLoader(range(num_chunks), batch_size=None, generator=torch.Generator())

    def on_train_epoch_start(self) -> None:
        self.head.train()
        x, x_unlabeled = self.embeddings["x_train"], self.embeddings.get("x_unlabeled")
        labeled_chunks = torch.arange(len(x), device=x.device).chunk(self.steps)
        unlabeled_chunks = (
            torch.randperm(len(x_unlabeled), device=x_unlabeled.device).chunk(self.steps)
            if x_unlabeled is not None
            else [None] * self.steps
        )
        self.epoch_chunks = list(zip(labeled_chunks, unlabeled_chunks, strict=False))

    def training_step(self, chunk: int, batch_idx: int) -> torch.Tensor:
        labeled, unlabeled = self.epoch_chunks[chunk]
        x, y = self.embeddings["x_train"], self.embeddings["y_train"]
        x_unlabeled = None if unlabeled is None else self.embeddings["x_unlabeled"][unlabeled]
        loss = rss_loss(self.head, x[labeled], y[labeled], x_unlabeled, **self.loss_params)
        if not torch.isfinite(loss):
            raise FloatingPointError("non-finite RSS loss")
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(labeled))
        return loss

    def on_train_epoch_end(self) -> None:
        accuracy = _accuracy(self.head, self.embeddings["x_val"], self.embeddings["y_val"])
        if not self.curves["val/acc"] or accuracy > max(self.curves["val/acc"]):
            self.best_state = {k: v.clone() for k, v in self.head.state_dict().items()}
        self.curves["val/acc"].append(accuracy)
        self.log("val/acc", accuracy)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["best_head"] = self.best_state  # a resumed fit still returns the best epoch's weights
        device = self._permutation_device()
        if device is not None and device.type == "cuda":  # the run's checkpoints keep the CPU generators only
            checkpoint["cuda_rng"] = torch.cuda.get_rng_state(device)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_state = checkpoint["best_head"]
        device = self._permutation_device()
        if "cuda_rng" in checkpoint and device is not None and device.type == "cuda":
            torch.cuda.set_rng_state(checkpoint["cuda_rng"], device)

    def _permutation_device(self) -> torch.device | None:
        """Where the unlabeled permutations are drawn (None without unlabeled embeddings)."""
        x_unlabeled = self.embeddings.get("x_unlabeled")
        return None if x_unlabeled is None else x_unlabeled.device

    def on_fit_end(self) -> None:
        assert self.best_state is not None
        self.head.load_state_dict(self.best_state)


class _HistoPipeline(Pipeline):
    """Embeds the needed patches (stage "embeddings"), then trains the head with ERM (lam = 0) or RSS (stage
    "head", a Lightning fit of `RobustHead`); see the module doc."""

    uses_unlabeled = False

    def __init__(self, **params: Any) -> None:
        self.params = params

    def run(self, context: RunContext) -> dict[str, float]:
        cfg, labeled = context.cfg, context.datamodule
        if not isinstance(labeled, HistoDataModule):
            raise UserError("histopathology methods need data=ood_unlabeled_dro_nct_crc*")
        protocol = cfg.protocol
        m, n = int(protocol.num_labeled), int(protocol.get("num_unlabeled") or 0)
        smoke = OmegaConf.select(cfg, "trainer.limit_train_batches", default=None) is not None
        if smoke:  # config smoke test: a few images through the backbone, one epoch
            m, n = min(m, 10), min(n, 4)
        device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
        rng = np.random.default_rng(int(cfg.seed))
        labeled.setup("fit")
        pool = rng.permutation(labeled.num_train)
        num_val = max(1, int(round(float(protocol.val_fraction) * len(pool))))
        num_val = min(num_val, 2) if smoke else num_val
        val_idx, rest = pool[:num_val], pool[num_val:]
        train_idx = _labeled_subset(
            rest, labeled.train_labels, m, balanced=bool(protocol.balanced_labels), rng=rng
        )
        test_set = labeled.test_dataset()
        if smoke:
            test_set = Subset(test_set, range(min(4, len(test_set))))
        patches = {
            "train": (labeled, labeled.train_dataset(train_idx)),
            "val": (labeled, labeled.train_dataset(val_idx)),
            "test": (labeled, test_set),
        }
        if self.uses_unlabeled and n > 0:
            patches["unlabeled"] = self._unlabeled(cfg, labeled, rest, train_idx, n, rng)
        backbone, backbone_params = _backbone_config(cfg, labeled)
        context.extra["pretrained_weights"] = bool(backbone_params.get("pretrained", False))
        config = self.embeddings_config(cfg, m, n if "unlabeled" in patches else None, smoke)
        embed = functools.partial(_embed, backbone, backbone_params, patches, device)
        stored = embed() if context.stages is None else context.stages.compute("embeddings", config, embed)
        embeddings = {name: tensor.to(device) for name, tensor in stored.items()}
        fitted = self._fit_head(context, config, embeddings, labeled.num_classes, smoke, device)
        head = fitted.head.to(device).eval()
        with torch.no_grad():
            predictions = head(embeddings["x_test"]).argmax(1).cpu().numpy()
        truth = embeddings["y_test"].cpu().numpy()
        num_unlabeled = len(embeddings["x_unlabeled"]) if "x_unlabeled" in embeddings else 0
        return {
            "test/acc": 100 * float(np.mean(predictions == truth)),
            "test/macro_f1": 100 * float(f1_score(truth, predictions, average="macro")),
            "val/acc_best": 100 * max(fitted.curves["val/acc"]),
            "num_labeled": float(len(train_idx)),
            "num_unlabeled": float(num_unlabeled),
        }

    @staticmethod
    def embeddings_config(cfg: Any, m: int, n: int | None, smoke: bool) -> dict[str, Any]:
        """What decides the embedded patches: the data (without its training batch size and loader workers,
        which do not change an embedding), the backbone, the seed (it draws the patches and the run's random
        state the stage continues), the labelled protocol, the unlabeled pool only when the method uses one
        (so the ERM row shares one stage across the n of its columns), the smoke-test limits."""
        config: dict[str, Any] = {
            "data": _data_config(cfg.data),
            "model": OmegaConf.to_container(cfg.model, resolve=True),
            "seed": int(cfg.seed),
            "num_labeled": m,
            "val_fraction": float(cfg.protocol.val_fraction),
            "balanced_labels": bool(cfg.protocol.balanced_labels),
            "smoke": smoke,
            "unlabeled": None,
        }
        if n is not None:
            source = str(cfg.protocol.unlabeled_source)
            other = _data_config(cfg.unlabeled_data) if source == "other" else None
            config["unlabeled"] = {"num": n, "source": source, "data": other}
        return config

    def _fit_head(
        self,
        context: RunContext,
        embeddings_config: dict[str, Any],
        embeddings: dict[str, torch.Tensor],
        num_classes: int,
        smoke: bool,
        device: torch.device,
    ) -> RobustHead:
        """The trained head (stage "head"; its config adds the method and trainer settings to what decides the
        embeddings)."""
        p = self.params

        def make_module() -> RobustHead:
            width = embeddings["x_train"].shape[1]
            head = FeatureHead(width, list(p.get("hidden", [2048, 2048, 2048, 2048])), num_classes)
            return RobustHead(
                head,
                embeddings,
                lr=float(p["lr"]),
                weight_decay=float(p["weight_decay"]),
                gamma=float(p["gamma"]),
                gamma_unlabeled=float(p.get("gamma_unlabeled", 0.0)),
                lam=float(p.get("lam", 0.0)) if "x_unlabeled" in embeddings else 0.0,
                step_size=float(p["step_size"]),
                ascent_steps=1 if smoke else int(p["perturbation_steps"]),
                steps=1 if smoke else int(p.get("steps_per_epoch", 2)),
            )

        # The head trains where its embeddings lie (the CPU in smoke tests), for the method's epochs, in full
        # precision (the paper scale's bf16-mixed is for backbones; the head always trained in float32).
        overrides = {
            "max_epochs": 1 if smoke else int(p["epochs"]),
            "accelerator": device.type,
            "precision": "32-true",
        }
        if context.stages is None:
            module = make_module()
            context.make_trainer(**overrides).fit(module)
            return module
        trainer = {**OmegaConf.to_container(context.cfg.trainer, resolve=True), **overrides}
        config = {**embeddings_config, "method": p, "trainer": trainer}
        return context.stages.fit("head", config, make_module, trainer_overrides=overrides)

    def _unlabeled(
        self,
        cfg: Any,
        labeled: HistoDataModule,
        rest: np.ndarray,
        train_idx: np.ndarray,
        n: int,
        rng: np.random.Generator,
    ) -> tuple[HistoDataModule, Any]:
        """The unlabeled patches: n more from the labelled pool, or n from `unlabeled_data`."""
        source = str(cfg.protocol.unlabeled_source)
        if source == "same":
            remaining = np.setdiff1d(rest, train_idx)
            chosen = rng.choice(remaining, size=min(n, len(remaining)), replace=False)
            return labeled, labeled.train_dataset(chosen)
        if source != "other":
            raise UserError(f"protocol.unlabeled_source must be same or other, got {source!r}")
        params = OmegaConf.to_container(cfg.unlabeled_data, resolve=True)
        params.pop("datamodule", None)
        if labeled.source == "random":
            params.update(source="random", split_seed=1, hub_id=None)
        other = HistoDataModule(seed=int(cfg.seed), **params)
        other.setup("fit")
        chosen = rng.choice(other.num_train, size=min(n, other.num_train), replace=False)
        return other, other.train_dataset(chosen)


def _data_config(data: Any) -> dict[str, Any]:
    """A data config as far as it decides the embeddings: the patches are embedded in `eval_batch_size`
    batches, so the training `batch_size` and the loader's `num_workers` do not count."""
    config = OmegaConf.to_container(data, resolve=True)
    for key in ("batch_size", "num_workers"):
        config.pop(key, None)
    return config


def _backbone_config(cfg: Any, labeled: HistoDataModule) -> tuple[str, dict[str, Any]]:
    """The backbone's name and keyword arguments (`model`); smoke tests never download weights."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    name = model.pop("backbone")
    if labeled.source == "random" and model.get("pretrained"):
        model["pretrained"] = False
    return name, model


def _embed(
    backbone_name: str,
    backbone_params: dict[str, Any],
    patches: dict[str, tuple[HistoDataModule, Any]],
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Pooled backbone features (x_<part>) and labels (y_<part>) of each part of `patches`, in order, on the
    CPU; the unlabeled part keeps its features only."""
    backbone = build_backbone(backbone_name, num_classes=0, **backbone_params).to(device).eval()

    def encode(x: torch.Tensor) -> torch.Tensor:
        return backbone.forward_head(backbone.forward_features(x), pre_logits=True)

    embeddings = {}
    for part, (module, dataset) in patches.items():
        with torch.no_grad():  # the backbone is frozen: no autograd graph through it
            features, labels = extract_features(
                encode, module.loader(dataset, shuffle=False, train=False), device
            )
        embeddings[f"x_{part}"] = features.cpu()
        if part != "unlabeled":
            embeddings[f"y_{part}"] = labels.cpu()
    return embeddings


def _accuracy(head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    head.eval()
    with torch.no_grad():
        return float((head(x).argmax(1) == y).float().mean())


def _labeled_subset(
    candidates: np.ndarray, labels: np.ndarray, size: int, *, balanced: bool, rng: np.random.Generator
) -> np.ndarray:
    """`size` training positions from `candidates`: stratified by class, or equally many per class (binary
    task, as the official equal_sampling)."""
    classes = np.unique(labels[candidates])
    if size < len(classes):
        raise UserError(f"{size} labelled samples cannot cover {len(classes)} classes")
    if balanced:
        quotas = {c: size // len(classes) + (i < size % len(classes)) for i, c in enumerate(classes)}
    else:
        share = np.array([np.mean(labels[candidates] == c) for c in classes])
        counts = np.maximum(1, np.floor(share * size).astype(int))
        while counts.sum() < size:
            counts[np.argmax(share * size - counts)] += 1
        while counts.sum() > size:
            counts[np.argmax(counts)] -= 1
        quotas = dict(zip(classes, counts, strict=True))
    chosen = []
    for c, k in quotas.items():
        members = candidates[labels[candidates] == c]
        chosen.append(rng.choice(members, size=min(int(k), len(members)), replace=False))
    return np.concatenate(chosen)


@register_method("ood_unlabeled_dro_histo_erm")
class HistoERM(_HistoPipeline):
    """Robust (DRO) cross entropy on the labelled embeddings only."""


@register_method("ood_unlabeled_dro_histo_rss")
class HistoRSS(_HistoPipeline):
    """RSS: labelled robust loss + lam x robust loss on self-labelled unlabeled embeddings."""

    uses_unlabeled = True
