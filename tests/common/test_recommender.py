"""The MF recommender base: scores, data module, and a short run that learns the relevance ranking."""

from __future__ import annotations

import lightning as L
import torch

from common.lit.recommender import ImplicitFeedbackDataModule, MatrixFactorization, RecommenderModule
from common.registry import lookup


def test_score_all_matches_pairwise_forward():
    torch.manual_seed(0)
    mf = MatrixFactorization(7, 5, 3)
    with torch.no_grad():
        mf.user_bias.weight.normal_()
        mf.item_bias.weight.normal_()
        mf.global_bias.fill_(0.3)
    users, items = torch.meshgrid(torch.arange(7), torch.arange(5), indexing="ij")
    torch.testing.assert_close(mf.score_all(), mf(users.flatten(), items.flatten()).view(7, 5))


class _PointwiseMF(RecommenderModule):
    def compute_loss(self, batch):
        logits = self.model(batch["user"], batch["item"])
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["click"])


def test_datamodule_and_training_beats_random_ranking():
    dm = lookup("datamodule", "implicit_feedback")(
        num_users=80, num_items=60, test_items_per_user=10, exposure_power=0.0, seed=0
    )
    assert dm is not None and isinstance(dm, ImplicitFeedbackDataModule)
    dm.setup()
    assert dm.num_train == 80 * 60 - 80 * 10
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"user", "item", "click", "propensity", "propensity_estimated"}
    torch.manual_seed(0)
    module = _PointwiseMF(
        80, 60, dm.evaluation_targets(), dim=8, optimizer=lambda p: torch.optim.Adam(p, lr=0.05), ks=(5,)
    )
    untrained = module.evaluate()["test/ndcg@5"]
    trainer = L.Trainer(
        max_epochs=40,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)
    final = module.final_metrics()
    assert len(module.curves["test/ndcg@5"]) == 40
    assert {"test/dcg@5", "test/rare/recall@5", "train/loss"} <= set(final)
    assert final["test/ndcg@5"] > untrained + 0.05
