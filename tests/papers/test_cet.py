"""CET (papers/cet): the coupled losses against hand-computed values and autograd, the pooled-collection
generator's exact properties, the training pairs, the stages' configs, and one run of each method at both
scales (tiny, offline), rerun to check that the stages are reused with identical metrics."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from common.errors import UserError
from common.run import execute
from papers.cet import (
    MatchScorer,
    coupled_losses,
    inverse_selection_weight,
    make_pooled_collection,
    pairwise_softmax_loss,
    training_triples,
)
from papers.cet.module import MatchRankers, linear_warmup_decay
from papers.cet.pipeline import (
    CoupledEstimationTraining,
    NaiveRankerTraining,
    OracleRankerTraining,
    method_params,
)
from papers.cet.text import MsMarcoTriplesDataModule, build_cross_encoder
from tests.conftest import compose

SMALL = dict(
    num_queries=40,
    num_documents=1200,
    semantic_dim=16,
    lexical_dim=8,
    relevant_per_query=6,
    semantic_spread=1.0,
    lexical_overlap=0.5,
    lexical_distractors=5,
    lexical_spread=1.0,
    pool_noise=0.1,
    pool_depth=10,
    train_fraction=0.5,
)


def test_pairwise_softmax_loss_is_two_way_cross_entropy():
    pos, neg = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 3.0, 0.5])
    expected = F.cross_entropy(torch.stack([pos, neg], 1), torch.zeros(3, dtype=torch.long), reduction="none")
    torch.testing.assert_close(pairwise_softmax_loss(pos, neg), expected)
    assert pairwise_softmax_loss(torch.tensor([0.0]), torch.tensor([0.0])).item() == pytest.approx(np.log(2))


def test_inverse_selection_weight_hand_computed_and_detached():
    scores = torch.tensor([0.0, 10.0, -20.0, 50.0], requires_grad=True)
    weight = inverse_selection_weight(scores, debias_ratio=10.0)
    expected = 1.0 / (1.0 - torch.sigmoid(scores.detach().double() / 10.0))
    torch.testing.assert_close(weight.double(), expected, rtol=1e-5, atol=1e-6)
    assert weight[0].item() == pytest.approx(2.0)  # sigmoid(0) = 1/2
    assert not weight.requires_grad
    with pytest.raises(ValueError):
        inverse_selection_weight(scores, debias_ratio=0.0)


def test_coupled_losses_values_and_gradients_match_the_formula():
    torch.manual_seed(0)
    rp, rn, sp, sn = (torch.randn(5, requires_grad=True) for _ in range(4))
    t = 2.0
    relevance_loss, selection_loss = coupled_losses(rp, rn, sp, sn, t)
    w_r = 1 / (1 - torch.sigmoid(sn.detach() / t))
    w_s = 1 / (1 - torch.sigmoid(rn.detach() / t))
    ref_r = (w_r * F.softplus(rn - rp)).sum() / 5
    ref_s = (w_s * F.softplus(sn - sp)).sum() / 5
    torch.testing.assert_close(relevance_loss, ref_r)
    torch.testing.assert_close(selection_loss, ref_s)
    # The relevance loss trains only the relevance scores; the weights carry no gradient.
    grads = torch.autograd.grad(relevance_loss, [rp, rn, sp, sn], allow_unused=True)
    assert grads[2] is None and grads[3] is None
    ref_grads = torch.autograd.grad(ref_r, [rp, rn])
    torch.testing.assert_close(grads[0], ref_grads[0])
    torch.testing.assert_close(grads[1], ref_grads[1])


def test_match_scorer_pairs_agree_with_the_score_matrix_and_models_start_apart():
    generator = torch.Generator().manual_seed(0)
    model = MatchScorer(6, init_std=0.02, scale=3.0, generator=generator)
    other = MatchScorer(6, init_std=0.02, scale=3.0, generator=generator)
    assert not torch.equal(model.match, other.match) and model.match.abs().max() < 0.2
    with torch.no_grad():
        model.match.copy_(torch.randn(6))
    q, d = torch.randn(3, 6), torch.randn(4, 6)
    matrix = model.score_matrix(q, d)
    assert matrix[1, 2].item() == pytest.approx(3.0 * (q[1] * model.match * d[2]).sum().item(), rel=1e-5)
    torch.testing.assert_close(model(q[[0, 2]], d[[3, 1]]), matrix[[0, 2], [3, 1]])


def test_linear_warmup_decay_is_the_official_schedule():
    factor = linear_warmup_decay(10, 110)
    assert [factor(s) for s in (0, 5, 10, 60, 110, 200)] == [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]


def test_pooled_collection_properties():
    c = make_pooled_collection(**SMALL, seed=3)
    # Unit vectors in both views; judged positives are relevant and inside the lexical pool.
    np.testing.assert_allclose(np.linalg.norm(c.lexical_documents, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(c.lexical_queries, axis=1), 1.0, rtol=1e-6)
    assert not (c.judged & ~c.relevance).any()
    top = np.argsort(-c.lexical_scores, axis=1)[:, : SMALL["pool_depth"]]
    in_pool = np.zeros_like(c.judged)
    np.put_along_axis(in_pool, top, True, axis=1)
    np.testing.assert_array_equal(c.judged, c.relevance & in_pool)
    # Pooling bias: judged positives share the query's vocabulary more than unjudged relevant documents.
    lexical = c.lexical_queries @ c.lexical_documents.T
    unjudged = c.relevance & ~c.judged
    assert lexical[c.judged].mean() > lexical[unjudged].mean() + 0.2
    assert c.query_features().shape == (40, 24) and c.document_features().shape == (1200, 24)
    assert c.num_train_queries == 20


def test_training_triples_labels():
    c = make_pooled_collection(**SMALL, seed=1)
    scores = c.pool.similarity()  # the strongest dense retriever
    q, p, n = training_triples(
        c, scores, labels="judged", mine_depth=20, mined_per_query=4, random_per_query=2, seed=0
    )
    assert (q < c.num_train_queries).all()
    assert c.judged[q, p].all() and not c.judged[q, n].any()
    assert c.relevance[q, n].any()  # unjudged relevant documents come in as false negatives
    assert len(q) <= c.judged[: c.num_train_queries].sum() * 6
    q, p, n = training_triples(
        c, scores, labels="true", mine_depth=20, mined_per_query=4, random_per_query=2, seed=0
    )
    assert not c.relevance[q, n].any() and c.judged[q, p].all()
    with pytest.raises(UserError):
        training_triples(
            c, scores, labels="noisy", mine_depth=20, mined_per_query=4, random_per_query=0, seed=0
        )


def _execute(overrides: list[str], tmp_path: Path):
    base = ["experiment=cet/negatives_by_retriever", "logger=none", "runtime.progress=false"]
    return execute(compose([*base, f"runtime.output_root={tmp_path}", *overrides]))


def _run(overrides: list[str], tmp_path: Path):
    record = _execute(overrides, tmp_path)
    assert record.complete, record.reason
    return record


MINI = ["data.source=random", "data.retriever=dense_strong", "method.epochs=2", "method.batch_pairs=8"]


@pytest.mark.parametrize("method", ["cet_naive", "cet", "cet_oracle"])
def test_mini_methods_run_on_a_tiny_collection(method: str, tmp_path: Path):
    record = _run([f"method={method}", *MINI], tmp_path)
    metrics = record.metrics
    assert 0.0 <= metrics["test/ndcg@10"] <= 100.0
    assert len(record.curves["test/ndcg@10"]) == 2  # after each of the 2 passes over the pairs
    assert record.extra["stages_computed"] == ["ranker"]
    if method == "cet_oracle":
        assert metrics["train/false_negative_rate"] == 0.0
    if method == "cet":
        assert metrics["train/cet_weight_mean"] >= 1.0
        assert metrics["train/cet_weight_p10_true_neg"] <= metrics["train/cet_weight_p90_true_neg"]
        # A second run reads the trained scorers back from the stage: same metrics and curve, bit for bit.
        again = _run([f"method={method}", *MINI, "runtime.force=true"], tmp_path)
        assert again.extra["stages_computed"] == [] and again.extra["stages_reused"] == ["ranker"]
        assert again.metrics == metrics and again.curves == record.curves


def test_mini_ranker_resumes_after_a_kill_as_if_uninterrupted(tmp_path: Path, monkeypatch):
    """A run killed after the first epoch of its `ranker` stage resumes it from the stage's checkpoint and
    ends with the metrics and the whole curve of an uninterrupted run."""
    overrides = ["method=cet", *MINI, "method.epochs=3"]
    whole = _run(overrides, tmp_path / "whole")
    end_of_epoch = MatchRankers.on_train_epoch_end

    def killed_in_epoch_1(self):
        end_of_epoch(self)
        if self.current_epoch == 1:
            raise RuntimeError("killed")

    monkeypatch.setattr(MatchRankers, "on_train_epoch_end", killed_in_epoch_1)
    killed = _execute(overrides, tmp_path / "killed")
    assert not killed.complete and list((tmp_path / "killed" / "stages").glob("cet/ranker/*/checkpoints"))
    monkeypatch.setattr(MatchRankers, "on_train_epoch_end", end_of_epoch)
    resumed = _run(overrides, tmp_path / "killed")
    assert resumed.extra["stages_computed"] == ["ranker"]
    assert resumed.metrics == whole.metrics and resumed.curves == whole.curves
    assert len(whole.curves["test/ndcg@10"]) == 3  # after each pass


def test_ranker_stage_config_holds_what_decides_the_rankers():
    cfg = compose(["experiment=cet/negatives_by_retriever", "method=cet", "data.retriever=dense_strong"])
    params = method_params(cfg)

    def ranker_config(*updates: tuple[str, Any], method: type = CoupledEstimationTraining, **changed: Any):
        run_cfg = copy.deepcopy(cfg)
        for key, value in updates:
            OmegaConf.update(run_cfg, key, value)
        return method(**{**params, **changed}).ranker_config(run_cfg)

    config = ranker_config()
    assert config["data"]["retriever"] == "dense_strong" and config["seed"] == cfg.seed
    assert config["method"]["debias_ratio"] == 10.0 and config["method"]["labels"] == "judged"
    assert "batch_size" not in config["data"]
    assert "debias_ratio" not in ranker_config(method=NaiveRankerTraining)["method"]  # naive ignores T
    # What changes the trained scorers changes the stage...
    for changed in (
        ranker_config(("data.retriever", "dense_mid")),
        ranker_config(("data.pool_depth", 20)),
        ranker_config(("seed", cfg.seed + 1)),
        ranker_config(debias_ratio=1.0),
        ranker_config(epochs=7),
        ranker_config(score_scale=2.0),
        ranker_config(method=NaiveRankerTraining),
        ranker_config(method=OracleRankerTraining),
    ):
        assert changed != config
    # ...and what does not (the cell's labels, the logger, where the run writes, loader keys) does not.
    assert config == ranker_config(
        ("cell.row", "other"),
        ("logger.kind", "none"),
        ("runtime.output_root", "/elsewhere"),
        ("data.num_workers", 2),
    )


def test_paper_scale_stage_configs_hold_the_run_file_content(tmp_path: Path):
    lexical, dense = tmp_path / "lexical.tsv", tmp_path / "dense.tsv"
    lexical.write_text("0\t1\n0\t2\n")
    dense.write_text("0\t2\n0\t1\n")
    runs = {"lexical": str(lexical), "dense_strong": str(dense), "dense_mid": None}
    column = MsMarcoTriplesDataModule(retriever="lexical", runs=runs)
    other = MsMarcoTriplesDataModule(retriever="dense_strong", runs=runs)
    pairs = column.pairs_config("judged")
    assert pairs != other.pairs_config("judged") and pairs != column.pairs_config("true")
    assert column.lists_config() == other.lists_config()  # every column re-ranks the same lists
    assert "run_sha256" not in column.lists_config()
    # Loader settings do not decide the tokenized pairs; the run file's content does.
    loader = MsMarcoTriplesDataModule(retriever="lexical", runs=runs, batch_size=16, num_workers=2)
    assert loader.pairs_config("judged") == pairs
    lexical.write_text("0\t3\n")
    assert column.pairs_config("judged") != pairs
    with pytest.raises(UserError, match="no run file"):
        MsMarcoTriplesDataModule(retriever="dense_mid", runs=runs).pairs_config("judged")


def test_cross_encoder_is_a_one_output_bert_classifier_and_ignores_padding():
    torch.manual_seed(0)
    encoder = build_cross_encoder(
        vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, head_dropout=0.2
    ).eval()
    config = encoder.model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_labels) == (2, 16, 1)
    assert config.classifier_dropout == 0.2
    ids = torch.randint(1, 50, (3, 7))
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    mask = torch.ones_like(ids)
    scores = encoder(ids, types, mask)
    assert scores.shape == (3,)
    # The score is the linear head on the tanh pooler of [CLS] (the official Reranker head).
    hidden = encoder.model.bert(input_ids=ids, token_type_ids=types, attention_mask=mask).last_hidden_state
    pooled = torch.tanh(encoder.model.bert.pooler.dense(hidden[:, 0]))
    torch.testing.assert_close(scores, encoder.model.classifier(pooled).squeeze(-1))
    # Padding (mask 0) past the sequence does not change a score.
    padded = torch.cat([ids, torch.zeros(3, 4, dtype=torch.long)], 1)
    padded_types = torch.cat([types, torch.zeros(3, 4, dtype=torch.long)], 1)
    padded_mask = torch.cat([mask, torch.zeros(3, 4, dtype=torch.long)], 1)
    torch.testing.assert_close(encoder(padded, padded_types, padded_mask), scores, rtol=1e-4, atol=1e-5)


def test_paper_scale_one_step_on_random_tokens_and_stage_reuse(tmp_path: Path):
    paper = [
        "scale=paper",
        "data.source=random",
        "data.batch_size=8",
        "+trainer.limit_train_batches=1",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "runtime.checkpoint=false",
    ]
    naive = _run(["method=cet_naive", *paper], tmp_path)
    assert 0.0 <= naive.metrics["test/ndcg@10"] <= 100.0
    assert naive.extra["stages_computed"] == ["pairs", "eval_lists", "cross_encoders"]
    # CET trains on the same column's tokenized pairs and lists: it reuses them and fits its own encoders.
    coupled = _run(["method=cet", *paper], tmp_path)
    assert 0.0 <= coupled.metrics["test/ndcg@10"] <= 100.0
    assert coupled.extra["stages_reused"] == ["pairs", "eval_lists"]
    assert coupled.extra["stages_computed"] == ["cross_encoders"]
    again = _run(["method=cet", *paper, "runtime.force=true"], tmp_path)
    assert again.extra["stages_reused"] == ["pairs", "eval_lists", "cross_encoders"]
    assert again.metrics == coupled.metrics
