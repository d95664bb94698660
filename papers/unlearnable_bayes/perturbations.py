"""L_inf-bounded protective perturbations of images in [0, 1]: uniform random noise, error-minimising noise
(Huang et al., ICLR 2021, sample-wise min-min) and Bayes-error maximisation by projected gradient ascent
(BEO).

Every function returns perturbed inputs `x + delta` with |delta|_inf <= eps and values clamped to [0, 1]."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

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


@dataclass
class ErrorMinimisingResult:
    x: torch.Tensor
    rounds: int
    train_error: float


def error_minimising_noise(
    x: torch.Tensor,
    labels: torch.Tensor,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    eps: float,
    step_size: float,
    pgd_steps: int = 20,
    train_steps: int = 10,
    batch_size: int = 512,
    stop_error: float = 0.01,
    max_rounds: int = 100,
    generator: torch.Generator | None = None,
) -> ErrorMinimisingResult:
    """Sample-wise error-minimising noise (Huang et al. 2021, official HanxunH/Unlearnable-Examples
    perturbation.py, min-min): alternate `train_steps` SGD steps of `model` on the perturbed data with
    `pgd_steps` signed descent steps of every example's noise on the cross entropy, until the model's error on
    the perturbed data is below `stop_error` (or `max_rounds` rounds)."""
    delta = torch.zeros_like(x)
    error, rounds = 1.0, 0
    while rounds < max_rounds:
        rounds += 1
        model.train()
        for _ in range(train_steps):
            index = torch.randint(len(x), (min(batch_size, len(x)),), generator=generator).to(x.device)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[index] + delta[index]), labels[index]).backward()
            optimizer.step()
        model.eval()
        wrong = 0
        for index in torch.arange(len(x), device=x.device).split(batch_size):
            part = delta[index]
            for _ in range(pgd_steps):
                part = part.detach().requires_grad_(True)
                loss = F.cross_entropy(model(x[index] + part), labels[index])
                (grad,) = torch.autograd.grad(loss, part)
                part = project(x[index], part.detach() - step_size * grad.sign(), eps)
            delta[index] = part.detach()
            with torch.no_grad():
                wrong += int((model(x[index] + delta[index]).argmax(1) != labels[index]).sum())
        error = wrong / len(x)
        if error < stop_error:
            break
    model.train()
    return ErrorMinimisingResult(x=(x + delta).detach(), rounds=rounds, train_error=error)
