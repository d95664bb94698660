"""Tests of common.backbones: shapes, num_features, backward passes, registry and error messages.

Random initialisation only; nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from common.backbones import available_backbones, available_prefixes, build_backbone, register_backbone
from common.backbones import registry as backbone_registry

BATCH = 4


def _assert_backward(model: nn.Module, out: torch.Tensor) -> None:
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)


def _pooled(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(x), pre_logits=True)


SMALL_NETS: list[tuple[str, dict[str, Any], tuple[int, ...], int]] = [
    ("mlp", {"in_features": 64, "hidden_dims": [128, 32]}, (BATCH, 64), 32),
    ("mlp", {"in_features": 40, "hidden_dims": [16], "batch_norm": True, "dropout": 0.1}, (BATCH, 40), 16),
    ("mlp", {"in_features": 3 * 8 * 8, "activation": "gelu"}, (BATCH, 3, 8, 8), 128),
    ("cnn_small", {"in_chans": 1, "widths": [8, 16]}, (BATCH, 1, 8, 8), 16),
    ("cnn_small", {"in_chans": 1, "widths": [8, 16, 32], "image_size": 8}, (BATCH, 64), 32),
    ("cnn_small", {"in_chans": 1, "widths": [8, 16, 32]}, (BATCH, 28, 28), 32),
    ("cnn_small", {"in_chans": 3}, (BATCH, 3, 32, 32), 128),
    ("conv1d_small", {"in_chans": 1, "widths": [8, 16, 32]}, (BATCH, 40), 32),
    ("conv1d_small", {"in_chans": 2, "kernel_size": 3}, (BATCH, 2, 40), 128),
]


@pytest.mark.parametrize("num_classes", [0, 7])
@pytest.mark.parametrize(("name", "kwargs", "input_shape", "num_features"), SMALL_NETS)
def test_small_nets_shapes_and_backward(
    name: str, kwargs: dict[str, Any], input_shape: tuple[int, ...], num_features: int, num_classes: int
) -> None:
    torch.manual_seed(0)
    model = build_backbone(name, num_classes=num_classes, **kwargs)
    x = torch.randn(input_shape)
    out = model(x)
    assert model.num_features == num_features
    assert out.shape == (BATCH, num_classes or num_features)
    assert _pooled(model, x).shape == (BATCH, num_features)
    _assert_backward(model, out)


def test_mlp_without_hidden_layers_is_linear() -> None:
    model = build_backbone("mlp", num_classes=3, in_features=10, hidden_dims=[])
    assert model.num_features == 10
    assert model(torch.randn(BATCH, 10)).shape == (BATCH, 3)
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 1


def test_small_net_input_errors() -> None:
    with pytest.raises(ValueError, match="in_features"):
        build_backbone("mlp")
    with pytest.raises(ValueError, match="unknown activation"):
        build_backbone("mlp", in_features=4, activation="swishy")
    with pytest.raises(ValueError, match="in_chans=1"):
        build_backbone("conv1d_small")(torch.randn(BATCH, 40))  # default in_chans is 3
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_backbone("cnn_small", pretrained=True)
    with pytest.raises(ValueError, match="num_classes"):
        build_backbone("cnn_small", num_classes=-1)


def test_reset_classifier() -> None:
    model = build_backbone("cnn_small", num_classes=5, in_chans=1, widths=[8])
    x = torch.randn(BATCH, 1, 8, 8)
    model.reset_classifier(0)
    assert model(x).shape == (BATCH, 8)
    model.reset_classifier(2)
    assert model(x).shape == (BATCH, 2)
    assert isinstance(model.get_classifier(), nn.Linear)


def test_cifar_resnet18_stem_shapes_and_backward() -> None:
    torch.manual_seed(0)
    model = build_backbone("cifar_resnet18", num_classes=10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    x = torch.randn(2, 3, 16, 16)
    assert model.forward_features(x).shape == (2, 512, 2, 2)  # stride 8 overall (ImageNet stem: 32)
    out = model(x)
    assert model.num_features == 512 and out.shape == (2, 10)
    assert _pooled(model, x).shape == (2, 512)
    _assert_backward(model, out)


@pytest.mark.parametrize(
    ("name", "num_features"),
    [
        ("cifar_resnet18", 512),
        ("cifar_resnet34", 512),
        ("cifar_resnet50", 2048),
        ("cifar_preact_resnet18", 512),
    ],
)
def test_cifar_resnets_features(name: str, num_features: int) -> None:
    model = build_backbone(name, in_chans=1)
    with torch.no_grad():
        assert model.forward_features(torch.randn(2, 1, 16, 16)).shape == (2, num_features, 2, 2)
        out = model(torch.randn(2, 1, 16, 16))
    assert model.num_features == num_features and out.shape == (2, num_features)


def test_timm_prefix() -> None:
    model = build_backbone("timm:resnet18", num_classes=5, drop_rate=0.1)
    x = torch.randn(2, 3, 32, 32)
    assert model.num_features == 512
    assert model(x).shape == (2, 5)
    assert _pooled(model, x).shape == (2, 512)
    with pytest.raises(ValueError, match="unknown timm model"):
        build_backbone("timm:not_a_model_xyz")


def test_open_clip_rn50_features() -> None:
    model = build_backbone("open_clip:RN50")
    assert model.num_features == 1024
    assert not hasattr(model, "transformer")  # text tower dropped
    with torch.no_grad():
        out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 1024)
    assert len(model.preprocess_cfg["mean"]) == 3


def test_open_clip_head_and_kwargs() -> None:
    model = build_backbone("open_clip:ViT-S-32", num_classes=3, force_image_size=64)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert model.num_features == 384 and out.shape == (2, 3)
    assert _pooled(model, x).shape == (2, 384)
    _assert_backward(model, out)


def test_open_clip_errors() -> None:
    with pytest.raises(ValueError, match="unknown open_clip model"):
        build_backbone("open_clip:NotAModel")
    with pytest.raises(ValueError, match="in_chans=3"):
        build_backbone("open_clip:RN50", in_chans=1)
    with pytest.raises(ValueError, match="openai"):
        build_backbone("open_clip:RN50", pretrained=True)  # a tag is required; raised before any download


def test_unknown_name_lists_names_and_prefixes() -> None:
    with pytest.raises(ValueError) as info:
        build_backbone("resnet_cifar_9000")
    message = str(info.value)
    assert "resnet_cifar_9000" in message
    for name in available_backbones():
        assert name in message
    assert "'timm:<model_name>'" in message and "'open_clip:<model_name>'" in message
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("nope:resnet18")


def test_available_backbones() -> None:
    expected = {"mlp", "cnn_small", "conv1d_small", "cifar_resnet18", "cifar_resnet34", "cifar_resnet50"}
    assert expected | {"cifar_preact_resnet18"} <= set(available_backbones())
    assert available_backbones() == sorted(available_backbones())
    assert {"timm", "open_clip"} <= set(available_prefixes())


def test_register_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backbone_registry, "_REGISTRY", dict(backbone_registry._REGISTRY))

    class Tiny(nn.Module):
        def __init__(self, width: int, num_classes: int) -> None:
            super().__init__()
            self.num_features = width
            self.body = nn.Linear(2, width)
            self.head = nn.Linear(width, num_classes) if num_classes else nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    @register_backbone("tiny_test_net")
    def build_tiny(*, num_classes: int, in_chans: int, pretrained: bool | str, width: int = 6) -> nn.Module:
        return Tiny(width, num_classes)

    assert "tiny_test_net" in available_backbones()
    model = build_backbone("tiny_test_net", num_classes=2, width=5)
    assert model.num_features == 5 and model(torch.randn(3, 2)).shape == (3, 2)

    with pytest.raises(ValueError, match="already registered"):
        register_backbone("tiny_test_net")(build_tiny)
    with pytest.raises(ValueError, match="contain no ':'"):
        register_backbone("timm:mine")

    @register_backbone("no_features_net")
    def build_bad(**_: Any) -> nn.Module:
        return nn.Linear(2, 2)

    with pytest.raises(TypeError, match="num_features"):
        build_backbone("no_features_net")
