"""Mini proxy of the paper's setting: a collection judged by pooling a *lexical* retriever (BM25's role), and
training negatives mined from retrievers of growing strength.

Every document has two views. The *semantic* view is `common.data.retrieval.make_retrieval_pool`'s embedding:
relevance is defined there, and dense retrievers of chosen noise score with it (`retriever_scores`). The
*lexical* view models term overlap: a query has its own lexical vector; each relevant document shares the
query's vocabulary with probability `lexical_overlap` (else it is a paraphrase with a random lexical vector:
vocabulary mismatch), and `lexical_distractors` non-relevant documents per query share the query's vocabulary
without being relevant. The judged pool is the top `pool_depth` of the lexical retriever, so judged positives
are the relevant documents with term overlap (pooling bias); relevant paraphrases stay unjudged and a strong
dense retriever ranks them high: they become false negatives when mined as negatives (the paper's finding).

A ranker sees both views (the features of a query-document pair are the concatenated vectors), as a
cross-encoder sees both the wording and the meaning of a passage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from common.data.retrieval import (
    RetrievalPool,
    make_retrieval_pool,
    mine_negatives,
    pooled_judgements,
    retriever_scores,
)
from common.data.simulation import SimulationDataModule
from common.errors import UserError
from common.registry import register_datamodule

SOURCES = ("simulated", "random")
LEXICAL = "lexical"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_lexical_view(
    pool: RetrievalPool,
    dim: int,
    *,
    overlap: float,
    distractors_per_query: int,
    spread: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(queries (Q, dim), documents (N, dim)) unit lexical vectors: a relevant document shares its query's
    vocabulary (query vector + N(0, spread^2 / dim), renormalised) with probability `overlap`; each query also
    gets `distractors_per_query` non-relevant documents that share its vocabulary; the rest are uniform."""
    if not 0.0 <= overlap <= 1.0 or distractors_per_query < 0 or dim < 2:
        raise ValueError("need 0 <= overlap <= 1, distractors_per_query >= 0 and dim >= 2.")
    rng = np.random.default_rng(seed)
    num_queries, num_documents = pool.relevance.shape
    queries = _unit(rng.normal(size=(num_queries, dim)))
    documents = _unit(rng.normal(size=(num_documents, dim)))
    shares_vocabulary = (rng.random(pool.relevance.shape) < overlap) & pool.relevance
    never_relevant = np.flatnonzero(~pool.relevance.any(0))
    if never_relevant.size < num_queries * distractors_per_query:
        raise ValueError("too few non-relevant documents for the requested lexical distractors.")
    distractors = rng.permutation(never_relevant)[: num_queries * distractors_per_query]
    for q, docs in enumerate(distractors.reshape(num_queries, -1)):
        shares_vocabulary[q, docs] = True
    for q in range(num_queries):
        docs = np.flatnonzero(shares_vocabulary[q])
        noise = rng.normal(scale=spread / np.sqrt(dim), size=(docs.size, dim))
        documents[docs] = _unit(queries[q] + noise)
    return queries, documents


@dataclass(frozen=True, eq=False)
class PooledCollection:
    """A simulated collection with its full truth, its pooled judgements and a train/test split of queries."""

    pool: RetrievalPool
    lexical_queries: np.ndarray
    lexical_documents: np.ndarray
    lexical_scores: np.ndarray  # (Q, N) the pooling retriever's scores
    judged: np.ndarray  # (Q, N) bool: judged relevant
    num_train_queries: int

    @property
    def relevance(self) -> np.ndarray:
        return self.pool.relevance

    def query_features(self) -> np.ndarray:
        """(Q, d_sem + d_lex) semantic and lexical views side by side."""
        return np.concatenate([self.pool.queries, self.lexical_queries], 1).astype(np.float32)

    def document_features(self) -> np.ndarray:
        return np.concatenate([self.pool.documents, self.lexical_documents], 1).astype(np.float32)


def make_pooled_collection(
    *,
    num_queries: int,
    num_documents: int,
    semantic_dim: int,
    lexical_dim: int,
    relevant_per_query: int,
    semantic_spread: float,
    lexical_overlap: float,
    lexical_distractors: int,
    lexical_spread: float,
    pool_noise: float,
    pool_depth: int,
    train_fraction: float,
    seed: int,
) -> PooledCollection:
    """The collection, judged by pooling the top `pool_depth` of the lexical retriever (lexical cosine plus
    N(0, pool_noise^2))."""
    pool = make_retrieval_pool(
        num_queries, num_documents, semantic_dim, relevant_per_query, seed=seed, spread=semantic_spread
    )
    lexical_queries, lexical_documents = make_lexical_view(
        pool,
        lexical_dim,
        overlap=lexical_overlap,
        distractors_per_query=lexical_distractors,
        spread=lexical_spread,
        seed=seed + 1,
    )
    rng = np.random.default_rng(seed + 2)
    lexical = lexical_queries @ lexical_documents.T
    lexical = lexical + rng.normal(scale=pool_noise, size=lexical.shape)
    judged = pooled_judgements(pool, [lexical], pool_depth)
    num_train = int(round(train_fraction * num_queries))
    if not 0 < num_train < num_queries:
        raise ValueError("train_fraction must leave at least one training and one test query.")
    return PooledCollection(pool, lexical_queries, lexical_documents, lexical, judged, num_train)


