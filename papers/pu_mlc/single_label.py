"""PU-MLC's loss on a single-label PU task (one class: positive vs the rest), for the cross-paper `upu` table.

The binary classifier's score s = logit_1 - logit_0 is the one class's logit; labelled positives are the
observed positives and every other example is unlabelled, as in the multi-label loss's per-class term. The
loss is the same code as the multi-label method (`pu_mlc_variational_loss` with adaptive temperature and
re-balance factor, plus the two-half MixUp term); like VPU it needs no class prior."""

from __future__ import annotations

from typing import Any

import torch

from common.data.weak_labels import UNKNOWN
from common.lit.pu import PUModule
from common.registry import register_method
from papers.pu_mlc.loss import pu_mlc_variational_loss
from papers.pu_mlc.module import two_half_mixup_loss


def single_label_observed(y: torch.Tensor) -> torch.Tensor:
    """(N, 1) multi-label observation of a PU batch's labels: 1 for a labelled positive, else unknown."""
    return torch.where(y == 1, torch.ones_like(y), torch.full_like(y, UNKNOWN))[:, None]


@register_method("pu_mlc_single_label")
class PUMLCSingleLabelModule(PUModule):
    def __init__(
        self,
        *args: Any,
        alpha: float = 1.0,
        gamma: float = 0.55,
        mix_alpha: float = 0.3,
        mixup: bool = True,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.alpha, self.gamma, self.mix_alpha, self.mixup = (
            float(alpha),
            float(gamma),
            float(mix_alpha),
            mixup,
        )

    def on_fit_start(self) -> None:  # no class prior
        pass

    def compute_loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        scores = self.score(logits)[:, None]
        observed = single_label_observed(batch["y"])
        loss = pu_mlc_variational_loss(scores, observed, alpha=self.alpha, gamma=self.gamma)
        if self.mixup:
            loss = loss + two_half_mixup_loss(
                batch["x"], scores, observed, lambda x: self.score(self(x))[:, None], self.mix_alpha
            )
        return loss
