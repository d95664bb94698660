"""IAM-CL2R (Biondi et al., CVPR 2024): sequential fine-tuning on class-incremental tasks with replay, where
at some tasks the model is replaced by a better one pre-trained elsewhere, and the gallery is never
re-indexed. One run = one method (ER with a learnable classifier, d-Simplex, d-Simplex-HOC) on one sequence.

Steps, after the official loop (miccunifi/iamcl2r @ 18495ac, src/iamcl2r/main.py lines 112-236):
1. keep the first `img_per_class` training examples of each class (dataset/dataset_utils.py lines 10-31)
   and split the classes into `num_tasks` tasks: `initial_classes`, then equal increments (continuum's
   `ClassIncremental`, classes in id order);
2. for task t: start from the upstream model `replace_ids.index(t)` when t is a replacement task (its
   learnable head is dropped, models/__init__.py line 181), otherwise from the model of task t-1; for HOC
   the frozen starting model is the old model of the loss (main.py lines 115-140); train on the task's
   examples plus the replay memory, each batch half memory and half new examples (dataset_utils.py
   `BalancedBatchSampler`); then add `rehearsal` random examples of each new class to the memory;
3. after each task: classification accuracy on the test examples of the classes seen so far (train.py
   `classification`), and the row of the compatibility matrix: 1:N search of the query set with the new
   model against the class templates of every earlier model's gallery (eval.py lines 21-74);
4. AC and AM of the matrix (metrics.py).
The upstream ("downloaded") models are pre-trained here, with the method's classifier: the official
checkpoints are ResNet-18 trained on 100 / 300 / 600 ImageNet32 classes (notebooks/iamcl2r_hoc.ipynb cell 2),
shared only as a download outside the HuggingFace hub. Each is the stage `upstream_model`
(`<output_root>/stages/d_simplex/upstream_model/<key>/`), trained once and reused by every run that needs it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, Subset

from common.backbones import build_backbone_for
from common.data.datamodule import TensorBatchDataset
from common.errors import UserError
from common.lit import Pipeline, RunContext
from common.registry import lookup, register_method
from papers.d_simplex.metrics import (
    average_compatibility,
    average_multimodel_accuracy,
    class_templates,
    identification_accuracy,
)
from papers.d_simplex.module import CLASSIFIERS, CompatibleLearner

log = logging.getLogger("pnu.d_simplex")

RETRIEVAL_SPLITS = ("train", "test", "test_half_0", "test_half_1")
UPSTREAM_STAGE = "upstream_model"


# ---- the sequence ------------------------------------------------------------------------------------------
def first_per_class(labels: np.ndarray, per_class: int | None) -> np.ndarray:
    """Positions of the first `per_class` examples of every class, in dataset order (all when None)."""
    labels = np.asarray(labels)
    if per_class is None:
        return np.arange(len(labels))
    keep = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep)) if keep else np.arange(0)


def class_incremental_tasks(num_classes: int, initial_classes: int, num_tasks: int) -> list[np.ndarray]:
    """Class ids of each task: `initial_classes` first, then equal increments up to `num_classes`."""
    if num_tasks < 1 or not 0 < initial_classes <= num_classes:
        raise UserError(
            f"iamcl2r needs num_tasks >= 1 and 0 < initial_classes <= {num_classes}; "
            f"got num_tasks={num_tasks}, initial_classes={initial_classes}"
        )
    rest = num_classes - initial_classes
    if num_tasks == 1 or rest % (num_tasks - 1):
        if num_tasks != 1 or rest:
            raise UserError(
                f"the {rest} classes after the first task do not split into {num_tasks - 1} equal "
                f"increments; change iamcl2r.num_tasks or iamcl2r.initial_classes"
            )
        return [np.arange(num_classes)]
    increment = rest // (num_tasks - 1)
    bounds = [0, initial_classes, *range(initial_classes + increment, num_classes + 1, increment)]
    return [np.arange(lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False)]


class ReplayBatchSampler(torch.utils.data.Sampler):
    """Index batches over a dataset of `num_new` new examples followed by `num_memory` memory examples.

    Without memory: a fresh permutation per epoch in full batches (the official first task's shuffled,
    drop-last loader). With memory: `num_total // batch_size` batches of half memory, half new examples,
    each half drawn without replacement unless it is not larger than the half batch (official
    `BalancedBatchSampler`, dataset_utils.py lines 35-71)."""

    def __init__(self, num_new: int, num_memory: int, batch_size: int, generator: torch.Generator):
        if num_new + num_memory == 0:
            raise ValueError("nothing to sample from")
        self.num_new, self.num_memory, self.batch_size, self.generator = (
            num_new,
            num_memory,
            batch_size,
            generator,
        )
        total = num_new + num_memory
        self.num_batches = max(total // batch_size, 1)
        if num_memory == 0:
            self.half = min(batch_size, total)
        else:
            self.half = total // 2 if total < batch_size else batch_size // 2

    def __len__(self) -> int:
        return self.num_batches

    def _draw(self, count: int, offset: int) -> torch.Tensor:
        if count <= self.half:  # the official `replace=True` branch
            picks = torch.randint(count, (self.half,), generator=self.generator)
        else:
            picks = torch.randperm(count, generator=self.generator)[: self.half]
        return picks + offset

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.num_memory == 0:
            order = torch.randperm(self.num_new, generator=self.generator)
            for b in range(self.num_batches):
                yield order[b * self.half : (b + 1) * self.half]
            return
        for _ in range(self.num_batches):
            parts = [self._draw(self.num_memory, self.num_new)]
            if self.num_new:
                parts.append(self._draw(self.num_new, 0))
            yield torch.cat(parts)


@dataclass
class Scenario:
    """`cfg.iamcl2r`: the task sequence, replay, replacements and evaluation sets of a table.

    `sequence_classes`: the tasks cover class ids 0..n-1 of the run's data (all when None); `upstream`:
    data overrides (null: the sequence classes' training examples that `img_per_class` leaves out),
    `classes` and `fractions` of each pre-trained model, `label_offset`, `epochs`, `optim`; `retrieval`:
    data overrides (null: the run's data), `gallery` / `query` splits and optional `classes`."""

    initial_classes: int
    num_tasks: int
    replace_ids: list[int]
    rehearsal: int
    img_per_class: int | None
    sequence_classes: int | None = None
    upstream: dict[str, Any] = field(default_factory=dict)
    retrieval: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> Scenario:
        node = OmegaConf.select(cfg, "iamcl2r")
        if node is None:
            raise UserError(
                "the d-Simplex pipeline needs an `iamcl2r` block in the table's scale section "
                "(see conf/papers/d_simplex/iamcl2r.yaml)"
            )
        raw = OmegaConf.to_container(node, resolve=True)
        scenario = cls(**raw)
        if 0 not in scenario.replace_ids:
            raise UserError(
                "iamcl2r.replace_ids must contain 0: the sequence starts from a pre-trained model"
            )
        classes = scenario.upstream.get("classes") or []
        if len(classes) < len(scenario.replace_ids):
            raise UserError(
                f"iamcl2r.upstream.classes lists {len(classes)} pre-trained models for "
                f"{len(scenario.replace_ids)} replacements ({scenario.replace_ids})"
            )
        return scenario


@contextmanager
def _no_validation_loop_warning() -> Iterator[None]:
    """Evaluation happens after each fit, not in Lightning's validation loop: silence its warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*validation_step.*val_dataloader.*")
        yield


def _upstream_fraction(spec: dict[str, Any], index: int) -> float:
    """The share of each class the `index`-th pre-trained model trains on (all when no fractions)."""
    return float((spec.get("fractions") or [1.0] * (index + 1))[index])


# ---- data helpers ------------------------------------------------------------------------------------------
def extra_datamodule(cfg: DictConfig, overrides: dict[str, Any] | None, main: Any) -> Any:
    """A second data module: the run's data config with `overrides` (e.g. another hub id). With the
    run's `random` source (smoke tests) it stays random, of the overrides' shapes and classes."""
    if not overrides:
        return main
    params = {**OmegaConf.to_container(cfg.data, resolve=True), **overrides}
    if cfg.data.source == "random":
        params["source"] = "random"
    name = params.pop("datamodule")
    params.setdefault("seed", int(cfg.seed))
    if cfg.runtime.get("cache_dir"):
        params.setdefault("cache_dir", cfg.runtime.cache_dir)
    datamodule = lookup("datamodule", name)(**params)
    datamodule.setup("fit")
    return datamodule


def subset(dataset: Dataset, positions: np.ndarray) -> Dataset:
    positions = np.asarray(positions, dtype=np.int64)
    if isinstance(dataset, TensorBatchDataset):
        index = torch.as_tensor(positions)
        return TensorBatchDataset({key: value[index] for key, value in dataset.tensors.items()})
    return Subset(dataset, positions.tolist())


def stratified_halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two class-stratified halves of a split (seeded)."""
    rng = np.random.default_rng(seed)
    halves: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        cut = (len(members) + 1) // 2
        halves[0].append(members[:cut])
        halves[1].append(members[cut:])
    return np.sort(np.concatenate(halves[0])), np.sort(np.concatenate(halves[1]))


def train_loader(datamodule: Any, dataset: Dataset, sampler: ReplayBatchSampler) -> DataLoader:
    if isinstance(dataset, TensorBatchDataset):
        return DataLoader(dataset, batch_size=None, sampler=sampler)
    workers = int(getattr(datamodule, "num_workers", 0))
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


# ---- the pipeline ------------------------------------------------------------------------------------------
@register_method("d_simplex_iamcl2r")
class IAMCL2RPipeline(Pipeline):
    """Class-incremental fine-tuning with replay and model replacements; reports AC, AM and accuracy.

    `classifier`: dsimplex (fixed d-Simplex, K = `preallocated_classes` vertices) or learnable (ER);
    `hoc_lambda`: weight of the cross entropy in the HOC loss (1 = plain cross entropy), `hoc_mu`: scale
    of its similarities (official d-Simplex-HOC: 0.1 and 10)."""

    def __init__(
        self,
        classifier: str = "dsimplex",
        preallocated_classes: int = 1024,
        hoc_lambda: float = 1.0,
        hoc_mu: float = 10.0,
    ):
        if classifier not in CLASSIFIERS:
            raise UserError(f"method.classifier must be one of {CLASSIFIERS}; got {classifier!r}")
        if classifier == "learnable" and hoc_lambda < 1:
            raise UserError("method.hoc_lambda < 1 (the HOC loss) needs method.classifier=dsimplex")
        self.classifier, self.preallocated_classes = classifier, int(preallocated_classes)
        self.hoc_lambda, self.hoc_mu = float(hoc_lambda), float(hoc_mu)
        self._upstream_data: Any = None  # loaded once per run, for every pre-trained model

    # ---- models ------------------------------------------------------------------------------------------
    def _learner(
        self, context: RunContext, num_outputs: int, hoc: bool, optim: DictConfig | None = None
    ) -> CompatibleLearner:
        cfg, datamodule = context.cfg, context.datamodule
        optim = optim if optim is not None else cfg.optim
        return CompatibleLearner(
            backbone=build_backbone_for(cfg, datamodule),
            num_classes=datamodule.num_classes,
            num_train_examples=datamodule.num_train,
            optimizer=instantiate(optim.optimizer),
            scheduler=instantiate(optim.scheduler) if optim.get("scheduler") else None,
            scheduler_interval=optim.get("scheduler_interval", "epoch"),
            classifier=self.classifier,
            num_outputs=num_outputs,
            preallocated_classes=self.preallocated_classes,
            hoc_lambda=self.hoc_lambda if hoc else 1.0,
            hoc_mu=self.hoc_mu,
        )

    def _fit(self, context: RunContext, learner: CompatibleLearner, loader: DataLoader, epochs: int) -> None:
        trainer = context.make_trainer(max_epochs=int(epochs), limit_val_batches=0)
        with _no_validation_loop_warning():
            trainer.fit(learner, train_dataloaders=loader)

    def upstream_stage_config(self, cfg: DictConfig, scenario: Scenario, index: int) -> dict[str, Any]:
        """What decides the `index`-th pre-trained model: the seed, the classifier, the data, model and
        trainer configs (its epochs and optimiser are the upstream's own), the examples the sequence keeps
        (the upstream trains on the rest when it has no data of its own) and the model's upstream spec.
        The fine-tuning's loss (HOC or not) and schedule do not enter: d-Simplex and d-Simplex-HOC rows, and
        both columns, share the models."""
        spec = scenario.upstream
        trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
        trainer.pop("max_epochs", None)  # the fine-tuning's; the upstream trains for `upstream.epochs`
        return {
            "index": index,
            "seed": int(cfg.seed),
            "classifier": self.classifier,
            "preallocated_classes": self.preallocated_classes if self.classifier == "dsimplex" else None,
            "data": OmegaConf.to_container(cfg.data, resolve=True),
            "model": OmegaConf.to_container(cfg.model, resolve=True),
            "trainer": trainer,
            "img_per_class": scenario.img_per_class,
            "sequence_classes": scenario.sequence_classes,
            "upstream": {
                **spec,
                "classes": int(spec["classes"][index]),
                "fractions": _upstream_fraction(spec, index),
            },
        }

    def _upstream_model(self, context: RunContext, scenario: Scenario, index: int) -> CompatibleLearner:
        """The `index`-th "downloaded" model: trained from scratch on the first `classes[index]` upstream
        classes (a `fractions[index]` share of each), with this method's classifier and cross entropy.

        With the run's stages it is the stage `upstream_model`, trained once per `upstream_stage_config`
        and reused by every run that needs it. Its training has its own RNG stream, so a reused model is the
        one a fresh run would train, and the run's random state does not depend on which it got."""
        cfg, main = context.cfg, context.datamodule
        spec = scenario.upstream
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.seed) * 1000 + 900 + index)
            if self._upstream_data is None:
                self._upstream_data = extra_datamodule(cfg, spec.get("data"), main)
            datamodule = self._upstream_data
            chosen, relabelled = self._upstream_examples(context, scenario, index, datamodule)
            num_outputs = int(relabelled.max()) + 1 if len(relabelled) else 1
            optim = OmegaConf.select(cfg, "iamcl2r.upstream.optim")
            learner = self._learner(context, num_outputs, hoc=False, optim=optim)
            if len(chosen) == 0:
                log.warning("upstream model %d has no training examples; it stays as initialised", index)
                return learner
            dataset = datamodule.train_dataset(chosen, labels=relabelled)
            generator = torch.Generator().manual_seed(int(cfg.seed) * 1000 + 900 + index)
            sampler = ReplayBatchSampler(len(chosen), 0, int(datamodule.batch_size), generator)
            loader = train_loader(datamodule, dataset, sampler)
            epochs = int(spec["epochs"])
            num_classes = int(spec["classes"][index])
            log.info("upstream model %d: %d examples of %d classes", index, len(chosen), num_classes)
            if context.stages is None:
                self._fit(context, learner, loader, epochs)
                return learner
            with _no_validation_loop_warning():
                return context.stages.fit(
                    UPSTREAM_STAGE,
                    self.upstream_stage_config(cfg, scenario, index),
                    lambda: learner,
                    trainer_overrides={"max_epochs": epochs, "limit_val_batches": 0},
                    train_dataloaders=loader,
                )

    @staticmethod
    def _upstream_examples(
        context: RunContext, scenario: Scenario, index: int, datamodule: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """(positions, labels) of the `index`-th model's training examples in `datamodule`: a seeded
        `fraction` of each of the first `classes[index]` classes, labels shifted by `label_offset`."""
        main, spec = context.datamodule, scenario.upstream
        if datamodule is main:  # the run's own training examples of the sequence classes it leaves out
            labels = np.asarray(main.train_labels)
            in_sequence = np.flatnonzero(labels < (scenario.sequence_classes or main.num_classes))
            used = in_sequence[first_per_class(labels[in_sequence], scenario.img_per_class)]
            pool = np.setdiff1d(in_sequence, used)
            if len(pool) == 0:
                raise UserError("iamcl2r.upstream.data is null but img_per_class leaves no examples out")
        else:
            pool = np.arange(datamodule.num_train)
        labels = np.asarray(datamodule.train_labels_clean)
        fraction = _upstream_fraction(spec, index)
        rng = np.random.default_rng([int(context.cfg.seed), 1])
        chosen = []
        for c in range(int(spec["classes"][index])):
            members = rng.permutation(pool[labels[pool] == c])  # same order for every index: nested subsets
            chosen.append(members[: int(round(fraction * len(members)))])
        chosen = np.sort(np.concatenate(chosen)) if chosen else np.arange(0)
        # Upstream class ids are unrelated to the task classes' (ImageNet's vs CIFAR's in the paper).
        offset = int(spec.get("label_offset", 0))
        return chosen, (labels[chosen] + offset) % datamodule.num_classes

    # ---- evaluation -------------------------------------------------------------------------------------
    @staticmethod
    def _device(cfg: DictConfig) -> torch.device:
        wants_gpu = str(cfg.trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda")
        return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")

    @staticmethod
    @torch.no_grad()
    def _embed_all(
        learner: CompatibleLearner, datamodule: Any, dataset: Dataset, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features, predicted classes and labels of a dataset (eval mode)."""
        learner.eval().to(device)
        features, predictions, labels = [], [], []
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
        for batch in datamodule.loader(dataset, shuffle=False, train=False):
            x = batch["x"].to(device)
            with autocast:
                embedded = learner.embed(x)
                logits = learner.logits_from(embedded)
            features.append(embedded.float().cpu())
            predictions.append(learner.class_of_output(logits.argmax(dim=1)).cpu())
            labels.append(batch["y_clean"].cpu())
        learner.train().to("cpu")
        return torch.cat(features), torch.cat(predictions), torch.cat(labels)

    def _retrieval_sets(self, context: RunContext, scenario: Scenario) -> tuple[Any, Dataset, Dataset]:
        """(data module, gallery, query) of the compatibility evaluation."""
        cfg, main = context.cfg, context.datamodule
        spec = scenario.retrieval
        datamodule = extra_datamodule(cfg, spec.get("data"), main)
        test_labels = np.asarray(datamodule.test_labels)
        halves = stratified_halves(test_labels, int(cfg.data.get("split_seed", 0)))

        wanted = spec.get("classes")
        train_labels = np.asarray(datamodule.train_labels_clean)

        def split(name: str) -> Dataset:
            if name not in RETRIEVAL_SPLITS:
                raise UserError(
                    f"iamcl2r.retrieval gallery/query must be one of {RETRIEVAL_SPLITS}; got {name!r}"
                )
            if name == "train":
                positions, dataset = np.arange(len(train_labels)), datamodule.train_dataset()
                split_labels = train_labels
            else:
                positions = np.arange(len(test_labels)) if name == "test" else halves[int(name[-1])]
                dataset, split_labels = datamodule.test_dataset(), test_labels
            if wanted is None:
                return dataset if len(positions) == len(split_labels) else subset(dataset, positions)
            return subset(dataset, positions[np.isin(split_labels[positions], wanted)])

        return datamodule, split(spec.get("gallery", "test")), split(spec.get("query", "train"))

    # ---- run ----------------------------------------------------------------------------------------------
    def run(self, context: RunContext) -> dict[str, float]:
        cfg, datamodule = context.cfg, context.datamodule
        scenario = Scenario.from_cfg(cfg)
        seed = int(cfg.seed)
        device = self._device(cfg)
        hoc = self.classifier == "dsimplex" and self.hoc_lambda < 1.0
        num_classes = int(scenario.sequence_classes or datamodule.num_classes)
        if self.classifier == "dsimplex" and num_classes > self.preallocated_classes:
            raise UserError(
                f"{num_classes} classes do not fit {self.preallocated_classes} d-Simplex vertices"
            )
        labels = np.asarray(datamodule.train_labels)
        in_sequence = np.flatnonzero(labels < num_classes)
        sequence = in_sequence[first_per_class(labels[in_sequence], scenario.img_per_class)]
        tasks = class_incremental_tasks(num_classes, scenario.initial_classes, scenario.num_tasks)
        test_labels = np.asarray(datamodule.test_labels)
        retrieval_dm, gallery, query = self._retrieval_sets(context, scenario)
        rng = np.random.default_rng([seed, 2])

        upstream: dict[int, CompatibleLearner] = {}
        memory: list[np.ndarray] = []
        templates: list[tuple[torch.Tensor, torch.Tensor]] = []
        matrix = np.zeros((len(tasks), len(tasks)))
        accuracies: list[float] = []
        previous: CompatibleLearner | None = None
        for t, classes in enumerate(tasks):
            seen = np.concatenate(tasks[: t + 1])
            replaced = t in scenario.replace_ids
            if replaced:
                r = scenario.replace_ids.index(t)
                if r not in upstream:
                    upstream[r] = self._upstream_model(context, scenario, r)
                start = upstream.pop(r)
            else:
                start = previous
            learner = self._learner(context, num_outputs=len(seen), hoc=hoc)
            learner.load_weights_from(start, keep_classifier=not replaced)
            if hoc:
                learner.set_old_model(start.frozen_embedder())
            new = sequence[np.isin(labels[sequence], classes)]
            remembered = np.concatenate(memory) if memory else np.arange(0)
            if len(new) + len(remembered):
                dataset = datamodule.train_dataset(np.concatenate([new, remembered]))
                generator = torch.Generator().manual_seed(seed * 1000 + t)
                sampler = ReplayBatchSampler(len(new), len(remembered), int(datamodule.batch_size), generator)
                log.info(
                    "task %d: %d new examples of classes %s, %d from memory",
                    t,
                    len(new),
                    classes,
                    len(remembered),
                )
                self._fit(
                    context, learner, train_loader(datamodule, dataset, sampler), int(cfg.trainer.max_epochs)
                )
            else:
                log.warning("task %d has no training examples; the model is carried over unchanged", t)
            learner.set_old_model(None)
            for (
                c
            ) in classes:  # random exemplars, a fixed number per class (continuum RehearsalMemory, random)
                members = new[labels[new] == c]
                memory.append(rng.permutation(members)[: scenario.rehearsal])

            # Classification accuracy on the test examples of the classes seen so far.
            seen_test = np.flatnonzero(np.isin(test_labels, seen))
            if len(seen_test):
                _, predicted, truth = self._embed_all(
                    learner, datamodule, subset(datamodule.test_dataset(), seen_test), device
                )
                accuracies.append(100.0 * float((predicted == truth).float().mean()))
            # Row t of the compatibility matrix: the new model's queries against every gallery so far.
            gallery_features, _, gallery_labels = self._embed_all(learner, retrieval_dm, gallery, device)
            templates.append(class_templates(gallery_features, gallery_labels))
            query_features, _, query_labels = self._embed_all(learner, retrieval_dm, query, device)
            for j in range(t + 1):
                matrix[t, j] = identification_accuracy(*templates[j], query_features, query_labels)
            previous = learner

        am_per_task = average_multimodel_accuracy(matrix, per_task=True)
        context.curves = {
            "task/am": am_per_task,
            "task/self_test": [100.0 * float(v) for v in np.diag(matrix)],
            "task/acc": accuracies,
        }
        context.extra["compatibility_matrix"] = matrix.tolist()
        context.extra["tasks"] = [c.tolist() for c in tasks]
        metrics = {
            "test/ac": average_compatibility(matrix),
            "test/am": am_per_task[-1],
            "test/self_test": 100.0 * float(matrix[-1, -1]),
        }
        if accuracies:
            metrics["test/acc"] = accuracies[-1]
            metrics["test/acc_avg"] = float(np.mean(accuracies))
        # The first replacement after task 0: the replaced model's queries against the task-0 gallery minus
        # the task-0 model's self-test, M[r][0] - M[0][0] (%), >= 0 when the replacement is compatible.
        if later := [r for r in scenario.replace_ids if 0 < r < len(tasks)]:
            gap = matrix[min(later), 0] - matrix[0, 0]
            metrics["test/replacement_cross_minus_old_self"] = 100.0 * float(gap)
        return metrics
