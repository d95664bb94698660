"""Paper scale: BERT-base cross-encoders (the official Reranker and Observer) on MS MARCO passages.

The cross-encoder is transformers' `BertForSequenceClassification` with one output: the official head
(tanh pooler on [CLS], dropout 0.2, linear to one score); `model.pretrained` (e.g. bert-base-uncased) loads
the encoder weights from the hub, otherwise the architecture is initialised at random.
Data: `microsoft/ms_marco` v1.1 from the hub; a query's positives are its `is_selected` passages. Negatives
come from a retriever run file per column (the official triples come from BM25/ANCE runs of the DRhard
pipeline, which are not on the hub); the oracle row takes the query's own judged, unselected passages
instead (annotated non-relevant, so no false negatives). Evaluation re-ranks each validation query's judged
passages (nDCG@10, MAP@10 on `is_selected`). `data.source=random`: random token ids of the paper's shapes
and a tiny encoder of the same architecture (`model.smoke`), for smoke tests.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from torch import nn

from common.data.sources import load_hub_dataset
from common.errors import UserError
from common.eval.ranking import ranking_metrics
from common.registry import register_datamodule
from papers.cet.coupled import coupled_losses, pairwise_softmax_loss

if TYPE_CHECKING:
    from common.lit import RunContext
    from papers.cet.pipeline import RankerTrainingPipeline

log = logging.getLogger("pnu.cet")

SOURCES = ("hub", "random")


class CrossEncoder(nn.Module):
    """Scores (query, passage) token sequences: transformers' BERT sequence classifier with one output
    (tanh pooler on [CLS], dropout, linear -> 1), as the official Reranker/Observer head."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, L) ids, token types, mask (1 = token) -> (B,) scores."""
        output = self.model(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        return output.logits.squeeze(-1)


def build_cross_encoder(
    *,
    pretrained: str | None = None,
    cache_dir: str | None = None,
    vocab_size: int = 30522,
    hidden_size: int = 768,
    num_layers: int = 12,
    num_heads: int = 12,
    intermediate_size: int = 3072,
    max_positions: int = 512,
    type_vocab_size: int = 2,
    dropout: float = 0.1,
    head_dropout: float = 0.2,
) -> CrossEncoder:
    """A BERT cross-encoder: `pretrained` (a hub name such as bert-base-uncased) loads its encoder weights
    with a fresh head; without it, a random initialisation of the given architecture."""
    from transformers import BertConfig, BertForSequenceClassification

    if pretrained:
        try:
            model = BertForSequenceClassification.from_pretrained(
                pretrained, num_labels=1, classifier_dropout=head_dropout, cache_dir=cache_dir
            )
        except OSError as err:  # not cached and the hub unreachable, or no such model
            raise UserError(
                f"could not load {pretrained!r} from the hub or the cache ({err}); download it once with "
                "network access, or set model.pretrained=null to train from a random initialisation"
            ) from err
        return CrossEncoder(model)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_positions,
        type_vocab_size=type_vocab_size,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        classifier_dropout=head_dropout,
        num_labels=1,
    )
    return CrossEncoder(BertForSequenceClassification(config))


def _pair_encoding(
    queries: list[list[int]], passages: list[list[int]], cls_id: int, sep_id: int, length: int
) -> dict[str, torch.Tensor]:
    """[CLS] query [SEP] passage [SEP], padded to `length` (the official collate function's layout)."""
    n = len(queries)
    ids = torch.zeros(n, length, dtype=torch.long)
    types = torch.zeros(n, length, dtype=torch.long)
    mask = torch.zeros(n, length, dtype=torch.long)
    for i, (q, p) in enumerate(zip(queries, passages, strict=True)):
        seq = [cls_id, *q, sep_id, *p, sep_id][:length]
        query_part = min(len(q) + 2, length)
        ids[i, : len(seq)] = torch.tensor(seq)
        types[i, query_part : len(seq)] = 1
        mask[i, : len(seq)] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


