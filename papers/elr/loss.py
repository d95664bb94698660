"""Early-learning regularization (ELR) loss of Liu et al., NeurIPS 2020 (arXiv 2007.00151).

Loss for a mini-batch B of examples with indices i, logits z_i and noisy labels y_i:

    L = CE(z, y) + lam * mean_{i in B} log(1 - <t_i, p_i>),     p_i = clamp(softmax(z_i), 1e-4, 1 - 1e-4)

where t_i is a per-example running target (temporal ensembling of the model's own predictions):

    t_i <- beta * t_i + (1 - beta) * q_i,    q_i = stop_grad(p_i) / sum_c stop_grad(p_i)_c .

Behaviour follows the official implementation, shengliu66/ELR @ 934af53, file ELR/model/loss.py:
  line 17  targets start at zeros (so after the first visit t_i = (1 - beta) q_i, not a distribution);
  line 22  softmax of the logits;
  line 23  clamp to [1e-4, 1 - 1e-4]; the clamped (not renormalised) p_i is what enters <t_i, p_i>;
  line 24  detached copy of the clamped probabilities;
  line 25  target EMA on the detached, clamped, row-renormalised probabilities -- this happens FIRST;
  line 26  cross entropy on the raw logits (batch mean);
  line 27  regulariser with the *just updated* t_i (update, then loss), batch mean;
  line 28  CE + lambda * regulariser.
The trainer (ELR/trainer/trainer.py lines 72-86) passes the dataset indices of the batch on every training
step, then calls backward and the optimizer step; the loss is not called on validation/test batches
(those use plain cross entropy, ELR/train.py line 76). Use plain cross entropy for evaluation here too:
every call of ``ELRLoss.forward`` updates the targets of the given indices.

Gradient (Lemma 2 of the paper; exact wherever the clamp is inactive): for one example, with
s = <p, t>, the regulariser log(1 - s) has gradient w.r.t. the logits

    d/dz_c log(1 - <p, t>) = p_c (s - t_c) / (1 - s) = p_c / (1 - s) * sum_k (t_k - t_c) p_k ,

so the full per-example gradient of the loss is (p - y + lam * g) / |B| with g_c the expression above.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Probability clamp of the official code (ELR/model/loss.py line 23).
PROB_CLAMP: float = 1e-4


def elr_regularizer(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Batch mean of log(1 - <t_i, p_i>) for probabilities ``probs`` and targets ``targets`` (both N x C).

    Pure function: no clamping, no target update. Gradients flow into whichever inputs require them
    (``ELRLoss`` passes detached targets, so only ``probs`` receives gradient).
    """
    if probs.ndim != 2 or probs.shape != targets.shape:
        raise ValueError(
            f"elr_regularizer expects probs and targets of the same shape (N, C); "
            f"got probs {tuple(probs.shape)} and targets {tuple(targets.shape)}"
        )
    inner = (probs * targets).sum(dim=1)
    return torch.log1p(-inner).mean()


class ELRLoss(nn.Module):
    """Cross entropy plus the early-learning regulariser, with per-example temporal-ensembling targets.

    Args:
        num_examples: size of the training set; ``index`` values passed to ``forward`` lie in
            ``[0, num_examples)``.
        num_classes: number of classes C.
        beta: momentum of the target moving average (official configs: 0.7 CIFAR-10 symmetric,
            0.9 CIFAR-10 asymmetric and CIFAR-100).
        lam: weight lambda of the regulariser (official configs: 3 CIFAR-10 symmetric, 1 CIFAR-10
            asymmetric, 7 CIFAR-100).

    The targets are a persistent buffer ``target`` (num_examples x num_classes, zeros at start), so they
    move with ``.to(device)`` and are saved in checkpoints.
    """

    target: torch.Tensor

    def __init__(self, num_examples: int, num_classes: int, beta: float = 0.7, lam: float = 3.0) -> None:
        super().__init__()
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        if lam < 0.0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        self.num_examples = int(num_examples)
        self.num_classes = int(num_classes)
        self.beta = float(beta)
        self.lam = float(lam)
        self.register_buffer("target", torch.zeros(self.num_examples, self.num_classes))

    def extra_repr(self) -> str:
        return (
            f"num_examples={self.num_examples}, num_classes={self.num_classes}, "
            f"beta={self.beta}, lam={self.lam}"
        )

    def _check_inputs(self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> None:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"ELRLoss expects logits of shape (batch, {self.num_classes}); got {tuple(logits.shape)}"
            )
        batch = logits.shape[0]
        if labels.shape != (batch,):
            raise ValueError(f"labels must have shape ({batch},) to match logits; got {tuple(labels.shape)}")
        if index.shape != (batch,):
            raise ValueError(f"index must have shape ({batch},) to match logits; got {tuple(index.shape)}")
        if index.dtype.is_floating_point or index.dtype == torch.bool:
            raise ValueError(f"index must be an integer tensor of dataset positions; got dtype {index.dtype}")
        if batch and (int(index.min()) < 0 or int(index.max()) >= self.num_examples):
            raise IndexError(
                f"index values must lie in [0, {self.num_examples}); got min {int(index.min())}, "
                f"max {int(index.max())}. Pass the position of each example in the training set."
            )

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Update the targets of ``index`` with this batch's predictions, then return CE + lam * ELR.

        Args:
            logits: (B, C) raw model outputs.
            labels: (B,) observed (possibly noisy) class labels.
            index: (B,) positions of the examples in the training set (distinct within a batch).
        """
        self._check_inputs(logits, labels, index)
        index = index.to(device=self.target.device, dtype=torch.long)
        # At least float32 for the regulariser (the official code runs in fp32), also under autocast.
        compute_dtype = torch.promote_types(logits.dtype, torch.float32)
        probs = F.softmax(logits.to(compute_dtype), dim=1).clamp(PROB_CLAMP, 1.0 - PROB_CLAMP)
        with torch.no_grad():
            detached = probs.detach()
            normalised = detached / detached.sum(dim=1, keepdim=True)
            updated = self.beta * self.target[index] + (1.0 - self.beta) * normalised.to(self.target.dtype)
            self.target[index] = updated  # update first (official loss.py line 25) ...
            targets = self.target[index]
        cross_entropy = F.cross_entropy(logits, labels)
        # ... then the regulariser uses the just-updated targets (official loss.py line 27).
        regularizer = elr_regularizer(probs, targets.to(probs.dtype))
        return cross_entropy + self.lam * regularizer
