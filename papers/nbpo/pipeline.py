"""BPR, WBPR, BPO and NBPO as harness methods (`method=nbpo_bpr|nbpo_wbpr|nbpo_bpo|nbpo`).

A run trains MF on the voted (clicked) pairs of the `implicit_feedback` data module with the official schedule
of Wenhui-Yu/NBPO (`_BPR.py`, `_BPO.py`, `_NBPO.py` @d2187a1): every epoch walks through the voted pairs in
batches of `data.batch_size`, in user order as the official code does (`protocol.shuffle=false`), draws
`samples` unvoted items per voted pair, and takes one plain SGD step on the batch's summed loss with L2
`weight_decay` on whole embedding tables (official: U += eta (dU - lambda U) after every batch); the learning
rate is multiplied by `lr_decay` at the start of every epoch. `trainer.max_epochs` epochs (200 officially).

This is a plain PyTorch loop, not a Lightning fit: a run is ~1400 tiny steps, and Lightning's per-step
hooks would cost more than the steps. `trainer.limit_train_batches` (smoke tests) caps batches per epoch.

Metrics (K in `protocol.ks`) on the MCAR held-out pairs (`data.test_items_per_user` per user, never voted in
training; like the official held-out items they may be drawn as unvoted samples):
* `test/{f1,ndcg}@K`: hits are the held-out items the user truly likes (the simulation's relevance R);
* `test/observed/{f1,ndcg}@K`: hits are the held-out items the user would have voted (exposed and relevant),
  the analogue of the paper's protocol (held-out votes as the only positives);
* NBPO only: `flip/*`, the learnt flip probabilities on voted and unvoted pairs and the correlation of each
  item's mean flip probability with its true flip rate 1 - theta_i.
A training's (metrics, curves) are a stage (`context.stages.training_metrics`, stored under
`<output_root>/stages/nbpo/training/<key>/`) keyed by the run config without the cell, so table columns
that only choose the reported metric (`protocol.report`, copied to `value`) share one training.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from common.errors import NonFiniteLossError, UserError
from common.eval.ranking import ranking_metrics
from common.lit import Pipeline, RunContext
from common.lit.pipeline import with_reported_value
from common.lit.recommender import ImplicitFeedbackDataModule
from common.registry import register_method
from papers.nbpo.loss import bpo_loss, bpr_loss, nbpo_surrogate_loss
from papers.nbpo.model import FlipFactorization, preference_model
from papers.nbpo.sampling import popularity_weights, sample_unvoted

OBJECTIVES = ("bpr", "bpo", "nbpo")
SAMPLERS = ("uniform", "popularity")

__all__ = ["OBJECTIVES", "SAMPLERS", "SampledMFPipeline", "evaluate_scores", "train_sampled_mf"]


def evaluate_scores(scores: torch.Tensor, feedback: Any, ks: list[int]) -> dict[str, float]:
    """F1@K and NDCG@K of a (users, items) score matrix on the held-out pairs, against the true relevance
    (`test/...`) and against the votes the held-out pairs would have received (`test/observed/...`)."""
    candidates = torch.as_tensor(feedback.test_mask)
    truth = torch.as_tensor(feedback.test_relevance, dtype=torch.float64)
    observed = torch.as_tensor(
        feedback.test_mask & (feedback.exposed > 0) & (feedback.relevant > 0), dtype=torch.float64
    )
    scores = scores.detach().cpu().double()
    out = {}
    for prefix, relevance in (("test", truth), ("test/observed", observed)):
        values = ranking_metrics(scores, relevance, ks, candidates=candidates, metrics=("f1", "ndcg"))
        out.update({f"{prefix}/{name}": float(v) for name, v in values.items()})
    return out


def _flip_diagnostics(flip: FlipFactorization, feedback: Any) -> dict[str, float]:
    phi = flip.probability_all().detach().cpu().numpy()
    voted = feedback.clicks > 0
    unvoted = ~voted & ~feedback.test_mask
    true_flip = 1.0 - np.asarray(feedback.exposure)[0]
    item_phi = phi.mean(0)
    corr = (
        float(np.corrcoef(item_phi, true_flip)[0, 1]) if item_phi.std() > 0 and true_flip.std() > 0 else 0.0
    )
    return {
        "flip/voted_mean": float(phi[voted].mean()),
        "flip/unvoted_mean": float(phi[unvoted].mean()),
        "flip/unvoted_relevant_mean": float(phi[unvoted & (feedback.relevant > 0)].mean()),
        "flip/unvoted_irrelevant_mean": float(phi[unvoted & (feedback.relevant == 0)].mean()),
        "flip/item_corr_true_flip_rate": corr,
    }


def _pair_logits(
    user_table: torch.nn.Embedding,
    item_table: torch.nn.Embedding,
    users: torch.Tensor,
    items: torch.Tensor,
    negatives: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dot products of (users[b], items[b]) and (users[b], negatives[b, s]), read off the full score matrix:
    on small tables one matmul and a gather back-propagate faster than row lookups."""
    scores = user_table.weight @ item_table.weight.T
    pos = scores[users, items]
    neg = scores[users.unsqueeze(1), negatives]
    return pos, neg


