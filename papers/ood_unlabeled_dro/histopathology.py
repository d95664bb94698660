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
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from sklearn.metrics import f1_score
from torch import nn
from torch.utils.data import Subset

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


class _HistoPipeline(Pipeline):
    """Embeds the needed patches once, then trains the head with ERM (lam = 0) or RSS (module doc)."""

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
        encode, pretrained = self._encoder(cfg, labeled, device)
        context.extra["pretrained_weights"] = pretrained

        def embed(module: HistoDataModule, dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return extract_features(encode, module.loader(dataset, shuffle=False, train=False), device)

        x_train, y_train = embed(labeled, labeled.train_dataset(train_idx))
        x_val, y_val = embed(labeled, labeled.train_dataset(val_idx))
        test_set = labeled.test_dataset()
        if smoke:
            test_set = Subset(test_set, range(min(4, len(test_set))))
        x_test, y_test = embed(labeled, test_set)
        x_unl = None
        if self.uses_unlabeled and n > 0:
            x_unl = self._unlabeled(cfg, labeled, rest, train_idx, n, rng, embed)
        metrics = self._train_head(x_train, y_train, x_unl, x_val, y_val, x_test, y_test, labeled.num_classes,
                                   smoke, device)  # fmt: skip
        metrics.update(
            {"num_labeled": float(len(train_idx)), "num_unlabeled": float(0 if x_unl is None else len(x_unl))}
        )
        return metrics

    def _encoder(self, cfg: Any, labeled: HistoDataModule, device: torch.device) -> tuple[Any, bool]:
        model = OmegaConf.to_container(cfg.model, resolve=True)
        name = model.pop("backbone")
        if labeled.source == "random" and model.get("pretrained"):
            model["pretrained"] = False  # smoke tests never download weights
        backbone = build_backbone(name, num_classes=0, **model).to(device).eval()

        def encode(x: torch.Tensor) -> torch.Tensor:
            return backbone.forward_head(backbone.forward_features(x), pre_logits=True)

        return encode, bool(model.get("pretrained", False))

    def _unlabeled(
        self,
        cfg: Any,
        labeled: HistoDataModule,
        rest: np.ndarray,
        train_idx: np.ndarray,
        n: int,
        rng: np.random.Generator,
        embed: Any,
    ) -> torch.Tensor:
        source = str(cfg.protocol.unlabeled_source)
        if source == "same":
            remaining = np.setdiff1d(rest, train_idx)
            chosen = rng.choice(remaining, size=min(n, len(remaining)), replace=False)
            return embed(labeled, labeled.train_dataset(chosen))[0]
        if source != "other":
            raise UserError(f"protocol.unlabeled_source must be same or other, got {source!r}")
        params = OmegaConf.to_container(cfg.unlabeled_data, resolve=True)
        params.pop("datamodule", None)
        if labeled.source == "random":
            params.update(source="random", split_seed=1, hub_id=None)
        other = HistoDataModule(seed=int(cfg.seed), **params)
        other.setup("fit")
        chosen = rng.choice(other.num_train, size=min(n, other.num_train), replace=False)
        return embed(other, other.train_dataset(chosen))[0]

    def _train_head(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        x_unl: torch.Tensor | None,
        x_val: torch.Tensor,
        y_val: torch.Tensor,
        x_test: torch.Tensor,
        y_test: torch.Tensor,
        num_classes: int,
        smoke: bool,
        device: torch.device,
    ) -> dict[str, float]:
        p = self.params
        head = FeatureHead(x.shape[1], list(p.get("hidden", [2048, 2048, 2048, 2048])), num_classes).to(
            device
        )
        optimizer = torch.optim.Adam(
            head.parameters(), lr=float(p["lr"]), weight_decay=float(p["weight_decay"])
        )
        epochs = 1 if smoke else int(p["epochs"])
        steps = 1 if smoke else int(p.get("steps_per_epoch", 2))
        ascent_steps = 1 if smoke else int(p["perturbation_steps"])
        lam = float(p.get("lam", 0.0)) if x_unl is not None else 0.0
        best_val, best_state = -1.0, None
        for _ in range(epochs):
            head.train()
            labeled_chunks = torch.arange(len(x), device=x.device).chunk(steps)
            unlabeled_chunks = (
                torch.randperm(len(x_unl), device=x_unl.device).chunk(steps)
                if x_unl is not None
                else [None] * steps
            )
            for li, ui in zip(labeled_chunks, unlabeled_chunks, strict=False):
                optimizer.zero_grad()
                loss = rss_loss(
                    head,
                    x[li],
                    y[li],
                    None if ui is None else x_unl[ui],
                    gamma=float(p["gamma"]),
                    gamma_unlabeled=float(p.get("gamma_unlabeled", 0.0)),
                    lam=lam,
                    steps=ascent_steps,
                    step_size=float(p["step_size"]),
                )
                if not torch.isfinite(loss):
                    raise FloatingPointError("non-finite RSS loss")
                loss.backward()
                optimizer.step()
            val_acc = _accuracy(head, x_val, y_val)
            if val_acc > best_val:
                best_val, best_state = val_acc, {k: v.clone() for k, v in head.state_dict().items()}
        assert best_state is not None
        head.load_state_dict(best_state)
        head.eval()
        with torch.no_grad():
            predictions = head(x_test).argmax(1).cpu().numpy()
        truth = y_test.cpu().numpy()
        return {
            "test/acc": 100 * float(np.mean(predictions == truth)),
            "test/macro_f1": 100 * float(f1_score(truth, predictions, average="macro")),
            "val/acc_best": 100 * best_val,
        }


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
