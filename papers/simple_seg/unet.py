"""SimPLe's U-Net (Abner228/SmileCode @52b1944, SimPLe/net.py), for 2D or 3D inputs.

No installed package has a plain segmentation U-Net that also returns its last decoder features: MONAI and
segmentation-models-pytorch are not dependencies, diffusers' UNet2DModel is a timestep-conditioned diffusion
network and timm has encoders only. So this is the official architecture, written for ``spatial_dims`` 2 or 3:
  * encoder: DoubleConv blocks (conv -> LeakyReLU(0.01) -> InstanceNorm(affine), twice); the first at full
    resolution (kernel 1x3x3 in 3D: in-plane only), each later one starts with a stride-2 conv;
  * decoder: ConvTranspose (kernel 2, stride 2, no bias), concatenation with the skip, DoubleConv;
  * a bias-free 1x1 conv to the classes. ``forward`` returns ``(logits, features)``, the features being the
    last decoder block's output (what SimPLe's contrastive loss and propagation use).
Official widths: 16, 32, 64, 128, 256 (five levels, total stride 16).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["DoubleConv", "SegUNet"]


def _layers(spatial_dims: int) -> tuple[type[nn.Module], type[nn.Module], type[nn.Module]]:
    if spatial_dims == 2:
        return nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d
    if spatial_dims == 3:
        return nn.Conv3d, nn.ConvTranspose3d, nn.InstanceNorm3d
    raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


class DoubleConv(nn.Sequential):
    """(conv -> LeakyReLU -> InstanceNorm) x 2; the first conv may stride, the second never does."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        spatial_dims: int = 2,
        stride: int = 1,
        in_plane_first: bool = False,
    ) -> None:
        conv, _, norm = _layers(spatial_dims)
        layers: list[nn.Module] = []
        for cin, step in ((in_channels, stride), (out_channels, 1)):
            # The official first block convolves in-plane only in 3D (kernel 1x3x3, padding 0x1x1).
            if in_plane_first and spatial_dims == 3:
                kernel, padding = (1, 3, 3), (0, 1, 1)
            else:
                kernel, padding = 3, 1
            layers += [
                conv(cin, out_channels, kernel, step, padding),
                nn.LeakyReLU(0.01, inplace=True),
                norm(out_channels, eps=1e-5, affine=True, track_running_stats=False),
            ]
        super().__init__(*layers)


class SegUNet(nn.Module):
    """U-Net with ``len(channels)`` levels; inputs must be divisible by ``2 ** (len(channels) - 1)``."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if len(channels) < 2:
            raise ValueError("the U-Net needs at least two levels")
        _, transpose, _ = _layers(spatial_dims)
        conv, _, _ = _layers(spatial_dims)
        self.total_stride = 2 ** (len(channels) - 1)
        self.encoder = nn.ModuleList(
            [DoubleConv(in_channels, channels[0], spatial_dims=spatial_dims, in_plane_first=True)]
            + [
                DoubleConv(cin, cout, spatial_dims=spatial_dims, stride=2)
                for cin, cout in zip(channels[:-1], channels[1:], strict=True)
            ]
        )
        reversed_channels = channels[::-1]
        self.upsample = nn.ModuleList(
            [
                transpose(cin, cout, kernel_size=2, stride=2, bias=False)
                for cin, cout in zip(reversed_channels[:-1], reversed_channels[1:], strict=True)
            ]
        )
        self.decoder = nn.ModuleList(
            [DoubleConv(2 * cout, cout, spatial_dims=spatial_dims) for cout in reversed_channels[1:]]
        )
        self.head = conv(channels[0], num_classes, kernel_size=1, bias=False)
        self.num_features = channels[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if any(size % self.total_stride for size in x.shape[2:]):
            raise ValueError(
                f"input size {tuple(x.shape[2:])} is not divisible by the U-Net's stride {self.total_stride}"
            )
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        for up, block, skip in zip(self.upsample, self.decoder, reversed(skips[:-1]), strict=True):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.head(x), x
