"""LLP-BP and the LLP baselines as harness methods (`method=llp_bp | llp_bp_val_select | llp_bp_dllp |
llp_bp_easyllp | llp_bp_bag_prior | llp_bp_oracle`). Every method trains the table's MLP (`model.hidden_dims`)
on the training examples that are in a bag and reports the test AUC (%) of its final classifier.

- `llp_bp`: round r = 0..refinement_rounds: build the cosine kNN graph on the current covariates (raw
  features, then the previous classifier's embeddings), run loopy BP on the Gibbs distribution, threshold the
  marginals into pseudo-labels, train a fresh MLP on the raw features with BCE on them (official train.py: two
  rounds). `refinement_rounds: 0` is the ablation without embedding refinement.
- `llp_bp_val_select`: `llp_bp` with bag_lambda picked from a grid by the final classifier's validation AUC.
- `llp_bp_dllp`: bag-level BCE between the mean prediction and the label proportion.
- `llp_bp_easyllp`: the EasyLLP unbiased instance surrogate.
- `llp_bp_bag_prior`: BCE on soft targets = the instance's bag proportion (the bag prior as pseudo-label).
- `llp_bp_oracle`: BCE on the true instance labels (a supervised reference, not an LLP method).
Pseudo-label quality on the training examples (`pseudo/auc`, `pseudo/acc`: AUC of the soft pseudo-labels
and accuracy of the hard ones against the hidden labels) is reported by the LLP-BP methods and
`llp_bp_bag_prior`. The LLP-BP methods also record BP's convergence per round (`bp/final_delta`: the
largest message change of the last iteration, log-odds; `bp/converged`: 100 when below BP_CONVERGED_DELTA).
A run's (metrics, curves) are a stage named after its method, stored under
`<output_root>/stages/llp_bp/<method>/<key>/` and keyed by everything that decides them (`stage_config`: the
method's parameters, the data split, model, optimiser, schedule and seed), so the pseudo-label table reads the
runs of the AUC table and the `llp_bp_val_select` candidates reuse the `llp_bp` runs.
Inside a run every MLP fit is the stage `classifier` (`ClassifierFit`, a Lightning fit checkpointed every
epoch, so a killed paper-scale run resumes the fit it was in; `fit`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.utilities.seed import isolate_rng
from omegaconf import OmegaConf

from common.errors import UserError
from common.lit import Pipeline, RunContext
from common.registry import register_method
from papers.llp_bp.bp import loopy_bp
from papers.llp_bp.data import LLPTabularDataModule
from papers.llp_bp.gibbs import knn_similarity_graph, llp_bp_mrf
from papers.llp_bp.learners import (
    ClassifierFit,
    Schedule,
    TabularMLP,
    auc_percent,
    dllp_loss,
    easyllp_loss,
    predict_proba,
)

# A run's BP counts as converged when its last iteration changed no message by more than this (log-odds).
BP_CONVERGED_DELTA = 1e-3


class LLPPipeline(Pipeline):
    """Shared plumbing: data check, the run's stage, model and schedule from the run's config."""

    name: str

    def __init__(self, **params: Any) -> None:
        self.params = params

    def run(self, context: RunContext) -> dict[str, float]:
        datamodule = context.datamodule
        if not isinstance(datamodule, LLPTabularDataModule):
            raise UserError(f"{self.name} needs bagged tabular data (datamodule: llp_tabular)")
        self.context, self.datamodule = context, datamodule
        seed = int(context.cfg.seed)

        def compute() -> dict[str, Any]:
            torch.manual_seed(seed)  # the stage seeds too; this seeds a run without stages alike
            metrics = self.with_data_metrics(self.compute())
            return {"metrics": metrics, "curves": context.curves}

        if context.stages is None:  # called outside the runner (no stage folder): nothing to share
            return compute()["metrics"]
        stored = context.stages.compute(self.name, self.stage_config(self.params), compute, seed=seed)
        context.curves = stored["curves"]
        return stored["metrics"]

    def stage_config(self, params: dict[str, Any]) -> dict[str, Any]:
        """What decides the metrics of this method with `params`: the data split, model, optimiser, schedule
        and seed of the run."""
        cfg = self.context.cfg
        return {
            "params": params,
            "split_hash": self.datamodule.split_hash,
            **{
                part: OmegaConf.to_container(cfg.get(part) or {}, resolve=True)
                for part in ("data", "model", "optim", "trainer", "early_stopping")
            },
            "seed": int(cfg.seed),
        }

    def with_data_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        metrics["data/num_bags"] = float(self.datamodule.bags.num_bags)
        metrics["data/train_positive_rate"] = 100.0 * float(self.datamodule.bagged()[1].mean())
        return metrics

    def compute(self) -> dict[str, float]:
        raise NotImplementedError

    # ---- helpers -------------------------------------------------------------------------------------------
    def new_model(self) -> TabularMLP:
        hidden = list(OmegaConf.select(self.context.cfg, "model.hidden_dims", default=None) or [])
        return TabularMLP(self.datamodule.num_features, hidden)

    def schedule(self) -> Schedule:
        cfg = self.context.cfg
        optimizer = OmegaConf.select(cfg, "optim.optimizer", default=None)
        stopping = cfg.get("early_stopping") or {}
        limit = cfg.trainer.get("limit_train_batches")
        return Schedule(
            make_optimizer=instantiate(optimizer) if optimizer is not None else None,
            batch_size=int(self.datamodule.batch_size),
            max_epochs=int(cfg.trainer.max_epochs),
            patience=int(stopping.get("patience", 4)),
            min_delta=float(stopping.get("min_delta", 1e-4)),
            limit_train_batches=int(limit) if isinstance(limit, int) else None,
        )

    def tensors(self, split: str) -> tuple[torch.Tensor, np.ndarray]:
        x, y = self.datamodule.split(split)
        return torch.from_numpy(x), y

    def fit_on_targets(
        self, x: torch.Tensor, targets: torch.Tensor, name: str, seed_offset: int = 0
    ) -> tuple[TabularMLP, dict[str, float]]:
        """A fresh MLP trained with BCE on per-instance targets in [0, 1]; its validation and test AUC."""

        def loss(m: TabularMLP, ids: torch.Tensor) -> torch.Tensor:
            return F.binary_cross_entropy_with_logits(m(x[ids]), targets[ids])

        return self.fit(loss, len(x), self.schedule().batch_size, name, seed_offset)

    def fit(
        self,
        loss: Any,
        num_units: int,
        units_per_batch: int,
        name: str,
        seed_offset: int = 0,
    ) -> tuple[TabularMLP, dict[str, float]]:
        """A fresh MLP trained on `loss` (`ClassifierFit`) as the stage `classifier`, keyed by the run's
        `fit_config` and `name`; the trained MLP and its test AUC, best validation AUC and epochs."""
        valid, schedule = self.tensors("valid"), self.schedule()
        seed = int(self.context.cfg.seed) * 1000 + seed_offset
        overrides = ClassifierFit.trainer_overrides(schedule)

        def make_module() -> ClassifierFit:
            model = self.new_model()  # the run's random state, as before the fit
            return ClassifierFit(
                model, loss, num_units, max(1, units_per_batch), valid, schedule, seed=seed, log_name=name
            )

        stages = self.context.stages
        if stages is None:  # outside the runner: the same fit, not stored
            module = make_module()
            with isolate_rng():
                self.context.make_trainer(**overrides).fit(module)
        else:
            config = {"run": self.fit_config(), "fit": name, "seed": seed}
            module = stages.fit("classifier", config, make_module, trainer_overrides=overrides, seed=seed)
        curve = list(module.curves["valid_auc"])
        self.context.curves[f"{name}/valid_auc"] = curve
        test_x, test_y = self.tensors("test")
        return module.model, {
            "test/auc": auc_percent(test_y, predict_proba(module.model, test_x)),
            "valid/auc": max(curve),
            "train/epochs": float(len(curve)),
        }

    def fit_config(self) -> dict[str, Any]:
        """What decides this run's classifier fits besides their name and seed: the run's `stage_config`."""
        return self.stage_config(self.params)


@register_method("llp_bp")
class LLPBPPipeline(LLPPipeline):
    """Pseudo-labelling by loopy BP on the kNN + bag Gibbs distribution, with embedding refinement."""

    name = "llp_bp"

    def __init__(
        self,
        sim_lambda: float = 10.0,
        bag_lambda: float = 10.0,
        n_neighbors: int = 5,
        neigh_thresh: float = 2.0,
        threshold: float = 0.5,
        bp_iters: int = 100,
        damping: float = 0.5,
        refinement_rounds: int = 1,
        max_bag_count: int | None = None,
    ) -> None:
        # canonical types, so that equal settings share one stage
        super().__init__(
            sim_lambda=float(sim_lambda),
            bag_lambda=float(bag_lambda),
            n_neighbors=int(n_neighbors),
            neigh_thresh=float(neigh_thresh),
            threshold=float(threshold),
            bp_iters=int(bp_iters),
            damping=float(damping),
            refinement_rounds=int(refinement_rounds),
            max_bag_count=None if max_bag_count is None else int(max_bag_count),
        )

    def compute(self) -> dict[str, float]:
        p = self.params
        x_np, y_true, bag_of, counts = self.datamodule.bagged()
        x = torch.from_numpy(x_np)
        covariates = x_np
        metrics: dict[str, float] = {}
        for round_id in range(int(p["refinement_rounds"]) + 1):
            graph = knn_similarity_graph(
                covariates,
                n_neighbors=p["n_neighbors"],
                neigh_thresh=p["neigh_thresh"],
                bag_counts=counts[bag_of],
                max_bag_count=p["max_bag_count"],
            )
            mrf = llp_bp_mrf(
                len(y_true), graph, bag_of, counts, sim_lambda=p["sim_lambda"], bag_lambda=p["bag_lambda"]
            )
            bp = loopy_bp(mrf, num_iters=p["bp_iters"], damping=p["damping"])  # every iteration, as PGMax
            marginals = bp.marginals.numpy()
            pseudo = (marginals >= p["threshold"]).astype(np.float32)
            model, fit = self.fit_on_targets(x, torch.from_numpy(pseudo), f"round{round_id}", round_id)
            edges = graph.edges
            round_metrics = {
                "pseudo/auc": auc_percent(y_true, marginals),
                "pseudo/acc": 100.0 * float((pseudo == y_true).mean()),
                "pseudo/positive_rate": 100.0 * float(pseudo.mean()),
                # BP convergence: the largest change of a message (log-odds) in the last iteration; converged
                # (100, else 0) when it is below BP_CONVERGED_DELTA
                "bp/final_delta": bp.final_delta,
                "bp/converged": 100.0 * float(bp.final_delta < BP_CONVERGED_DELTA),
                "graph/edges": float(len(edges)),
                "graph/label_agreement": 100.0 * float((y_true[edges[:, 0]] == y_true[edges[:, 1]]).mean())
                if len(edges)
                else 0.0,
                **fit,
            }
            metrics.update({f"round{round_id}/{k}": v for k, v in round_metrics.items()})
            metrics.update(round_metrics)  # the last round's values are the method's
            metrics["prior/auc"] = auc_percent(y_true, counts[bag_of] / self.datamodule.bag_size)
            if round_id == 0 and int(p["refinement_rounds"]) > 0:
                self.store_as_run_without_refinement(metrics)
            if round_id < int(p["refinement_rounds"]):
                with torch.no_grad():
                    model.eval()
                    covariates = model.embed(x).numpy().astype(np.float64)
        return metrics

    def fit_config(self) -> dict[str, Any]:
        """Round r's classifier does not depend on the rounds after it: the run without refinement shares
        round 0's fit (when its own stage is missing, e.g. deleted, it recomputes only BP)."""
        return self.stage_config({k: v for k, v in self.params.items() if k != "refinement_rounds"})

    def store_as_run_without_refinement(self, first_round: dict[str, float]) -> None:
        """Round 0 is exactly the run without refinement (same seeds): store it as that run's stage."""
        stages = self.context.stages
        if stages is None:
            return
        no_refinement = {
            "metrics": self.with_data_metrics(dict(first_round)),
            "curves": {"round0/valid_auc": list(self.context.curves["round0/valid_auc"])},
        }
        config = self.stage_config({**self.params, "refinement_rounds": 0})
        stages.compute(self.name, config, lambda: no_refinement)


