"""A feed-forward neural language model (Bengio et al., 2003 style) as a registered backbone, ``zl_nplm``.

Embeds the ``context_size`` previous tokens, combines the embeddings (concatenation, or their mean: the
"bag of words" of the authors' One Billion Word example, adbrebs/factored_output_layer @494d1bb,
largesparse_theano_op/example.py line 39), applies optional hidden layers and ends in the D-way linear output
layer (with bias, example.py line 21) whose pre-activations the losses of this paper act on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from common.backbones.base import Backbone
from common.backbones.registry import register_backbone, reject_pretrained
from common.backbones.small import make_activation

COMBINE = ("concat", "mean")


class NeuralLanguageModel(Backbone):
    """Token windows ``(batch, context_size)`` -> features ``(batch, num_features)`` -> next-token logits."""

    def __init__(
        self,
        vocab_size: int,
        context_size: int,
        embedding_dim: int = 32,
        hidden_dims: Sequence[int] = (),
        num_classes: int = 0,
        combine: str = "concat",
        activation: str = "tanh",
        dropout: float = 0.0,
    ) -> None:
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
        if vocab_size < 2 or context_size < 1 or embedding_dim < 1:
            raise ValueError(
                f"need vocab_size >= 2, context_size >= 1, embedding_dim >= 1; got {vocab_size}, "
                f"{context_size}, {embedding_dim}"
            )
        width = embedding_dim * context_size if combine == "concat" else embedding_dim
        hidden = [int(h) for h in hidden_dims or ()]
        super().__init__(num_features=hidden[-1] if hidden else width, num_classes=num_classes)
        self.vocab_size, self.context_size, self.combine = int(vocab_size), int(context_size), combine
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        layers: list[nn.Module] = []
        for out in hidden:
            layers += [nn.Linear(width, out), make_activation(activation)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = out
        self.body = nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.context_size:
            raise ValueError(
                f"zl_nplm expects token windows of shape (batch, {self.context_size}); got {tuple(x.shape)}"
            )
        embedded = self.embedding(x.long())
        combined = embedded.flatten(1) if self.combine == "concat" else embedded.mean(dim=1)
        return self.body(combined)


@register_backbone("zl_nplm")
def build_nplm(
    *,
    num_classes: int = 0,
    in_chans: int = 1,
    pretrained: bool | str = False,
    context_size: int = 3,
    embedding_dim: int = 32,
    hidden_dims: Sequence[int] = (),
    combine: str = "concat",
    activation: str = "tanh",
    dropout: float = 0.0,
    vocab_size: int | None = None,
) -> NeuralLanguageModel:
    """``zl_nplm``: the input vocabulary defaults to the output one (``num_classes``); no ``in_chans``."""
    reject_pretrained("zl_nplm", pretrained)
    vocab = vocab_size if vocab_size is not None else num_classes
    if not vocab:
        raise ValueError("backbone 'zl_nplm' needs vocab_size (or num_classes, the same vocabulary)")
    return NeuralLanguageModel(
        vocab, context_size, embedding_dim, hidden_dims, num_classes, combine, activation, dropout
    )
