"""The backbone registry and :func:`build_backbone`, the one entry point for every backbone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from torch import nn


class BackboneBuilder(Protocol):
    """Signature of a registered builder."""

    def __call__(
        self, *, num_classes: int, in_chans: int, pretrained: bool | str, **kwargs: Any
    ) -> nn.Module: ...


_REGISTRY: dict[str, BackboneBuilder] = {}
_PREFIXES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Decorator registering ``builder(*, num_classes, in_chans, pretrained, **kwargs)`` under ``name``.

    The builder must return a module exposing ``num_features``; names may not contain ``:``
    (reserved for the ``timm:`` and ``open_clip:`` prefixes) and may be registered once.
    """
    if not name or ":" in name:
        raise ValueError(f"invalid backbone name {name!r}: it must be non-empty and contain no ':'")

    def decorator(builder: BackboneBuilder) -> BackboneBuilder:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return decorator


def register_backbone_prefix(prefix: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder(model_name, *, num_classes, in_chans, pretrained, **kwargs)`` for
    names of the form ``<prefix>:<model_name>``."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if prefix in _PREFIXES:
            raise ValueError(f"backbone prefix {prefix!r} is already registered")
        _PREFIXES[prefix] = builder
        return builder

    return decorator


def available_backbones() -> list[str]:
    """Registered backbone names, sorted (prefixed families such as ``timm:<model_name>`` not included)."""
    return sorted(_REGISTRY)


def available_prefixes() -> list[str]:
    """Prefixes accepted as ``<prefix>:<model_name>``, e.g. ``timm`` and ``open_clip``."""
    return sorted(_PREFIXES)


def _unknown_name_message(name: str) -> str:
    prefixes = ", ".join(f"'{p}:<model_name>'" for p in available_prefixes())
    return (
        f"unknown backbone {name!r}. Available: {', '.join(available_backbones())}; "
        f"or one of the prefixed families {prefixes} (e.g. 'timm:resnet18', 'open_clip:ViT-B-32')."
    )


def build_backbone(
    name: str,
    *,
    num_classes: int = 0,
    in_chans: int = 3,
    pretrained: bool | str = False,
    **kwargs: Any,
) -> nn.Module:
    """Build the backbone called ``name``.

    The module maps a batch to features of size ``module.num_features`` when ``num_classes == 0``, and to
    ``num_classes`` logits (a linear head on those features) otherwise. ``kwargs`` go to the builder
    (e.g. ``in_features``/``hidden_dims`` for ``mlp``, or timm/open_clip keyword arguments).
    Pretrained weights come from the HuggingFace hub (or open_clip's download cache): offline they must
    already be in the cache (``HF_HUB_CACHE``); ``pretrained`` is a bool, or a tag string for open_clip.
    """
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    if name in _REGISTRY:
        model = _REGISTRY[name](num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kwargs)
    else:
        prefix, sep, model_name = name.partition(":")
        if not sep or prefix not in _PREFIXES or not model_name:
            raise ValueError(_unknown_name_message(name))
        model = _PREFIXES[prefix](
            model_name, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kwargs
        )
    if not isinstance(getattr(model, "num_features", None), int):
        raise TypeError(f"backbone builder for {name!r} returned a module without an int `num_features`")
    return model


def reject_pretrained(name: str, pretrained: bool | str) -> None:
    """Raise for backbones that have no pretrained weights."""
    if pretrained:
        raise ValueError(f"backbone {name!r} has no pretrained weights; use pretrained=False")
