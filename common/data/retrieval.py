"""Simulated retrieval collections whose relevance is fully known, with pooled (incomplete) judgements.

Queries and documents are Gaussian embeddings; each query has ``relevant_per_query`` relevant documents
placed near it. Retrievers of chosen strength score with the true similarity plus Gaussian noise. As in
TREC-style pooling, a document is *judged* relevant only if it is relevant and some pooling retriever
ranked it in its top ``depth``; every other relevant document is an unjudged false negative, and negatives
mined from a strong retriever's top ranks contain many of them (the hard-vs-false-negative problem).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RetrievalPool", "make_retrieval_pool", "mine_negatives", "pooled_judgements", "retriever_scores"]


@dataclass(frozen=True, eq=False)
class RetrievalPool:
    queries: np.ndarray  # (Q, d)
    documents: np.ndarray  # (N, d)
    relevance: np.ndarray  # (Q, N) bool, the full truth

    def similarity(self) -> np.ndarray:
        return self.queries @ self.documents.T


def make_retrieval_pool(
    num_queries: int,
    num_documents: int,
    dim: int,
    relevant_per_query: int,
    *,
    seed: int,
    spread: float = 0.5,
) -> RetrievalPool:
    """Unit-norm embeddings; a query's relevant documents are the query plus N(0, spread^2 / dim) noise,
    renormalised; the other documents are uniform on the sphere (every document relevant to one query)."""
    if num_documents < num_queries * relevant_per_query or relevant_per_query < 1 or dim < 2:
        raise ValueError(
            "need relevant_per_query >= 1, dim >= 2 and num_documents >= num_queries * relevant_per_query."
        )
    rng = np.random.default_rng(seed)

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    queries = unit(rng.normal(size=(num_queries, dim)))
    documents = unit(rng.normal(size=(num_documents, dim)))
    relevance = np.zeros((num_queries, num_documents), dtype=bool)
    slots = rng.permutation(num_documents)[: num_queries * relevant_per_query].reshape(num_queries, -1)
    for q, docs in enumerate(slots):
        noise = rng.normal(scale=spread / np.sqrt(dim), size=(relevant_per_query, dim))
        documents[docs] = unit(queries[q] + noise)
        relevance[q, docs] = True
    return RetrievalPool(queries, documents, relevance)


def retriever_scores(pool: RetrievalPool, noise: float, *, seed: int) -> np.ndarray:
    """A retriever's (Q, N) scores: the true cosine similarity plus N(0, noise^2); smaller noise, stronger."""
    if noise < 0:
        raise ValueError(f"retriever noise must be >= 0, got {noise}.")
    rng = np.random.default_rng(seed)
    sim = pool.similarity()
    return sim + rng.normal(scale=noise, size=sim.shape) if noise > 0 else sim.copy()


def _top(scores: np.ndarray, depth: int) -> np.ndarray:
    depth = min(depth, scores.shape[1])
    return np.argpartition(-scores, depth - 1, axis=1)[:, :depth]


def pooled_judgements(pool: RetrievalPool, pooling_scores: list[np.ndarray], depth: int) -> np.ndarray:
    """(Q, N) bool: judged relevant = relevant and in the top ``depth`` of at least one pooling retriever."""
    if depth < 1 or not pooling_scores:
        raise ValueError("pooling needs depth >= 1 and at least one retriever's scores.")
    pooled = np.zeros_like(pool.relevance)
    for scores in pooling_scores:
        if scores.shape != pool.relevance.shape:
            raise ValueError(f"scores must be (queries, documents) = {pool.relevance.shape}.")
        np.put_along_axis(pooled, _top(scores, depth), True, axis=1)
    return pooled & pool.relevance


def mine_negatives(
    scores: np.ndarray, judged: np.ndarray, depth: int, num_negatives: int, *, seed: int
) -> np.ndarray:
    """(Q, num_negatives) document ids drawn uniformly from each query's top ``depth`` documents by
    ``scores`` that are not judged relevant (so they may be unjudged relevant documents)."""
    if num_negatives < 1 or depth < num_negatives:
        raise ValueError("need 1 <= num_negatives <= depth.")
    rng = np.random.default_rng(seed)
    out = np.empty((scores.shape[0], num_negatives), dtype=np.int64)
    order = np.argsort(-scores, axis=1, kind="stable")
    for q in range(scores.shape[0]):
        candidates = order[q][~judged[q, order[q]]][:depth]
        if candidates.size < num_negatives:
            raise ValueError(f"query {q} has fewer than {num_negatives} unjudged documents in its ranking.")
        out[q] = rng.choice(candidates, size=num_negatives, replace=False)
    return out
