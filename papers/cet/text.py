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

A run is three cached stages (`train_text_rankers`): `pairs`, the column's tokenized training pairs (shared
by its rows), `eval_lists`, the tokenized validation lists (shared by every cell; tokenizing MS MARCO takes
minutes), and `cross_encoders`, the Lightning fit, checkpointed every `STEPS_PER_EPOCH` steps so that a
killed run resumes inside the one-epoch pass.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from torch import nn

from common.data.sources import load_hub_dataset
from common.errors import NonFiniteLossError, UserError
from common.eval.ranking import ranking_metrics
from common.registry import register_datamodule
from papers.cet.coupled import coupled_losses, pairwise_softmax_loss
from papers.cet.module import StepBatches

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

    @property
    def sequence_length(self) -> int:
        return self.max_query_length + self.max_doc_length + 3

    def setup(self, stage: str | None = None) -> None:
        """Nothing here: the tokenized pairs and lists are `training_pairs` and `evaluation_lists`, which the
        pipeline runs as cached stages (tokenizing MS MARCO takes minutes; the rows of a column share their
        pairs, every cell shares the lists)."""

    # ---- what decides each tensor set (the stages' configs) -----------------------------------------------
    def _text_config(self) -> dict[str, Any]:
        if self.source == "random":  # the pairs and the lists come from one generator, in that order
            return {"source": "random", "seed": self.seed, "batch_size": self.batch_size, **self._lengths()}
        return {
            "source": "hub",
            "dataset": self.dataset,
            "config": self.config,
            "tokenizer": self.tokenizer_name,
        }

    def _lengths(self) -> dict[str, int]:
        return {"max_query_length": self.max_query_length, "max_doc_length": self.max_doc_length}

    def pairs_config(self, labels: str) -> dict[str, Any]:
        """What decides `training_pairs(labels)`: the split, the tokenizer, the lengths, the negative
        source's run (its content, by digest) and the sampling seed."""
        config = {**self._text_config(), "labels": labels}
        if self.source == "random":
            return config
        return {
            **config,
            **self._lengths(),
            "max_train_queries": self.max_train_queries,
            "mine_depth": self.mine_depth,
            "run_sha256": _file_digest(self._run_path()),
            "seed": self.seed,
        }

    def lists_config(self) -> dict[str, Any]:
        """What decides `evaluation_lists()`: not the column's retriever, so every cell shares them."""
        if self.source == "random":
            return self._text_config()
        return {**self._text_config(), **self._lengths(), "max_eval_queries": self.max_eval_queries}

    # ---- the tensors --------------------------------------------------------------------------------------
    def training_pairs(self, labels: str) -> dict[str, dict[str, torch.Tensor]]:
        """{"positive", "negative"} -> token ids, types and masks of the (query, passage) rows of the
        training pairs with `labels` ("judged": negatives from the run; "true": judged non-relevant)."""
        pairs = self._random_data()[0] if self.source == "random" else self._hub_pairs(labels)
        if not pairs.get(labels):
            raise UserError(f"no training pairs with labels={labels!r} for retriever {self.retriever!r}")
        return pairs[labels]

    def evaluation_lists(self) -> dict[str, torch.Tensor]:
        """The validation lists to re-rank: token ids, types, masks (query-major), `labels`, `candidates`."""
        return self._random_data()[1] if self.source == "random" else self._hub_lists()

    def _random_data(self) -> tuple[dict[str, dict[str, dict[str, torch.Tensor]]], dict[str, torch.Tensor]]:
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

        pairs = {"judged": {"positive": encoded(n), "negative": encoded(n)}}
        pairs["true"] = pairs["judged"]
        lists = {
            **encoded(2 * 10),
            "labels": torch.randint(0, 2, (2, 10), generator=g),
            "candidates": torch.ones(2, 10, dtype=torch.bool),
        }
        return pairs, lists

    def _hub_split(self, name: str, limit: int | None) -> tuple[Any, Any]:
        """(the split `name`, its first `limit` rows; the tokenizer)."""
        from transformers import AutoTokenizer

        split = load_hub_dataset(self.dataset, name=self.config, cache_dir=self.cache_dir)[name]
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_name, cache_dir=self.cache_dir)
        except OSError as err:
            raise UserError(
                f"could not load the tokenizer {self.tokenizer_name!r} from the hub or the cache ({err}); "
                "download it once with network access"
            ) from err
        if limit:
            split = split.select(range(min(limit, len(split))))
        return split, tokenizer

    def _hub_pairs(self, labels: str) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
        train, tokenizer = self._hub_split("train", self.max_train_queries)
        tokens = _tokens(tokenizer)
        passages = [p for row in train["passages"] for p in row["passage_text"]]
        selected = [s for row in train["passages"] for s in row["is_selected"]]
        owner = np.repeat(np.arange(len(train)), [len(row["passage_text"]) for row in train["passages"]])
        start = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=len(train)))])
        query_tokens = tokens(list(train["query"]), self.max_query_length)
        rng = np.random.default_rng(self.seed)
        run = self._read_run(len(passages))
        # Both label sets are drawn (one generator, interleaved), only the asked one is tokenized.
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
        rows = triples[labels]
        if not rows:
            return {}
        length = self.sequence_length
        cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        q_ids, pos_ids, neg_ids = zip(*rows, strict=True)
        qs = [query_tokens[r] for r in q_ids]
        return {
            labels: {
                "positive": _pair_encoding(
                    qs, tokens([passages[p] for p in pos_ids], self.max_doc_length), cls_id, sep_id, length
                ),
                "negative": _pair_encoding(
                    qs, tokens([passages[p] for p in neg_ids], self.max_doc_length), cls_id, sep_id, length
                ),
            }
        }

    def _hub_lists(self) -> dict[str, torch.Tensor]:
        valid, tokenizer = self._hub_split("validation", self.max_eval_queries)
        tokens = _tokens(tokenizer)
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
        cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        encoded = _pair_encoding(eval_queries, eval_passages, cls_id, sep_id, self.sequence_length)
        return {**encoded, "labels": labels, "candidates": candidates}

    def _run_path(self) -> Path:
        path = self.runs.get(self.retriever)
        if not path or not Path(path).exists():
            raise UserError(
                f"no run file for retriever {self.retriever!r} (data.runs.{self.retriever}={path!r}): "
                "write one with lines `row<TAB>passage` (best first) from that retriever "
                "over the split's passages"
            )
        return Path(path)

    def _read_run(self, num_passages: int) -> dict[int, list[int]]:
        path = self._run_path()
        run: dict[int, list[int]] = {}
        for line in Path(path).read_text().splitlines():
            row, passage = (int(x) for x in line.split("\t")[:2])
            if 0 <= passage < num_passages:
                run.setdefault(row, []).append(passage)
        return run


