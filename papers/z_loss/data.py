"""Next-token prediction data: a synthetic Zipfian Markov source (mini scale), word-level text corpora from
the HuggingFace hub (paper scale: Penn Treebank) and random token windows (smoke tests of paper configs).

An example is a window of ``context_size`` previous tokens (``x``, int64) and the token that follows (``y``).
Batches are dicts as in ``common.data.datamodule`` (``x``, ``y``, ``y_clean`` = ``y``, ``index``), so the
classification loop of ``common.lit.ClassificationModule`` runs unchanged on them.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from common.data.datamodule import TensorBatchDataset, TensorBatchSampler
from common.data.sources import load_hub_dataset
from common.errors import UserError
from common.registry import register_datamodule

SOURCES = ("zipf_markov", "hub", "random")
SPLITS = ("train", "validation", "test")
EOS, UNK = "<eos>", "<unk>"


@dataclass
class TokenWindows:
    """Context windows ``x`` (N, context_size) and next tokens ``y`` (N,) of one split."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


def windows_from_sequences(
    sequences: torch.Tensor | Iterable[Sequence[int]], context_size: int
) -> TokenWindows:
    """Every (previous ``context_size`` tokens, next token) window inside each sequence (rows of a 2-D tensor,
    or a single 1-D stream)."""
    if context_size < 1:
        raise ValueError(f"context_size must be >= 1, got {context_size}")
    seq = torch.as_tensor(sequences, dtype=torch.long)
    if seq.ndim == 1:
        seq = seq.unsqueeze(0)
    if seq.shape[1] <= context_size:
        raise ValueError(f"sequences of length {seq.shape[1]} have no window of context {context_size}")
    frames = seq.unfold(1, context_size + 1, 1).reshape(-1, context_size + 1)
    return TokenWindows(frames[:, :context_size].contiguous(), frames[:, context_size].contiguous())


def zipf_log_prior(vocab_size: int, exponent: float) -> torch.Tensor:
    """log p(w) proportional to -exponent * log(rank), token id w having rank w + 1."""
    log_weights = -exponent * torch.log(torch.arange(1, vocab_size + 1, dtype=torch.float64))
    return (log_weights - torch.logsumexp(log_weights, 0)).float()


