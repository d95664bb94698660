"""L_inf-bounded protective perturbations of images in [0, 1]: uniform random noise, error-minimising noise
(Huang et al., ICLR 2021, sample-wise min-min) and Bayes-error maximisation by projected gradient ascent
(BEO).

Each gives perturbed inputs `x + delta` with |delta|_inf <= eps and values clamped to [0, 1]. Error-minimising
noise trains a model as it goes, so it is a LightningModule (a fit that checkpoints and resumes); BEO's ascent
moves only the inputs (signed steps, no optimiser state) and stays a plain loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from papers.unlearnable_bayes.bayes_error import kernel_bayes_error, max_abs_normalise


def project(x: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """The perturbation clipped to the L_inf ball of radius `eps` and to the valid pixel range [0, 1]."""
    delta = delta.clamp(-eps, eps)
    return (x + delta).clamp(0, 1) - x


def random_noise(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """`x` plus i.i.d. uniform noise in [-eps, eps] (the random-noise baseline of Huang et al. 2021)."""
    noise = torch.rand(x.shape, generator=generator).to(
        x.device
    )  # drawn on the CPU: same noise on any device
    return x + project(x, (2 * noise - 1) * eps, eps)


@dataclass
class PGAResult:
    """Perturbed inputs and the estimator's value before every step and after the last one."""

    x: torch.Tensor
    history: list[float] = field(default_factory=list)


def bayes_error_pga(
    x: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    eps: float,
    steps: int,
    step_size: float,
    sigma: float,
    features: Callable[[torch.Tensor], torch.Tensor] | None = None,
    normalise: bool = True,
    batch_size: int | None = None,
    init: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> PGAResult:
    """BEO: maximise the kernel Bayes-error estimate of `(features(x + delta), labels)` over the L_inf ball by
    signed projected gradient ascent, delta <- Proj(delta + step_size * sign(grad)).

    `features` maps inputs to the space of the estimator (None: the inputs themselves), scaled by their max
    |.| when `normalise` (as the official code does); `batch_size` evaluates the estimator on random batches
    of that size (None: the whole set at once); `init` is a starting perturbation (an earlier round's)."""
    delta = torch.zeros_like(x) if init is None else project(x, init.clone(), eps)
    size = len(x) if batch_size is None else min(int(batch_size), len(x))
    history: list[float] = []
    for _ in range(steps + 1):
        order = torch.randperm(len(x), generator=generator).to(x.device)
        total, count = 0.0, 0
        last = len(history) == steps
        for index in order.split(size):
            if len(index) < 2:  # one example has no neighbours
                continue
            part = delta[index].detach().requires_grad_(not last)
            with torch.set_grad_enabled(not last):
                inputs = x[index] + part
                embedded = inputs if features is None else features(inputs)
                if normalise:
                    embedded = max_abs_normalise(embedded.flatten(1))
                value = kernel_bayes_error(embedded, labels[index], num_classes, sigma)
            total, count = total + float(value.detach()) * len(index), count + len(index)
            if not last:
                (grad,) = torch.autograd.grad(value, part)
                delta[index] = project(x[index], part.detach() + step_size * grad.sign(), eps)
        history.append(total / max(count, 1))
    return PGAResult(x=(x + delta).detach(), history=history)


class ErrorMinimisingNoise(L.LightningModule):
    """Sample-wise error-minimising noise (Huang et al. 2021, official HanxunH/Unlearnable-Examples
    perturbation.py, min-min) as a Lightning fit, one epoch per round: `train_steps` SGD steps of `model` on
    the perturbed data, then `pgd_steps` signed descent steps of every example's noise on the cross entropy.
    The fit stops once the model's error on the perturbed data is below `stop_error`; the Trainer's
    `max_epochs` is the most rounds. Fit it on `one_batch_per_round()`.

    The noise is the buffer `delta`; checkpoints also hold the batch generator's state, so a resumed fit
    continues as an uninterrupted one. `curves["train_error"]` is the model's error after every round."""

    def __init__(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        model: nn.Module,
        *,
        eps: float,
        step_size: float,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        pgd_steps: int = 20,
        train_steps: int = 10,
        batch_size: int = 512,
        stop_error: float = 0.01,
        generator_seed: int = 0,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False  # a round is SGD steps of the model and PGD steps of the noise
        self.x, self.labels = x, labels  # given at every construction: not part of the checkpoints
        self.model = model
        self.register_buffer("delta", torch.zeros_like(x))
        self.eps, self.step_size = eps, step_size
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.pgd_steps, self.train_steps, self.batch_size = pgd_steps, train_steps, batch_size
        self.stop_error = stop_error
        self.generator = torch.Generator().manual_seed(generator_seed)
        self.curves: dict[str, list[float]] = {"train_error": []}

    @staticmethod
    def one_batch_per_round() -> DataLoader:
        """The training loader: one placeholder batch, so that an epoch is one round. Its own generator keeps
        the loader's per-epoch seed draw off the global torch state (the rounds draw nothing from it)."""
        return DataLoader([0], generator=torch.Generator())

    @property
    def perturbed(self) -> torch.Tensor:
        """`x + delta` (the protected inputs)."""
        return (self.x + self.delta.to(self.x.device)).detach()

    @property
    def rounds(self) -> int:
        return len(self.curves["train_error"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            self.model.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )

    def on_fit_start(self) -> None:
        self.x, self.labels = self.x.to(self.device), self.labels.to(self.device)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, labels, delta = self.x, self.labels, self.delta
        optimizer = self.optimizers()
        self.model.train()
        for _ in range(self.train_steps):
            index = torch.randint(len(x), (min(self.batch_size, len(x)),), generator=self.generator)
            index = index.to(x.device)
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(F.cross_entropy(self.model(x[index] + delta[index]), labels[index]))
            optimizer.step()
        self.model.eval()
        wrong = 0
        for index in torch.arange(len(x), device=x.device).split(self.batch_size):
            part = delta[index]
            for _ in range(self.pgd_steps):
                part = part.detach().requires_grad_(True)
                loss = F.cross_entropy(self.model(x[index] + part), labels[index])
                (grad,) = torch.autograd.grad(loss, part)
                part = project(x[index], part.detach() - self.step_size * grad.sign(), self.eps)
            delta[index] = part.detach()
            with torch.no_grad():
                wrong += int((self.model(x[index] + delta[index]).argmax(1) != labels[index]).sum())
        error = wrong / len(x)
        self.curves["train_error"].append(error)
        if error < self.stop_error:
            self.trainer.should_stop = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["batch_generator"] = self.generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.generator.set_state(checkpoint["batch_generator"])