@register_datamodule("cet_msmarco")
class MsMarcoTriplesDataModule(L.LightningDataModule):
    """(query, positive, negative) token pairs for one column's negative source, and validation lists.

    `runs` maps a retriever name (the column's `retriever`) to a run file with lines `row<TAB>passage` (row:
    index of a training query in the hub split; passage: index into the split's passages in row-major order),
    best first, e.g. written from a BM25 or ANCE run over those passages."""

    def __init__(
        self,
        source: str = "hub",
        *,
        retriever: str = "lexical",
        runs: dict[str, str | None] | None = None,
        dataset: str = "microsoft/ms_marco",
        config: str = "v1.1",
        tokenizer: str = "bert-base-uncased",
        max_query_length: int = 32,
        max_doc_length: int = 256,
        mine_depth: int = 200,
        max_train_queries: int | None = None,
        max_eval_queries: int | None = None,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        cache_dir: str | None = None,
        **unused: Any,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise UserError(f"unknown data.source {source!r} for MS MARCO; use one of {SOURCES}")
        self.source, self.retriever, self.runs = source, retriever, dict(runs or {})
        self.dataset, self.config, self.tokenizer_name = dataset, config, tokenizer
        self.max_query_length, self.max_doc_length, self.mine_depth = (
            max_query_length,
            max_doc_length,
            mine_depth,
        )
        self.max_train_queries, self.max_eval_queries = max_train_queries, max_eval_queries
        self.seed, self.batch_size, self.num_workers, self.cache_dir = (
            int(seed),
            int(batch_size),
            num_workers,
            cache_dir,
        )
        self.pairs: dict[str, dict[str, torch.Tensor]] = {}
        self.eval_lists: dict[str, torch.Tensor] | None = None

    @property
    def sequence_length(self) -> int:
        return self.max_query_length + self.max_doc_length + 3

    def setup(self, stage: str | None = None) -> None:
        if self.eval_lists is not None:
            return
        if self.source == "random":
            self._setup_random()
        else:
            self._setup_hub()

    def _setup_random(self) -> None:
        g = torch.Generator().manual_seed(self.seed)
        n, length = 2 * self.batch_size, self.sequence_length

        def encoded(rows: int) -> dict[str, torch.Tensor]:
            types = torch.zeros(rows, length, dtype=torch.long)
            types[:, self.max_query_length + 2 :] = 1
            return {
                "input_ids": torch.randint(1000, 30000, (rows, length), generator=g),
                "token_type_ids": types,
                "attention_mask": torch.ones(rows, length, dtype=torch.long),
            }

        self.pairs = {"judged": {"positive": encoded(n), "negative": encoded(n)}}
        self.pairs["true"] = self.pairs["judged"]
        self.eval_lists = {
            **encoded(2 * 10),
            "labels": torch.randint(0, 2, (2, 10), generator=g),
            "candidates": torch.ones(2, 10, dtype=torch.bool),
        }

    def _setup_hub(self) -> None:
        from transformers import AutoTokenizer

        splits = load_hub_dataset(self.dataset, name=self.config, cache_dir=self.cache_dir)
        train, valid = splits["train"], splits["validation"]
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_name, cache_dir=self.cache_dir)
        except OSError as err:
            raise UserError(
                f"could not load the tokenizer {self.tokenizer_name!r} from the hub or the cache ({err}); "
                "download it once with network access"
            ) from err
        if self.max_train_queries:
            train = train.select(range(min(self.max_train_queries, len(train))))
        if self.max_eval_queries:
            valid = valid.select(range(min(self.max_eval_queries, len(valid))))

        def tokens(texts: list[str], limit: int) -> list[list[int]]:
            return [ids[:limit] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

        passages = [p for row in train["passages"] for p in row["passage_text"]]
        selected = [s for row in train["passages"] for s in row["is_selected"]]
        owner = np.repeat(np.arange(len(train)), [len(row["passage_text"]) for row in train["passages"]])
        start = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=len(train)))])
        query_tokens = tokens(list(train["query"]), self.max_query_length)
        rng = np.random.default_rng(self.seed)
        run = self._read_run(len(passages))
        triples: dict[str, list[tuple[int, int, int]]] = {"judged": [], "true": []}
        for row in range(len(train)):
            own = np.arange(start[row], start[row + 1])
            positives = [p for p in own if selected[p]]
            judged_negatives = [p for p in own if not selected[p]]
            mined = [p for p in run.get(row, [])[: self.mine_depth] if not (owner[p] == row and selected[p])]
            for pos in positives:
                if mined:
                    triples["judged"].append((row, pos, int(rng.choice(mined))))
                if judged_negatives:
                    triples["true"].append((row, pos, int(rng.choice(judged_negatives))))
        length = self.sequence_length
        cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        for labels, rows in triples.items():
            if not rows:
                continue
            q_ids, pos_ids, neg_ids = zip(*rows, strict=True)
            qs = [query_tokens[r] for r in q_ids]
            self.pairs[labels] = {
                "positive": _pair_encoding(
                    qs, tokens([passages[p] for p in pos_ids], self.max_doc_length), cls_id, sep_id, length
                ),
                "negative": _pair_encoding(
                    qs, tokens([passages[p] for p in neg_ids], self.max_doc_length), cls_id, sep_id, length
                ),
            }
        width = max(len(row["passage_text"]) for row in valid["passages"])
        eval_queries, eval_passages = [], []
        labels = torch.zeros(len(valid), width, dtype=torch.long)
        candidates = torch.zeros(len(valid), width, dtype=torch.bool)
        valid_query_tokens = tokens(list(valid["query"]), self.max_query_length)
        for i, row in enumerate(valid["passages"]):
            texts = row["passage_text"] + [""] * (width - len(row["passage_text"]))
            eval_queries += [valid_query_tokens[i]] * width
            eval_passages += tokens(texts, self.max_doc_length)
            labels[i, : len(row["is_selected"])] = torch.tensor(row["is_selected"])
            candidates[i, : len(row["is_selected"])] = True
        encoded = _pair_encoding(eval_queries, eval_passages, cls_id, sep_id, length)
        self.eval_lists = {**encoded, "labels": labels, "candidates": candidates}

    def _read_run(self, num_passages: int) -> dict[int, list[int]]:
        path = self.runs.get(self.retriever)
        if not path or not Path(path).exists():
            raise UserError(
                f"no run file for retriever {self.retriever!r} (data.runs.{self.retriever}={path!r}): "
                "write one with lines `row<TAB>passage` (best first) from that retriever "
                "over the split's passages"
            )
        run: dict[int, list[int]] = {}
        for line in Path(path).read_text().splitlines():
            row, passage = (int(x) for x in line.split("\t")[:2])
            if 0 <= passage < num_passages:
                run.setdefault(row, []).append(passage)
        return run