@register_method("llp_bp_val_select")
class ValidationSelectedLLPBPPipeline(LLPPipeline):
    """LLP-BP with bag_lambda chosen from `bag_lambda_grid` by the final classifier's validation AUC (the
    paper tunes its hyper-parameters on a validation split); each candidate is an `llp_bp` run (its stage)."""

    name = "llp_bp_val_select"

    def __init__(self, bag_lambda_grid: list[float] | None = None, **llp_bp_params: Any) -> None:
        grid = [float(v) for v in (bag_lambda_grid or [10.0, 1.0, 0.1])]
        super().__init__(bag_lambda_grid=grid, **llp_bp_params)
        self.candidates = [LLPBPPipeline(**{**llp_bp_params, "bag_lambda": v}) for v in grid]

    def run(self, context: RunContext) -> dict[str, float]:
        results = []
        for candidate in self.candidates:
            context.curves = {}
            results.append((candidate.run(context), context.curves))
        best = max(range(len(results)), key=lambda i: results[i][0]["valid/auc"])
        metrics, context.curves = dict(results[best][0]), results[best][1]
        metrics["select/bag_lambda"] = self.params["bag_lambda_grid"][best]
        for value, (candidate_metrics, _) in zip(self.params["bag_lambda_grid"], results, strict=True):
            metrics[f"select/valid_auc_bag_lambda_{value:g}"] = candidate_metrics["valid/auc"]
        return metrics