def _tokens(tokenizer: Any) -> Any:
    def tokens(texts: list[str], limit: int) -> list[list[int]]:
        return [ids[:limit] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    return tokens


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _batches(size: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(size, generator=generator)
    return [order[i : i + batch_size] for i in range(0, size, batch_size)]


# The official one epoch over the pairs is cut into Lightning epochs of this many steps, each checkpointed,
# so a killed run resumes within the pass (the batch order and the schedules run on unchanged).
STEPS_PER_EPOCH = 500


class CrossEncoderRankers(L.LightningModule):
    """The official schedule: the relevance model (and, for CET, the selection model) each with its own
    AdamW and linear warm-up then decay over `total_steps`, gradients clipped to norm 1.0 per model.
    Manual optimisation, since Lightning's automatic loop steps one optimiser per batch."""

    def __init__(
        self,
        models: list[CrossEncoder],
        *,
        coupled: bool,
        debias_ratio: float,
        lr: float,
        weight_decay: float,
        warmup_steps: int,
        total_steps: int,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.models = nn.ModuleList(models)
        self.coupled, self.debias_ratio = coupled, debias_ratio
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.epoch_loss = torch.zeros(())

    def on_train_start(self) -> None:
        self.models.train()  # a pretrained encoder loads in eval mode

    def training_step(self, batch: dict[str, dict[str, torch.Tensor]], batch_idx: int) -> None:
        pos, neg = batch["positive"], batch["negative"]
        relevance_pos, relevance_neg = self.models[0](**pos), self.models[0](**neg)
        if self.coupled:
            # The official code scores the weights in eval mode (no dropout); here the training-mode scores
            # of the same forward pass are used, detached.
            losses = coupled_losses(
                relevance_pos, relevance_neg, self.models[1](**pos), self.models[1](**neg), self.debias_ratio
            )
            loss = losses[0] + losses[1]
        else:
            loss = pairwise_softmax_loss(relevance_pos, relevance_neg).mean()
        self.epoch_loss = self.epoch_loss.to(loss.device) + loss.detach()
        optimizers, schedulers = _as_list(self.optimizers()), _as_list(self.lr_schedulers())
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        for model, optimizer, scheduler in zip(self.models, optimizers, schedulers, strict=True):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
        self.log("train/loss", loss.detach(), on_step=False, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        # A host sync once per epoch, not per step.
        if not torch.isfinite(self.epoch_loss):
            raise NonFiniteLossError(f"non-finite loss in epoch {self.current_epoch}")
        self.epoch_loss = torch.zeros(())

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[Any]]:
        from transformers import get_linear_schedule_with_warmup  # imported here: transformers loads slowly

        optimizers = [
            torch.optim.AdamW(m.parameters(), lr=self.lr, weight_decay=self.weight_decay, eps=1e-8)
            for m in self.models
        ]
        warmup = min(self.warmup_steps, self.total_steps)
        return optimizers, [get_linear_schedule_with_warmup(o, warmup, self.total_steps) for o in optimizers]


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def train_text_rankers(
    pipeline: RankerTrainingPipeline, datamodule: MsMarcoTriplesDataModule, context: RunContext
) -> dict[str, float]:
    """The official schedule (AdamW, linear warm-up then decay, clip 1.0, one epoch over the pairs), naive
    or coupled; returns nDCG@10 / MAP@10 (x100) of re-ranking the validation lists.

    Three stages: `pairs` (the column's tokenized training pairs, shared by its rows), `eval_lists` (the
    tokenized validation lists, shared by every cell) and `cross_encoders` (the fit, checkpointed every
    `STEPS_PER_EPOCH` steps)."""
    cfg = context.cfg
    stages = context.stages
    labels = pipeline.labels

    def stage(name: str, config: dict[str, Any], compute: Callable[[], Any]) -> Any:
        return compute() if stages is None else stages.compute(name, config, compute)

    pairs_config = datamodule.pairs_config(labels)
    pairs = stage("pairs", pairs_config, lambda: datamodule.training_pairs(labels))
    eval_lists = stage("eval_lists", datamodule.lists_config(), datamodule.evaluation_lists)

    model_cfg = dict(cfg.model)
    pretrained = model_cfg.pop("pretrained", None)
    smoke = model_cfg.pop("smoke", None) or {}
    model_cfg.pop("backbone", None)
    if datamodule.source == "random":  # smoke tests: the same architecture, tiny and random
        model_cfg.update(smoke)
        pretrained = None
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    device = torch.device("cuda" if accelerator != "cpu" and torch.cuda.is_available() else "cpu")
    pairs_per_batch = max(1, datamodule.batch_size // 2)  # the official batch holds (positive, negative) rows
    generator = torch.Generator().manual_seed(int(cfg.seed))
    batches = _batches(len(pairs["positive"]["input_ids"]), pairs_per_batch, generator)
    limit = cfg.trainer.get("limit_train_batches")
    if isinstance(limit, int) and limit >= 1:
        batches = batches[:limit]
    warmup = int(cfg.get("protocol", {}).get("warmup_steps", 0))
    coupled = pipeline.estimator == "cet"

    def make_module() -> CrossEncoderRankers:
        torch.manual_seed(int(cfg.seed))  # the encoders' initialisation (and the dropout masks after it)
        count = 2 if coupled else 1  # CET: the relevance and the selection model
        models = [
            build_cross_encoder(pretrained=pretrained, cache_dir=datamodule.cache_dir, **model_cfg)
            for _ in range(count)
        ]
        return CrossEncoderRankers(
            models,
            coupled=coupled,
            debias_ratio=pipeline.debias_ratio,
            lr=pipeline.lr,
            weight_decay=pipeline.weight_decay,
            warmup_steps=warmup,
            total_steps=len(batches),
        )

    def batch(step: int) -> dict[str, dict[str, torch.Tensor]]:
        index = batches[step]
        return {side: {k: v[index] for k, v in pairs[side].items()} for side in ("positive", "negative")}

    training_data = StepBatches(batch, len(batches), STEPS_PER_EPOCH)
    # The loop's own device, fp32 and per-model clipping and schedule, whatever else the trainer config says.
    overrides = {
        "accelerator": device.type,
        "devices": 1,
        "precision": "32-true",
        "gradient_clip_val": None,
        "accumulate_grad_batches": 1,
        "limit_train_batches": None,
        **training_data.trainer_overrides(),
    }
    if stages is None:
        module = make_module()
        context.make_trainer(**overrides).fit(module, datamodule=training_data)
    else:
        config = {
            "pairs": pairs_config,
            "model": {"pretrained": pretrained, **model_cfg},
            "method": {
                "estimator": pipeline.estimator,
                "lr": pipeline.lr,
                "weight_decay": pipeline.weight_decay,
                **({"debias_ratio": pipeline.debias_ratio} if coupled else {}),
            },
            "schedule": {
                "pairs_per_batch": pairs_per_batch,
                "batches": len(batches),
                "warmup_steps": warmup,
                "device": device.type,
            },
            "seed": int(cfg.seed),  # the batch order, the initialisation, the dropout masks
        }
        module = stages.fit(
            "cross_encoders", config, make_module, trainer_overrides=overrides, datamodule=training_data
        )
    relevance_model = module.models[0].to(device)  # the trainer hands the module back on the CPU
    return _evaluate(relevance_model, eval_lists, device, max(1, datamodule.batch_size))


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