def _batches(size: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(size, generator=generator)
    return [order[i : i + batch_size] for i in range(0, size, batch_size)]


def train_text_rankers(
    pipeline: RankerTrainingPipeline, datamodule: MsMarcoTriplesDataModule, context: RunContext
) -> dict[str, float]:
    """The official schedule (AdamW, linear warm-up then decay, clip 1.0, one epoch over the pairs), naive
    or coupled; returns nDCG@10 / MAP@10 (x100) of re-ranking the validation lists."""
    cfg = context.cfg
    datamodule.setup()
    model_cfg = dict(cfg.model)
    pretrained = model_cfg.pop("pretrained", None)
    smoke = model_cfg.pop("smoke", None) or {}
    model_cfg.pop("backbone", None)
    if datamodule.source == "random":  # smoke tests: the same architecture, tiny and random
        model_cfg.update(smoke)
        pretrained = None
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    device = torch.device("cuda" if accelerator != "cpu" and torch.cuda.is_available() else "cpu")
    torch.manual_seed(int(cfg.seed))
    count = 2 if pipeline.estimator == "cet" else 1  # CET: the relevance and the selection model
    models = [
        build_cross_encoder(pretrained=pretrained, cache_dir=datamodule.cache_dir, **model_cfg).to(device)
        for _ in range(count)
    ]
    pairs = datamodule.pairs.get(pipeline.labels)
    if not pairs:
        raise UserError(
            f"no training pairs with labels={pipeline.labels!r} for retriever {datamodule.retriever!r}"
        )
    pairs_per_batch = max(1, datamodule.batch_size // 2)  # the official batch holds (positive, negative) rows
    generator = torch.Generator().manual_seed(int(cfg.seed))
    batches = _batches(len(pairs["positive"]["input_ids"]), pairs_per_batch, generator)
    limit = cfg.trainer.get("limit_train_batches")
    if isinstance(limit, int) and limit >= 1:
        batches = batches[:limit]
    optimizers = [
        torch.optim.AdamW(m.parameters(), lr=pipeline.lr, weight_decay=pipeline.weight_decay, eps=1e-8)
        for m in models
    ]
    from transformers import get_linear_schedule_with_warmup  # imported here: transformers loads slowly

    warmup = int(cfg.get("protocol", {}).get("warmup_steps", 0))
    total = len(batches)
    schedulers = [get_linear_schedule_with_warmup(o, min(warmup, total), total) for o in optimizers]
    for step, index in enumerate(batches):
        pos = {k: v[index].to(device) for k, v in pairs["positive"].items()}
        neg = {k: v[index].to(device) for k, v in pairs["negative"].items()}
        for model in models:
            model.train()
        relevance_pos, relevance_neg = models[0](**pos), models[0](**neg)
        if pipeline.estimator == "cet":
            # The official code scores the weights in eval mode (no dropout); here the training-mode scores
            # of the same forward pass are used, detached.
            losses = coupled_losses(
                relevance_pos, relevance_neg, models[1](**pos), models[1](**neg), pipeline.debias_ratio
            )
            loss = losses[0] + losses[1]
        else:
            loss = pairwise_softmax_loss(relevance_pos, relevance_neg).mean()
        # A host sync only every 100 steps and at the end (not per step).
        if (step % 100 == 0 or step == total - 1) and not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"non-finite loss at step {step}")
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for model, opt, sched in zip(models, optimizers, schedulers, strict=True):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
    return _evaluate(models[0], datamodule.eval_lists, device, max(1, datamodule.batch_size))


def _evaluate(
    model: CrossEncoder, lists: dict[str, torch.Tensor], device: torch.device, batch: int
) -> dict[str, float]:
    model.eval()
    labels = lists["labels"]
    scores = []
    with torch.no_grad():
        for i in range(0, len(lists["input_ids"]), batch):
            chunk = {
                k: lists[k][i : i + batch].to(device)
                for k in ("input_ids", "token_type_ids", "attention_mask")
            }
            scores.append(model(**chunk).float().cpu())
    score_matrix = torch.cat(scores).view(labels.shape)
    metrics = ranking_metrics(
        score_matrix, labels, 10, candidates=lists["candidates"], metrics=("ndcg", "map", "recall")
    )
    return {f"test/{k}": 100.0 * float(v) for k, v in metrics.items()}