class ZipfMarkovSource:
    """A random order-``context_size`` Markov source over a Zipfian vocabulary (a random 'teacher' LM).

    ``log p(w | t_1..t_n) = log p0(w) + context_strength * <U_w, h> + const`` with ``p0`` Zipfian and
    ``h = tanh(sum_i decay^(n-i) P_i E[t_i])`` a ``teacher_dim``-dimensional summary of the context (E, P_i,
    U Gaussian, drawn from ``seed``). Frequent words stay frequent, while the context reorders the candidates,
    so top-1 accuracy is bounded well below 100% and top-k accuracy keeps rising with k, as in language.
    """

    def __init__(
        self,
        vocab_size: int = 2000,
        context_size: int = 3,
        *,
        zipf_exponent: float = 1.0,
        teacher_dim: int = 16,
        context_strength: float = 1.0,
        position_decay: float = 0.7,
        seed: int = 0,
    ):
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        self.vocab_size, self.context_size = int(vocab_size), int(context_size)
        generator = torch.Generator().manual_seed(seed)
        self.log_prior = zipf_log_prior(vocab_size, zipf_exponent)
        self.embedding = torch.randn(vocab_size, teacher_dim, generator=generator)
        mixing = torch.randn(context_size, teacher_dim, teacher_dim, generator=generator) / teacher_dim**0.5
        decay = position_decay ** torch.arange(context_size - 1, -1, -1, dtype=torch.float32)
        self.mixing = mixing * decay[:, None, None]  # most recent token (last position) weighs most
        self.output = torch.randn(vocab_size, teacher_dim, generator=generator) * context_strength

    def logits(self, context: torch.Tensor) -> torch.Tensor:
        """Unnormalised next-token log-probabilities (batch, vocab_size) of contexts (batch, context_size)."""
        summary = torch.einsum("bnd,nde->be", self.embedding[context], self.mixing).tanh()
        return self.log_prior + summary @ self.output.T

    def sample(self, num_sequences: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """``num_sequences`` independent sequences of ``length`` tokens; the first ``context_size`` are drawn
        from the Zipfian prior, the rest from the Markov chain."""
        start = torch.multinomial(
            self.log_prior.exp(), num_sequences * self.context_size, replacement=True, generator=generator
        ).view(num_sequences, self.context_size)
        tokens = [start]
        context = start
        for _ in range(length - self.context_size):
            # Inverse-CDF sampling: several times faster than torch.multinomial over thousands of classes.
            cdf = torch.softmax(self.logits(context), dim=1).cumsum(dim=1)
            uniform = torch.rand(num_sequences, 1, generator=generator) * cdf[:, -1:]
            nxt = torch.searchsorted(cdf, uniform).clamp_max(self.vocab_size - 1)
            tokens.append(nxt)
            context = torch.cat([context[:, 1:], nxt], dim=1)
        return torch.cat(tokens, dim=1)


def build_vocabulary(sentences: Iterable[str], max_size: int | None = None) -> dict[str, int]:
    """Word -> id over whitespace tokens plus ``<eos>``, most frequent first (ties by first occurrence); with
    ``max_size``, rarer words are left out and ``<unk>`` is added."""
    counts: Counter[str] = Counter()
    for sentence in sentences:
        counts.update(sentence.split())
        counts[EOS] += 1
    words = [w for w, _ in counts.most_common()]
    if max_size is not None and len(words) > max_size:
        # Keep the max_size - 1 most frequent words and <unk>, which the others will map to.
        words = [w for w in words if w != UNK][: max_size - 1] + [UNK]
    return {w: i for i, w in enumerate(words)}


def encode_stream(sentences: Iterable[str], vocabulary: dict[str, int]) -> torch.Tensor:
    """One token stream: each sentence's words then ``<eos>``; out-of-vocabulary words map to ``<unk>``."""
    unk = vocabulary.get(UNK)
    ids: list[int] = []
    for sentence in sentences:
        for word in sentence.split():
            idx = vocabulary.get(word, unk)
            if idx is None:
                raise UserError(f"word {word!r} is not in the vocabulary, which has no {UNK!r} token")
            ids.append(idx)
        ids.append(vocabulary[EOS])
    return torch.tensor(ids, dtype=torch.long)


@register_datamodule("next_token")
class NextTokenDataModule(L.LightningDataModule):
    """Next-token prediction from a window of previous tokens.

    ``source``: ``zipf_markov`` (generated from ``data_seed``; ``num_*_tokens`` tokens per split), ``hub``
    (a text dataset with train/validation/test splits of sentences, e.g. ``ptb-text-only/ptb_text_only``,
    optionally at ``hub_revision`` and restricted to ``hub_data_files``; the vocabulary comes from the
    training split) or ``random`` (uniform token windows of ``vocab_size`` words, for smoke tests).
    ``eval_split`` is the split the model is evaluated on every epoch (``validation`` to tune
    hyper-parameters, ``test`` for reported numbers). ``seed`` (the run's) only orders the batches.
    """

    def __init__(
        self,
        source: str = "zipf_markov",
        *,
        seed: int = 0,
        data_seed: int = 0,
        vocab_size: int = 2000,
        context_size: int = 3,
        num_train_tokens: int = 50_000,
        num_validation_tokens: int = 10_000,
        num_test_tokens: int = 10_000,
        sequence_length: int = 50,
        zipf_exponent: float = 1.0,
        teacher_dim: int = 16,
        context_strength: float = 1.0,
        position_decay: float = 0.7,
        hub_id: str | None = None,
        hub_revision: str | None = None,
        hub_data_files: dict[str, str] | None = None,
        text_key: str = "sentence",
        split_names: dict[str, str] | None = None,
        eval_split: str = "test",
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ):
        super().__init__()
        if source not in SOURCES:
            raise UserError(
                f"unknown data.source {source!r} for the next_token data module; use one of {SOURCES}"
            )
        if eval_split not in ("validation", "test"):
            raise UserError(f"data.eval_split must be validation or test, got {eval_split!r}")
        self.source, self.seed, self.data_seed = source, seed, data_seed
        self.vocab_size, self.context_size = int(vocab_size), int(context_size)
        self.num_tokens = {
            "train": num_train_tokens,
            "validation": num_validation_tokens,
            "test": num_test_tokens,
        }
        self.sequence_length = int(sequence_length)
        self.teacher_kwargs = {
            "zipf_exponent": zipf_exponent,
            "teacher_dim": teacher_dim,
            "context_strength": context_strength,
            "position_decay": position_decay,
        }
        self.hub_id, self.hub_revision, self.text_key = hub_id, hub_revision, text_key
        self.hub_data_files = dict(hub_data_files) if hub_data_files else None
        self.split_names = {name: name for name in SPLITS} | dict(split_names or {})
        self.eval_split = eval_split
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.num_workers, self.cache_dir = num_workers, cache_dir  # in-memory tensors: workers are not used
        self.splits: dict[str, TokenWindows] = {}
        self.teacher: ZipfMarkovSource | None = None

    # ---- set-up -------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if self.source == "zipf_markov":
            self._setup_markov()
        elif self.source == "hub":
            self._setup_hub()
        else:
            self._setup_random()
        self.num_classes = self.vocab_size
        self.input_shape = (self.context_size,)

    def _setup_markov(self) -> None:
        self.teacher = ZipfMarkovSource(
            self.vocab_size, self.context_size, seed=self.data_seed, **self.teacher_kwargs
        )
        for offset, split in enumerate(SPLITS):
            # One generator per split, so a split does not change when another split's size does.
            generator = torch.Generator().manual_seed(self.data_seed * 1000 + offset + 1)
            num_sequences = -(-self.num_tokens[split] // self.sequence_length)
            sequences = self.teacher.sample(num_sequences, self.sequence_length, generator)
            self.splits[split] = windows_from_sequences(sequences, self.context_size)

    def _setup_hub(self) -> None:
        if not self.hub_id:
            raise UserError("data.source=hub needs data.hub_id (a HuggingFace text dataset id)")
        kwargs: dict[str, Any] = {"revision": self.hub_revision} if self.hub_revision else {}
        if self.hub_data_files:
            kwargs["data_files"] = self.hub_data_files
        dataset = load_hub_dataset(self.hub_id, cache_dir=self.cache_dir, **kwargs)
        texts = {split: dataset[self.split_names[split]][self.text_key] for split in SPLITS}
        vocabulary = build_vocabulary(texts["train"])
        self.vocabulary = vocabulary
        self.vocab_size = len(vocabulary)
        for split in SPLITS:
            self.splits[split] = windows_from_sequences(
                encode_stream(texts[split], vocabulary), self.context_size
            )

    def _setup_random(self) -> None:
        generator = torch.Generator().manual_seed(self.data_seed)
        for split in SPLITS:
            count = max(1, min(self.num_tokens[split], 256))
            x = torch.randint(self.vocab_size, (count, self.context_size), generator=generator)
            self.splits[split] = TokenWindows(
                x, torch.randint(self.vocab_size, (count,), generator=generator)
            )

    # ---- facts about the data -----------------------------------------------------------------------------
    @property
    def num_train(self) -> int:
        return len(self.splits["train"])

    @property
    def split_hash(self) -> str:
        """sha256 over the windows of every split."""
        digest = hashlib.sha256(f"{self.source}:{self.hub_id}:{self.vocab_size}".encode())
        for split in SPLITS:
            digest.update(self.splits[split].x.numpy().tobytes())
            digest.update(self.splits[split].y.numpy().tobytes())
        return digest.hexdigest()[:16]

    def oracle_logits(self, split: str | None = None) -> torch.Tensor:
        """The generating source's next-token log-probabilities on a split (zipf_markov only)."""
        if self.teacher is None:
            raise UserError("oracle_logits needs data.source=zipf_markov")
        return self.teacher.logits(self.splits[split or self.eval_split].x)

    # ---- loaders ------------------------------------------------------------------------------------------
    def _dataset(self, split: str) -> TensorBatchDataset:
        windows = self.splits[split]
        index = torch.arange(len(windows))
        return TensorBatchDataset({"x": windows.x, "y": windows.y, "y_clean": windows.y, "index": index})

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        dataset = self._dataset(split)
        generator = torch.Generator().manual_seed(self.seed)
        sampler = TensorBatchSampler(len(dataset), batch_size, shuffle, generator)
        return DataLoader(dataset, batch_size=None, sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        # Evaluated every epoch for learning curves; the last epoch is the reported number.
        return self._loader(self.eval_split, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
