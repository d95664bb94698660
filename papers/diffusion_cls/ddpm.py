"""The unsupervised pre-training stage of the mini reproduction: a DDPM (epsilon prediction, Ho et al. 2020)
trained on the training images without their labels. The paper instead uses the released ImageNet ADM
checkpoint (openai/guided-diffusion 256x256_diffusion_uncond.pt)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from common.errors import NonFiniteLossError
from papers.diffusion_cls.unet import prepare_inputs


class DDPMModule(L.LightningModule):
    """Simple DDPM loss || eps - eps_theta(x_t, t) ||^2 with t uniform over the scheduler's steps."""

    def __init__(
        self,
        unet: nn.Module,
        scheduler: Any,
        *,
        sample_size: int,
        input_scale: float,
        input_shift: float,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.unet, self.noise_scheduler = unet, scheduler
        self.sample_size, self.input_scale, self.input_shift = sample_size, input_scale, input_shift
        self.lr, self.weight_decay = lr, weight_decay
        # The loss of every step; `curves` so that checkpoints and the stored stage keep it.
        self.curves: dict[str, list[float]] = {"ddpm/loss": []}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x0 = prepare_inputs(batch["x"], self.sample_size, self.input_scale, self.input_shift)
        noise = torch.randn_like(x0)
        steps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (len(x0),), device=x0.device
        )
        prediction = self.unet(self.noise_scheduler.add_noise(x0, noise, steps), steps).sample
        loss = F.mse_loss(prediction, noise)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"DDPM loss became {loss.item()} at step {self.global_step}")
        self.curves["ddpm/loss"].append(float(loss.detach()))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.unet.parameters(), lr=self.lr, weight_decay=self.weight_decay)
