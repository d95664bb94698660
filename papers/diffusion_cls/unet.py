"""The frozen diffusion U-Net of Mukhopadhyay et al. (arXiv 2307.08702) as a feature extractor.

A feature is the output of one U-Net block for the noised input x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
(``DDPMScheduler.add_noise``), from one forward pass at step t, average-pooled to a small square map. As in
the official diffssl ``DiffSSLModelFeedbackFusion.forward`` (soumik-kanad/diffssl @ cc2ac30), the noise is
drawn once per image and step and the U-Net is never updated. Blocks are named by their diffusers module
path (``down_blocks.0``, ``mid_block``, ``up_blocks.-1``; negative indices count from the end)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("pnu.diffusion_cls")


def build_unet(model: dict[str, Any], *, load_pretrained: bool = True) -> nn.Module:
    """``diffusers.UNet2DModel``: the hub checkpoint ``model['pretrained']`` when set and ``load_pretrained``,
    otherwise the architecture ``model['unet']`` with a fresh (seeded by the caller) initialisation."""
    from diffusers import UNet2DModel

    pretrained = model.get("pretrained")
    if pretrained and load_pretrained:
        try:
            return UNet2DModel.from_pretrained(pretrained, subfolder=model.get("subfolder"))
        except Exception as err:  # hub and cache failures surface as many exception types
            raise RuntimeError(
                f"could not load the diffusion U-Net {pretrained!r}: {err}. Weights come from the "
                "HuggingFace hub; offline they must already be in the hub cache (HF_HUB_CACHE)."
            ) from err
    return UNet2DModel(**model["unet"])


def build_scheduler(model: dict[str, Any]) -> Any:
    """``diffusers.DDPMScheduler`` with the model config's ``scheduler`` arguments (the forward process)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**model.get("scheduler", {}))


def resolve_block(unet: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path; integer parts index module lists and may be negative."""
    module: Any = unet
    for part in path.split("."):
        if part.lstrip("-").isdigit():
            if not isinstance(module, nn.ModuleList):
                raise ValueError(f"block path {path!r}: {part!r} indexes a {type(module).__name__}")
            module = module[int(part)]
        elif hasattr(module, part):
            module = getattr(module, part)
        else:
            raise ValueError(
                f"block path {path!r}: no {part!r}; top-level blocks are down_blocks.<i>, mid_block, "
                "up_blocks.<i>"
            )
    return module


def prepare_inputs(x: torch.Tensor, sample_size: int, scale: float, shift: float) -> torch.Tensor:
    """Images as the U-Net expects them: bilinear resize to ``sample_size`` and ``x * scale + shift``."""
    if tuple(x.shape[-2:]) != (sample_size, sample_size):
        x = F.interpolate(x, size=(sample_size, sample_size), mode="bilinear", align_corners=False)
    return x * scale + shift


class BlockFeatures:
    """Forward hooks that keep the pooled outputs of named blocks during one U-Net forward."""

    def __init__(self, unet: nn.Module, blocks: Sequence[str], pool_size: int) -> None:
        self.pool_size = int(pool_size)
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [resolve_block(unet, b).register_forward_hook(self._hook(b)) for b in blocks]

    def _hook(self, name: str) -> Any:
        def keep(module: nn.Module, inputs: Any, output: Any) -> None:
            # diffusers down blocks return (hidden_states, residuals); the hidden states are the block output
            hidden = output[0] if isinstance(output, tuple) else output
            size = min(self.pool_size, hidden.shape[-1])
            self.outputs[name] = F.adaptive_avg_pool2d(hidden.float(), size)

        return keep

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@torch.no_grad()
def noised_block_features(
    unet: nn.Module,
    scheduler: Any,
    batches: Iterable[torch.Tensor],
    *,
    timestep: int,
    blocks: Sequence[str],
    pool_size: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Pooled block outputs (N x C x p x p, on the CPU) of prepared image batches noised to ``timestep``.

    The noise comes from ``generator`` (a CPU generator, so features do not depend on the device)."""
    if not 0 <= timestep < scheduler.config.num_train_timesteps:
        raise ValueError(f"timestep {timestep} outside [0, {scheduler.config.num_train_timesteps})")
    unet.eval()
    hooks = BlockFeatures(unet, blocks, pool_size)
    collected: dict[str, list[torch.Tensor]] = {b: [] for b in blocks}
    try:
        for x0 in batches:
            noise = torch.randn(x0.shape, generator=generator).to(device)
            x0 = x0.to(device)
            steps = torch.full((len(x0),), int(timestep), dtype=torch.long, device=device)
            unet(scheduler.add_noise(x0, noise, steps), steps)
            for b in blocks:
                collected[b].append(hooks.outputs[b].cpu())
    finally:
        hooks.remove()
    return {b: torch.cat(parts) for b, parts in collected.items()}
