"""``timm:<model_name>`` backbones and the CIFAR ResNets built on timm's ResNet / ResNetV2."""

from __future__ import annotations

from typing import Any

from torch import nn

from common.backbones.registry import register_backbone, register_backbone_prefix

PRETRAINED_HINT = (
    "Pretrained weights are downloaded from the HuggingFace hub; offline, they must already be in the "
    "hub cache (HF_HUB_CACHE, default ~/.cache/huggingface/hub) and HF_HUB_OFFLINE=1 may be set."
)


def create_timm_model(
    model_name: str, *, num_classes: int, in_chans: int, pretrained: bool, **kwargs: Any
) -> nn.Module:
    """``timm.create_model`` with errors that say what to do (unknown name, weights not cached)."""
    import timm

    if not isinstance(pretrained, bool):
        raise ValueError(
            f"timm backbones take pretrained=True/False, got {pretrained!r}; choose a weight tag through "
            "the model name instead, e.g. 'timm:resnet18.a1_in1k'"
        )
    is_external = model_name.startswith(("hf-hub:", "hf_hub:", "local-dir:"))
    if not is_external and not timm.is_model(model_name):
        raise ValueError(
            f"unknown timm model {model_name!r}; list candidates with timm.list_models('*{model_name}*')"
        )
    try:
        model = timm.create_model(
            model_name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs
        )
    except Exception as err:  # download / cache failures surface as many exception types
        if pretrained:
            raise RuntimeError(
                f"could not load pretrained timm model {model_name!r}: {err}. {PRETRAINED_HINT}"
            ) from err
        raise
    return model


@register_backbone_prefix("timm")
def build_timm(
    model_name: str, *, num_classes: int = 0, in_chans: int = 3, pretrained: bool = False, **kwargs: Any
) -> nn.Module:
    """Any timm model; it exposes ``num_features`` and timm's ``forward_features``/``forward_head``."""
    return create_timm_model(
        model_name, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kwargs
    )


def _cifar_stem_conv(in_chans: int, out_chans: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_chans, out_chans, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _rescale_feature_info(model: nn.Module, stem_module: str) -> None:
    """Update timm's ``feature_info`` reductions after removing the stride-2 stem conv and the max-pool."""
    for info in getattr(model, "feature_info", []):
        factor = 2 if info["module"] == stem_module else 4
        info["reduction"] = max(1, info["reduction"] // factor)


def cifar_resnet(
    depth_name: str, *, num_classes: int, in_chans: int, pretrained: bool, **kwargs: Any
) -> nn.Module:
    """timm ResNet with the CIFAR stem: one 3x3 stride-1 conv (64 channels), no max-pool.

    timm's ``stem_type`` options ('', 'deep', 'deep_tiered') all downsample by 4, so the 7x7 stride-2
    ``conv1`` is replaced and ``maxpool`` becomes ``nn.Identity``; BN, ReLU and the stages are timm's.
    With ``pretrained=True`` every ImageNet weight but the new stem conv is loaded.
    """
    model = create_timm_model(
        depth_name, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kwargs
    )
    model.conv1 = _cifar_stem_conv(in_chans, model.conv1.out_channels)
    model.maxpool = nn.Identity()
    _rescale_feature_info(model, "act1")
    return model


@register_backbone("cifar_resnet18")
def build_cifar_resnet18(
    *, num_classes: int = 0, in_chans: int = 3, pretrained: bool = False, **kwargs: Any
) -> nn.Module:
    """CIFAR ResNet-18 (11.2M parameters, 512 features)."""
    return cifar_resnet(
        "resnet18", num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kwargs
    )


@register_backbone("cifar_resnet34")
def build_cifar_resnet34(
    *, num_classes: int = 0, in_chans: int = 3, pretrained: bool = False, **kwargs: Any
) -> nn.Module:
    """CIFAR ResNet-34 (21.3M parameters, 512 features)."""
    return cifar_resnet(
        "resnet34", num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kwargs
    )


@register_backbone("cifar_resnet50")
def build_cifar_resnet50(
    *, num_classes: int = 0, in_chans: int = 3, pretrained: bool = False, **kwargs: Any
) -> nn.Module:
    """CIFAR ResNet-50 (23.5M parameters, 2048 features)."""
    return cifar_resnet(
        "resnet50", num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kwargs
    )


@register_backbone("cifar_preact_resnet18")
def build_cifar_preact_resnet18(
    *, num_classes: int = 0, in_chans: int = 3, pretrained: bool = False, **kwargs: Any
) -> nn.Module:
    """CIFAR pre-activation ResNet-18 on timm's ``resnetv2_18`` (BatchNorm, plain convs, basic blocks).

    The stem becomes one 3x3 stride-1 conv with no pooling. Like He et al. (2016), and unlike some CIFAR
    codebases (e.g. kuangliu/pytorch-cifar), it ends with a BN-ReLU before global pooling.
    """
    model = create_timm_model(
        "resnetv2_18", num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kwargs
    )
    model.stem.conv = _cifar_stem_conv(in_chans, model.stem.conv.out_channels)
    model.stem.pool = nn.Identity()
    _rescale_feature_info(model, "stem.conv")
    return model
