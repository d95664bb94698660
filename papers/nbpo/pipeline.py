"""BPR, WBPR, BPO and NBPO as harness methods (`method=nbpo_bpr|nbpo_wbpr|nbpo_bpo|nbpo`).

A run trains MF on the voted (clicked) pairs of the `implicit_feedback` data module with the official schedule
of Wenhui-Yu/NBPO (`_BPR.py`, `_BPO.py`, `_NBPO.py` @d2187a1): every epoch walks through the voted pairs in
batches of `data.batch_size`, in user order as the official code does (`protocol.shuffle=false`), draws
`samples` unvoted items per voted pair, and takes one plain SGD step on the batch's summed loss with L2
`weight_decay` on whole embedding tables (official: U += eta (dU - lambda U) after every batch); the learning
rate is multiplied by `lr_decay` at the start of every epoch. `trainer.max_epochs` epochs (200 officially).

The training is a Lightning fit (`SampledMF`, manual optimisation) run as the stage `mf` of the run's
cached stages (`<output_root>/stages/nbpo/mf/<key>/`, keyed by `SampledMFPipeline.fit_config`): it
checkpoints every epoch and a killed run resumes from its last finished epoch with the same numbers. It was a
hand-written loop; the fit takes the same steps in the same order (batch order, generator draws, float32
operations), and the committed mini records are reproduced bit for bit. Measured (CPU seconds per fit, one
thread): mini 2.8 s (BPR) / 5.0 s (NBPO) as the loop, 4.4 / 6.8 s under a bare Trainer, 5.2 / 8.0 s with
the stage's per-epoch checkpoints; paper scale about 45 s (loop) and 55 s (Trainer) per 200-epoch NBPO fit
(10 epochs: 2.3 s / 2.8 s). One fit per run, not many tiny ones, so the Trainer is kept despite its ~1 ms per
step. `trainer.limit_train_batches` (smoke tests) caps batches per epoch.

Metrics (K in `protocol.ks`) on the MCAR held-out pairs (`data.test_items_per_user` per user, never voted in
training; like the official held-out items they may be drawn as unvoted samples):
* `test/{f1,ndcg}@K`: hits are the held-out items the user truly likes (the simulation's relevance R);
* `test/observed/{f1,ndcg}@K`: hits are the held-out items the user would have voted (exposed and relevant),
  the analogue of the paper's protocol (held-out votes as the only positives);
* NBPO only: `flip/*`, the learnt flip probabilities on voted and unvoted pairs and the correlation of each
  item's mean flip probability with its true flip rate 1 - theta_i; their mean absolute error against the true
  rate (over training pairs, `flip/mae_true_flip_rate`, and over items, `flip/item_mae_true_flip_rate`); per
  quartile of items by true flip rate the true and the learnt mean rate (`flip/true_rate_qK`,
  `flip/learnt_rate_qK`); the mean |G| (`flip/mean_abs_logit`, 0 when P Q^T collapsed); and
  `flip/zero_growth` (`zero_flip_growth`: below 1, G = 0 attracts the flip model).
A training's (metrics, curves) are a further stage (`context.stages.training_metrics`, stored under
`<output_root>/stages/nbpo/training/<key>/`) keyed by the run config without the cell, so table columns
that only choose the reported metric (`protocol.report`, copied to `value`) share one training.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

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
SAMPLERS = ("uniform", "popularity", "oracle")

__all__ = [
    "FLIP_RATE_BINS",
    "OBJECTIVES",
    "SAMPLERS",
    "SampledMF",
    "SampledMFPipeline",
    "epoch_steps",
    "evaluate_scores",
    "flip_diagnostics",
    "train_sampled_mf",
    "zero_flip_growth",
]


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


FLIP_RATE_BINS = 4  # items split into quartiles of their true flip rate 1 - theta_i


def zero_flip_growth(
    preference: torch.Tensor,
    voted: torch.Tensor,
    batch_users: list[torch.Tensor],
    samples: int,
    lr: float,
    flip_weight_decay: float,
    iterations: int = 40,
) -> float:
    """How one epoch of SGD moves the flip factors near P = Q = 0 (phi = 1/2 everywhere), given preferences r:
    the spectral radius of the epoch's product of linearised steps. Batch b's surrogate gradient at G = 0 is
    dJ/dG = D_b (expected over the unvoted draws): voted (u, i): -samples * r_ui / 2; unvoted (u, j): r_uj / 2
    times samples * n_u / (items - n_u) draws per epoch, rows weighted by the share of the user's votes in the
    batch. To first order one step maps (P, Q) by [[(1 - lr lambda) I, lr D_b], [lr D_b^T, (1 - lr lambda) I]]
    (lambda = flip_weight_decay, applied to the whole tables at every step as in the official code); the
    radius is estimated by power iteration (geometric mean growth of the last half of `iterations` epochs).
    Below 1, G = 0 attracts the flip model (it collapses to phi = 1/2); above 1, it grows away from it."""
    r = preference.double()
    voted = voted.to(torch.bool)
    users, items = voted.shape
    votes = voted.sum(1).double()
    draws = samples * votes / (items - votes).clamp(min=1)
    epoch = torch.where(voted, -samples * r / 2, draws[:, None] * r / 2)
    shares = [torch.bincount(batch, minlength=users).double() / votes.clamp(min=1) for batch in batch_users]
    keep = 1.0 - lr * flip_weight_decay
    # Power iteration on the epoch map (matrix-free: two products with the (users, items) gradient per step).
    generator = torch.Generator().manual_seed(0)
    p = torch.randn(users, generator=generator, dtype=torch.float64)
    q = torch.randn(items, generator=generator, dtype=torch.float64)
    logs = []
    for _ in range(iterations):
        scale = float(torch.sqrt(p @ p + q @ q))
        p, q = p / scale, q / scale
        for share in shares:
            p, q = keep * p + lr * share * (epoch @ q), keep * q + lr * (epoch.T @ (share * p))
        logs.append(0.5 * float(torch.log(p @ p + q @ q)))
    return float(np.exp(np.mean(logs[iterations // 2 :])))


def flip_diagnostics(phi: np.ndarray, feedback: Any) -> dict[str, float]:
    """The learnt flip probabilities phi (users, items) against the simulated ones: a liked item is left
    unvoted with probability 1 - theta_i (exposure theta_i), the true phi of every pair of item i. Means by
    pair type, the item-level correlation, the mean absolute error over the training pairs and over items
    (item-mean phi), and per quartile of items by true flip rate the mean true rate and the mean learnt item
    rate (phi averaged over all users)."""
    voted = feedback.clicks > 0
    train = ~np.asarray(feedback.test_mask)
    unvoted = ~voted & train
    true_flip = 1.0 - np.asarray(feedback.exposure, dtype=float)[0]
    item_phi = phi.mean(0)
    corr = (
        float(np.corrcoef(item_phi, true_flip)[0, 1]) if item_phi.std() > 0 and true_flip.std() > 0 else 0.0
    )
    out = {
        "flip/voted_mean": float(phi[voted].mean()),
        "flip/unvoted_mean": float(phi[unvoted].mean()),
        "flip/unvoted_relevant_mean": float(phi[unvoted & (feedback.relevant > 0)].mean()),
        "flip/unvoted_irrelevant_mean": float(phi[unvoted & (feedback.relevant == 0)].mean()),
        "flip/item_corr_true_flip_rate": corr,
        "flip/mae_true_flip_rate": float(np.abs(phi - true_flip[None, :])[train].mean()),
        "flip/item_mae_true_flip_rate": float(np.abs(item_phi - true_flip).mean()),
    }
    order = np.argsort(true_flip, kind="stable")
    for k, items in enumerate(np.array_split(order, FLIP_RATE_BINS), start=1):
        out[f"flip/true_rate_q{k}"] = float(true_flip[items].mean())
        out[f"flip/learnt_rate_q{k}"] = float(item_phi[items].mean())
    return out


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


def epoch_steps(feedback: Any, batch_size: int) -> DataLoader:
    """The step indices of one epoch over the voted pairs of `feedback`, one per batch of `batch_size` (the
    batch itself is cut and its unvoted items drawn in `SampledMF.training_step`)."""
    num_pairs = int((np.asarray(feedback.clicks) > 0).sum())
    return DataLoader(range(-(-num_pairs // batch_size)), batch_size=None, shuffle=False)


class SampledMF(L.LightningModule):
    """MF (and NBPO's flip model) trained on the voted pairs of `feedback` with the official schedule.

    One epoch walks the voted pairs in batches of `batch_size` (user order, or a permutation drawn at the
    epoch's start with `shuffle`); each batch draws `samples` unvoted items per voted pair and takes one plain
    SGD step on the batch's summed loss, L2 on whole tables; the learning rate is `lr * lr_decay^(epoch + 1)`.
    Manual optimisation keeps the order of the former hand-written loop (sample, forward, zero_grad, backward,
    step) and every number it drew: initialisation and sampling draw from the module's own generator (seeded
    with `seed`), which checkpoints carry with the window's summed loss, so a fit resumed after a kill ends
    as an uninterrupted one. The batches are the `step` indices of `batches()`. Every `eval_every` epochs (and
    at the last) `curves` get the window's mean epoch loss and NDCG@5 against true and observed votes."""

    def __init__(
        self,
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
        eval_every: int = 20,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise UserError(f"unknown objective {objective!r}; use one of {OBJECTIVES}")
        if sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {sampler!r}; use one of {SAMPLERS}")
        if not 0 < lr_decay <= 1 or lr <= 0 or epochs < 1 or batch_size < 1:
            raise UserError("need lr > 0, lr_decay in (0, 1], epochs >= 1 and batch_size >= 1")
        self.automatic_optimization = False
        self.feedback, self.objective = feedback, objective
        self.lr, self.weight_decay, self.flip_weight_decay = lr, weight_decay, flip_weight_decay
        self.samples, self.lr_decay, self.epochs = samples, lr_decay, epochs
        self.batch_size, self.shuffle, self.eval_every = batch_size, shuffle, eval_every
        self.generator = torch.Generator().manual_seed(int(seed))
        self.voted = torch.as_tensor(feedback.clicks > 0)
        # row-major: grouped by user, as the official files
        self.pair_users, self.pair_items = self.voted.nonzero(as_tuple=True)
        if len(self.pair_users) == 0:
            raise UserError("the training data have no voted pair")
        num_users, num_items = self.voted.shape
        self.model = preference_model(num_users, num_items, dim, self.generator)
        self.flip = (
            FlipFactorization(num_users, num_items, flip_dim, self.generator) if objective == "nbpo" else None
        )
        self.weights = popularity_weights(self.voted) if sampler == "popularity" else None
        # The label oracle ("oracle"): uniform negatives that are never a liked training item (no flipped
        # label among the sampled unvoted items); otherwise only the voted items are rejected.
        self.rejected = (
            self.voted | torch.as_tensor((feedback.relevant > 0) & ~np.asarray(feedback.test_mask))
            if sampler == "oracle"
            else self.voted
        )
        self.curves: dict[str, list[float]] = {
            "train/loss": [],
            "test/ndcg@5": [],
            "test/observed/ndcg@5": [],
        }
        self.epoch_loss = torch.zeros(())  # summed over the epochs since the last evaluation
        self.window_start = 0
        self.order: torch.Tensor | None = None

    def batch_users(self) -> list[torch.Tensor]:
        """The users of each batch's voted pairs in the unshuffled order (for `zero_flip_growth`)."""
        return list(torch.split(self.pair_users, self.batch_size))

    def batches(self) -> DataLoader:
        """The training data: `epoch_steps` of the voted pairs."""
        return epoch_steps(self.feedback, self.batch_size)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups: list[dict[str, Any]] = [
            {"params": list(self.model.parameters()), "weight_decay": self.weight_decay}
        ]
        if self.flip is not None:
            groups.append({"params": list(self.flip.parameters()), "weight_decay": self.flip_weight_decay})
        return torch.optim.SGD(groups, lr=self.lr)

    def on_train_epoch_start(self) -> None:
        rate = self.lr
        for _ in range(self.current_epoch + 1):  # the official code decays before each epoch's first step
            rate *= self.lr_decay
        for group in self.optimizers().param_groups:
            group["lr"] = rate
        if self.epoch_loss.device != self.device:
            self.epoch_loss = self.epoch_loss.to(self.device)
        order = torch.randperm(len(self.pair_users), generator=self.generator) if self.shuffle else None
        self.order = order

    def training_step(self, step: int, batch_idx: int) -> None:
        start = int(step) * self.batch_size
        index = (
            slice(start, start + self.batch_size)
            if self.order is None
            else self.order[start : start + self.batch_size]
        )
        users, items = self.pair_users[index], self.pair_items[index]
        negatives = sample_unvoted(users, self.rejected, self.samples, self.generator, self.weights)
        users, items, negatives = users.to(self.device), items.to(self.device), negatives.to(self.device)
        pos, neg = _pair_logits(self.model.users, self.model.items, users, items, negatives)
        if self.objective == "bpr":
            loss = bpr_loss(pos, neg)
        elif self.objective == "bpo":
            loss = bpo_loss(pos, neg)
        else:
            pos_flip, neg_flip = _pair_logits(self.flip.users, self.flip.items, users, items, negatives)
            loss = nbpo_surrogate_loss(pos, pos_flip, neg, neg_flip)
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()
        self.epoch_loss = self.epoch_loss + loss.detach()

    def on_train_epoch_end(self) -> None:
        epoch = self.current_epoch
        if (epoch + 1) % self.eval_every == 0 or epoch + 1 == self.epochs:
            with torch.no_grad():
                metrics = evaluate_scores(self.model.score_all(), self.feedback, [5])
            self.curves["train/loss"].append(float(self.epoch_loss) / (epoch + 1 - self.window_start))
            self.curves["test/ndcg@5"].append(metrics["test/ndcg@5"])
            self.curves["test/observed/ndcg@5"].append(metrics["test/observed/ndcg@5"])
            self.log("test/ndcg@5", metrics["test/ndcg@5"], on_step=False, on_epoch=True)
            self.epoch_loss = torch.zeros((), device=self.device)
            self.window_start = epoch + 1

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["nbpo_state"] = {
            "generator": self.generator.get_state(),
            "epoch_loss": self.epoch_loss.detach().cpu(),
            "window_start": self.window_start,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["nbpo_state"]
        self.generator.set_state(state["generator"])
        self.epoch_loss = state["epoch_loss"]
        self.window_start = int(state["window_start"])

    def final_metrics(self, ks: list[int]) -> dict[str, float]:
        """F1@K and NDCG@K of the trained scores (and NBPO's flip diagnostics)."""
        with torch.no_grad():
            scores = self.model.score_all()
        if not bool(torch.isfinite(scores).all()):
            raise NonFiniteLossError("the MF scores diverged (lower lr or raise weight_decay)")
        metrics = evaluate_scores(scores, self.feedback, list(ks))
        if self.flip is not None:
            with torch.no_grad():
                logits = self.flip.users.weight @ self.flip.items.weight.T
                phi = torch.sigmoid(logits).cpu().numpy()
                metrics.update(flip_diagnostics(phi, self.feedback))
                metrics["flip/mean_abs_logit"] = float(logits.abs().mean())
                metrics["flip/zero_growth"] = zero_flip_growth(
                    torch.sigmoid(scores),
                    self.voted,
                    self.batch_users(),
                    self.samples,
                    self.lr * self.lr_decay**self.epochs,  # the last epoch's learning rate
                    self.flip_weight_decay,
                )
        metrics["train/voted_pairs"] = float(len(self.pair_users))
        return metrics


def train_sampled_mf(
    feedback: Any,
    *,
    max_batches: int | None = None,
    ks: tuple[int, ...] = (2, 5, 10, 20),
    accelerator: str = "cpu",
    **options: Any,
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """A `SampledMF(feedback, **options)` trained by a bare Trainer (no checkpoints, no logger); returns
    (metrics, curves). The runs of the tables train through `SampledMFPipeline` (a resumable stage)."""
    module = SampledMF(feedback, **options)
    trainer = L.Trainer(
        max_epochs=module.epochs,
        limit_train_batches=max_batches,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=module.batches())
    return module.final_metrics(list(ks)), module.curves


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
            return self._train(context, datamodule, protocol)

        if context.stages is None:  # called outside the runner (no stage folder): nothing to share
            metrics, context.curves = train()
        else:
            metrics, context.curves = context.stages.training_metrics(cfg, train)
        return with_reported_value(metrics, protocol.get("report"))

    def module_options(self, cfg: Any, batch_size: int, protocol: Any) -> dict[str, Any]:
        """The `SampledMF` arguments of a run: the method's hyper-parameters and the run's schedule."""
        model = OmegaConf.to_container(cfg.model, resolve=True) if cfg.get("model") else {}
        return {
            "objective": self.objective,
            "sampler": self.sampler,
            "dim": int(model.get("dim", 50)),
            "flip_dim": int(model.get("flip_dim", 50)),
            "epochs": int(cfg.trainer.max_epochs),
            "batch_size": int(batch_size),
            "shuffle": bool(protocol.get("shuffle", False)),
            "eval_every": int(protocol.get("eval_every", 20)),
            "seed": int(cfg.seed),
            **self.params,
        }

    def fit_config(self, cfg: Any, batch_size: int, protocol: Any) -> dict[str, Any]:
        """What decides the trained factors (the key of the `mf` stage): the data, the module's arguments,
        the batch cap and the accelerator; not `protocol.ks`/`report` (read off the trained factors)."""
        limit = OmegaConf.select(cfg, "trainer.limit_train_batches", default=None)
        return {
            "data": OmegaConf.to_container(cfg.data, resolve=True),
            "module": self.module_options(cfg, batch_size, protocol),
            "limit_train_batches": limit,
            "accelerator": str(OmegaConf.select(cfg, "trainer.accelerator", default="cpu")),
        }

    def _train(self, context: RunContext, datamodule: ImplicitFeedbackDataModule, protocol: Any):
        cfg = context.cfg
        options = self.module_options(cfg, datamodule.batch_size, protocol)

        def make_module() -> SampledMF:
            return SampledMF(datamodule.feedback, **options)

        # The official schedule in float32, one optimiser step per batch, whatever the trainer config says.
        overrides = {
            "precision": "32-true",
            "gradient_clip_val": None,
            "accumulate_grad_batches": 1,
            "check_val_every_n_epoch": 1,
            "num_sanity_val_steps": 0,
        }
        if context.stages is None:
            module = make_module()
            context.make_trainer(**overrides).fit(module, train_dataloaders=module.batches())
        else:
            module = context.stages.fit(
                "mf",
                self.fit_config(cfg, datamodule.batch_size, protocol),
                make_module,
                trainer_overrides=overrides,
                train_dataloaders=epoch_steps(datamodule.feedback, options["batch_size"]),
            )
        return module.final_metrics([int(k) for k in protocol.ks]), module.curves


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


@register_method("nbpo_bpo_oracle")
class BPOOraclePipeline(SampledMFPipeline):
    """BPO whose sampled unvoted items are never liked training items (the simulation's true labels): the
    label oracle that shows how much the flipped labels cost BPO; not a method of the paper."""

    objective, sampler = "bpo", "oracle"


@register_method("nbpo")
class NBPOPipeline(SampledMFPipeline):
    """Noisy-label robust BPO: flip probabilities learnt jointly with MF (official `_NBPO.py`)."""

    objective, sampler = "nbpo", "uniform"
