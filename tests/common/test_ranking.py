"""Ranking metrics on score matrices: parity with torchmetrics' per-query retrieval metrics."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.retrieval import (
    retrieval_average_precision,
    retrieval_normalized_dcg,
    retrieval_precision,
    retrieval_recall,
)

from common.eval.ranking import ranking_metrics


def test_hand_computed_row():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]])
    relevance = torch.tensor([[0.0, 1.0, 0.0, 1.0, 1.0]])
    out = ranking_metrics(scores, relevance, 3)
    dcg = 1 / math.log2(3)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert out["dcg@3"] == pytest.approx(dcg)
    assert out["ndcg@3"] == pytest.approx(dcg / idcg)
    assert out["precision@3"] == pytest.approx(1 / 3)
    assert out["recall@3"] == pytest.approx(1 / 3)
    assert out["map@3"] == pytest.approx(1 / 2)  # one hit, at rank 2
    assert out["f1@3"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("graded", [False, True])
def test_parity_with_torchmetrics_on_candidates(graded):
    g = torch.Generator().manual_seed(0)
    queries, items = 40, 30
    # Positive scores: torchmetrics' precision counts only items scored > 0 as retrieved.
    scores = torch.rand(queries, items, generator=g) + 0.01
    relevance = (torch.rand(queries, items, generator=g) < 0.2).double()
    if graded:
        relevance *= torch.randint(1, 4, (queries, items), generator=g).double()
    candidates = torch.rand(queries, items, generator=g) < 0.6
    exclude = torch.rand(queries, items, generator=g) < 0.1
    subset = torch.rand(items, generator=g) < 0.8
    ks = [1, 5, 10, 50]
    ours = ranking_metrics(
        scores, relevance, ks, candidates=candidates, exclude=exclude, item_subset=subset, reduction="none"
    )
    allowed = candidates & ~exclude & subset
    kept = [q for q in range(queries) if (relevance[q][allowed[q]] > 0).any()]
    for k in ks:
        expected = {name: [] for name in ("ndcg", "precision", "recall", "map")}
        for q in kept:
            p, t = scores[q][allowed[q]], relevance[q][allowed[q]]
            expected["ndcg"].append(retrieval_normalized_dcg(p, t, top_k=k))
            expected["precision"].append(retrieval_precision(p, t > 0, top_k=k))
            expected["recall"].append(retrieval_recall(p, t > 0, top_k=k))
            expected["map"].append(retrieval_average_precision(p, t > 0, top_k=k))
        for name, values in expected.items():
            torch.testing.assert_close(
                ours[f"{name}@{k}"].float(),
                torch.stack(values).float(),
                rtol=1e-5,
                atol=1e-6,
                msg=f"{name}@{k}",
            )


def test_empty_rows_skip_or_zero_and_errors():
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    relevance = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert ranking_metrics(scores, relevance, 1)["ndcg@1"] == 1.0
    assert ranking_metrics(scores, relevance, 1, empty="zero")["ndcg@1"] == 0.5
    with pytest.raises(ValueError, match="queries, items"):
        ranking_metrics(scores, relevance[0], 1)
    with pytest.raises(ValueError, match="unknown ranking metrics"):
        ranking_metrics(scores, relevance, 1, metrics=("mrr",))
    with pytest.raises(ValueError, match="positive integer"):
        ranking_metrics(scores, relevance, 0)