def train_sampled_mf(
    feedback: Any,
    *,
    objective: str,
    sampler: str = "uniform",
    dim: int = 50,
    flip_dim: int = 50,
    lr: float = 0.05,
    weight_decay: float = 1.0,
    flip_weight_decay: float = 5.0,
    samples: int = 4,
    lr_decay: float = 0.99,
    epochs: int = 200,
    batch_size: int = 5000,
    shuffle: bool = False,
    max_batches: int | None = None,
    ks: tuple[int, ...] = (2, 5, 10, 20),
    eval_every: int = 20,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Train MF with one objective and sampler on the voted pairs of `feedback`; returns (metrics, curves)."""
    if objective not in OBJECTIVES:
        raise UserError(f"unknown objective {objective!r}; use one of {OBJECTIVES}")
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; use one of {SAMPLERS}")
    if not 0 < lr_decay <= 1 or lr <= 0 or epochs < 1 or batch_size < 1:
        raise UserError("need lr > 0, lr_decay in (0, 1], epochs >= 1 and batch_size >= 1")
    device = torch.device(device)
    generator = torch.Generator().manual_seed(int(seed))
    voted = torch.as_tensor(feedback.clicks > 0)
    pair_users, pair_items = voted.nonzero(as_tuple=True)  # row-major: grouped by user, as the official files
    if len(pair_users) == 0:
        raise UserError("the training data have no voted pair")
    num_users, num_items = voted.shape
    model = preference_model(num_users, num_items, dim, generator).to(device)
    groups: list[dict[str, Any]] = [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    flip = None
    if objective == "nbpo":
        flip = FlipFactorization(num_users, num_items, flip_dim, generator).to(device)
        groups.append({"params": list(flip.parameters()), "weight_decay": flip_weight_decay})
    optimizer = torch.optim.SGD(groups, lr=lr)
    weights = popularity_weights(voted) if sampler == "popularity" else None
    curves: dict[str, list[float]] = {"train/loss": [], "test/ndcg@5": [], "test/observed/ndcg@5": []}
    epoch_loss = torch.zeros((), device=device)  # summed over the epochs since the last evaluation
    window_start = 0
    rate = lr
    for epoch in range(epochs):
        rate *= lr_decay  # the official code decays before each epoch's first step
        for group in optimizer.param_groups:
            group["lr"] = rate
        order = torch.randperm(len(pair_users), generator=generator) if shuffle else None
        for step, start in enumerate(range(0, len(pair_users), batch_size)):
            if max_batches is not None and step >= max_batches:
                break
            index = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
            users, items = pair_users[index], pair_items[index]
            negatives = sample_unvoted(users, voted, samples, generator, weights)
            users, items, negatives = users.to(device), items.to(device), negatives.to(device)
            pos, neg = _pair_logits(model.users, model.items, users, items, negatives)
            if objective == "bpr":
                loss = bpr_loss(pos, neg)
            elif objective == "bpo":
                loss = bpo_loss(pos, neg)
            else:
                pos_flip, neg_flip = _pair_logits(flip.users, flip.items, users, items, negatives)
                loss = nbpo_surrogate_loss(pos, pos_flip, neg, neg_flip)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_loss = epoch_loss + loss.detach()
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            with torch.no_grad():
                metrics = evaluate_scores(model.score_all(), feedback, [5])
            curves["train/loss"].append(float(epoch_loss) / (epoch + 1 - window_start))
            curves["test/ndcg@5"].append(metrics["test/ndcg@5"])
            curves["test/observed/ndcg@5"].append(metrics["test/observed/ndcg@5"])
            epoch_loss = torch.zeros((), device=device)
            window_start = epoch + 1
    with torch.no_grad():
        scores = model.score_all()
    if not bool(torch.isfinite(scores).all()):
        raise NonFiniteLossError("the MF scores diverged (lower lr or raise weight_decay)")
    metrics = evaluate_scores(scores, feedback, list(ks))
    if flip is not None:
        metrics.update(_flip_diagnostics(flip, feedback))
    metrics["train/voted_pairs"] = float(len(pair_users))
    return metrics, curves


class SampledMFPipeline(Pipeline):
    """One objective + sampler with the method config's hyper-parameters, under the table's `protocol`."""

    objective: str = "bpr"
    sampler: str = "uniform"

    def __init__(self, **params: Any) -> None:
        self.params = params

    def run(self, context: RunContext) -> dict[str, float]:
        cfg, datamodule = context.cfg, context.datamodule
        if not isinstance(datamodule, ImplicitFeedbackDataModule):
            raise UserError("NBPO methods need the implicit_feedback data module (set by the nbpo tables)")
        protocol = OmegaConf.select(cfg, "protocol", default=None)
        if protocol is None or protocol.get("ks") is None:
            raise UserError("NBPO runs need protocol.ks (set by the table's experiment config)")

        def train() -> tuple[dict[str, float], dict[str, list[float]]]:
            return self._train(cfg, datamodule, protocol)

        if context.stages is None:  # called outside the runner (no stage folder): nothing to share
            metrics, context.curves = train()
        else:
            metrics, context.curves = context.stages.training_metrics(cfg, train)
        return with_reported_value(metrics, protocol.get("report"))

    def _train(self, cfg: Any, datamodule: ImplicitFeedbackDataModule, protocol: Any):
        model = OmegaConf.to_container(cfg.model, resolve=True) if cfg.get("model") else {}
        limit = OmegaConf.select(cfg, "trainer.limit_train_batches", default=None)
        accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="cpu"))
        use_cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        return train_sampled_mf(
            datamodule.feedback,
            objective=self.objective,
            sampler=self.sampler,
            dim=int(model.get("dim", 50)),
            flip_dim=int(model.get("flip_dim", 50)),
            epochs=int(cfg.trainer.max_epochs),
            batch_size=int(datamodule.batch_size),
            shuffle=bool(protocol.get("shuffle", False)),
            max_batches=None if limit is None else int(limit),
            ks=tuple(int(k) for k in protocol.ks),
            eval_every=int(protocol.get("eval_every", 20)),
            seed=int(cfg.seed),
            device="cuda" if use_cuda else "cpu",
            **self.params,
        )


@register_method("nbpo_bpr")
class BPRPipeline(SampledMFPipeline):
    """BPR with uniformly sampled unvoted items (official `_BPR.py`)."""

    objective, sampler = "bpr", "uniform"


@register_method("nbpo_wbpr")
class WBPRPipeline(SampledMFPipeline):
    """BPR with popularity-proportional negatives (WBPR, Gantner et al. 2012): a static sampler baseline."""

    objective, sampler = "bpr", "popularity"


@register_method("nbpo_bpo")
class BPOPipeline(SampledMFPipeline):
    """Bayesian point-wise optimisation: sampled unvoted items as negatives (official `_BPO.py`)."""

    objective, sampler = "bpo", "uniform"


@register_method("nbpo")
class NBPOPipeline(SampledMFPipeline):
    """Noisy-label robust BPO: flip probabilities learnt jointly with MF (official `_NBPO.py`)."""

    objective, sampler = "nbpo", "uniform"