@register_method("llp_bp_dllp")
class DLLPPipeline(LLPPipeline):
    """DLLP: BCE between each bag's mean prediction and its label proportion, batches of whole bags."""

    name = "llp_bp_dllp"

    def compute(self) -> dict[str, float]:
        x_np, _, bag_of, counts = self.datamodule.bagged()
        order = np.argsort(bag_of, kind="stable")
        k = self.datamodule.bag_size
        members = torch.from_numpy(order.reshape(-1, k))  # make_bags: equal-size bags
        x = torch.from_numpy(x_np)
        proportions = torch.from_numpy(counts[bag_of[order[::k]]] / k).float()

        def loss(model: TabularMLP, bags: torch.Tensor) -> torch.Tensor:
            ids = members[bags]
            return dllp_loss(model(x[ids.reshape(-1)]).reshape(ids.shape), proportions[bags])

        return self.fit(loss, len(members), self.schedule().batch_size // k, "dllp")[1]


@register_method("llp_bp_easyllp")
class EasyLLPPipeline(LLPPipeline):
    """EasyLLP: the unbiased per-instance surrogate loss of random bags."""

    name = "llp_bp_easyllp"

    def compute(self) -> dict[str, float]:
        x_np, _, bag_of, counts = self.datamodule.bagged()
        k = self.datamodule.bag_size
        alpha = torch.from_numpy(counts[bag_of] / k).float()
        prior = float(alpha.mean())
        x = torch.from_numpy(x_np)

        def loss(model: TabularMLP, ids: torch.Tensor) -> torch.Tensor:
            return easyllp_loss(model(x[ids]), alpha[ids], k, prior)

        return self.fit(loss, len(x), self.schedule().batch_size, "easyllp")[1]


@register_method("llp_bp_bag_prior")
class BagPriorPipeline(LLPPipeline):
    """BCE on the bag proportion as every member's soft label."""

    name = "llp_bp_bag_prior"

    def compute(self) -> dict[str, float]:
        x_np, y_true, bag_of, counts = self.datamodule.bagged()
        soft = counts[bag_of] / self.datamodule.bag_size
        _, metrics = self.fit_on_targets(torch.from_numpy(x_np), torch.from_numpy(soft).float(), "bag_prior")
        metrics["pseudo/auc"] = auc_percent(y_true, soft)
        metrics["pseudo/acc"] = 100.0 * float(((soft >= 0.5) == y_true).mean())
        return metrics


@register_method("llp_bp_oracle")
class OraclePipeline(LLPPipeline):
    """Supervised reference: BCE on the true labels of the same training examples."""

    name = "llp_bp_oracle"

    def compute(self) -> dict[str, float]:
        x_np, y_true, _, _ = self.datamodule.bagged()
        _, metrics = self.fit_on_targets(
            torch.from_numpy(x_np), torch.from_numpy(y_true.astype(np.float32)), "oracle"
        )
        return metrics