def training_triples(
    collection: PooledCollection,
    scores: np.ndarray,
    *,
    labels: str,
    mine_depth: int,
    mined_per_query: int,
    random_per_query: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query, positive, negative) id arrays over the training queries: every judged positive is paired with
    `mined_per_query` negatives drawn from the top `mine_depth` of `scores` that are not labelled positive,
    plus `random_per_query` uniform ones. `labels="judged"` is the real protocol (unjudged relevant
    documents can be mined: false negatives); `labels="true"` excludes every relevant document (oracle)."""
    if labels not in ("judged", "true"):
        raise UserError(f"labels must be 'judged' or 'true', got {labels!r}")
    n = collection.num_train_queries
    known = collection.judged if labels == "judged" else collection.relevance
    known = known[:n]
    negatives = mine_negatives(scores[:n], known, mine_depth, mined_per_query, seed=seed)
    if random_per_query:
        rng = np.random.default_rng(seed + 1)
        extra = rng.integers(0, scores.shape[1], size=(n, random_per_query))
        negatives = np.concatenate([negatives, extra], 1)
    query_ids, positive_ids = np.nonzero(collection.judged[:n])
    if query_ids.size == 0:
        raise UserError("no training query has a judged positive; deepen data.pool_depth.")
    width = negatives.shape[1]
    queries = np.repeat(query_ids, width)
    positives = np.repeat(positive_ids, width)
    negative_ids = negatives[query_ids].reshape(-1)
    keep = ~known[queries, negative_ids]  # random draws may hit a labelled positive
    return queries[keep], positives[keep], negative_ids[keep]


@register_datamodule("cet_pooled_retrieval")
class PooledRetrievalDataModule(SimulationDataModule):
    """The simulated collection and the negative source of one table column (`retriever`: "lexical", the
    pooling retriever, or the name of a dense retriever in `dense_retrievers`, name -> score noise).

    `source="random"`: a tiny collection (smoke tests). `batch_size`/`num_workers` exist for the shared config
    keys only (training is full-batch on in-memory tensors)."""

    sources = SOURCES

    def __init__(
        self,
        source: str = "simulated",
        *,
        retriever: str = LEXICAL,
        dense_retrievers: dict[str, float] | None = None,
        num_queries: int = 400,
        num_documents: int = 8000,
        semantic_dim: int = 32,
        lexical_dim: int = 16,
        relevant_per_query: int = 10,
        semantic_spread: float = 1.0,
        lexical_overlap: float = 0.5,
        lexical_distractors: int = 10,
        lexical_spread: float = 1.0,
        pool_noise: float = 0.1,
        pool_depth: int = 30,
        train_fraction: float = 0.5,
        mine_depth: int = 50,
        mined_per_query: int = 8,
        random_per_query: int = 0,
        seed: int = 0,
        batch_size: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(
            source, seed=seed, batch_size=batch_size, num_workers=num_workers, cache_dir=cache_dir
        )
        self.dense_retrievers = dict(dense_retrievers or {})
        if retriever != LEXICAL and retriever not in self.dense_retrievers:
            raise UserError(
                f"unknown data.retriever {retriever!r}; "
                f"use {LEXICAL!r} or one of {sorted(self.dense_retrievers)}"
            )
        self.retriever = retriever
        self.collection_params: dict[str, Any] = dict(
            num_queries=num_queries,
            num_documents=num_documents,
            semantic_dim=semantic_dim,
            lexical_dim=lexical_dim,
            relevant_per_query=relevant_per_query,
            semantic_spread=semantic_spread,
            lexical_overlap=lexical_overlap,
            lexical_distractors=lexical_distractors,
            lexical_spread=lexical_spread,
            pool_noise=pool_noise,
            pool_depth=pool_depth,
            train_fraction=train_fraction,
        )
        if source == "random":
            self.collection_params.update(num_queries=8, num_documents=200, lexical_distractors=2)
        self.mine_depth, self.mined_per_query, self.random_per_query = (
            mine_depth,
            mined_per_query,
            random_per_query,
        )
        self.collection: PooledCollection | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.collection is None:
            self.collection = make_pooled_collection(**self.collection_params, seed=self.seed)

    def retriever_scores(self) -> np.ndarray:
        """(Q, N) scores of this column's negative source."""
        self.setup()
        if self.retriever == LEXICAL:
            return self.collection.lexical_scores
        # A seed per retriever name, so columns do not share noise draws.
        offset = sorted(self.dense_retrievers).index(self.retriever) + 11
        return retriever_scores(
            self.collection.pool, self.dense_retrievers[self.retriever], seed=self.seed + offset
        )

    def triples(self, labels: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        depth = min(self.mine_depth, self.collection_params["num_documents"] // 4)
        return training_triples(
            self.collection,
            self.retriever_scores(),
            labels=labels,
            mine_depth=depth,
            mined_per_query=min(self.mined_per_query, depth),
            random_per_query=self.random_per_query,
            seed=self.seed + 3,
        )
