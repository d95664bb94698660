"""``open_clip:<model_name>``: the image tower of an open_clip model, with an optional linear head."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from common.backbones.base import Backbone
from common.backbones.registry import register_backbone_prefix


class OpenCLIPImageTower(Backbone):
    """An open_clip image tower; features are its (projected) image embeddings, ``num_features`` wide.

    ``preprocess_cfg`` holds the tower's expected input size, mean and std (open_clip's preprocessing).
    """

    def __init__(self, visual: nn.Module, embed_dim: int, num_classes: int = 0, model_name: str = "") -> None:
        super().__init__(num_features=embed_dim, num_classes=num_classes)
        self.visual = visual
        self.model_name = model_name
        self.preprocess_cfg: dict[str, Any] = dict(getattr(visual, "preprocess_cfg", {}) or {})

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``(batch, num_features)``."""
        out = self.visual(x)
        return out[0] if isinstance(out, tuple) else out  # towers built with output_tokens return a tuple


def _embed_dim(model_name: str, visual: nn.Module) -> int:
    import open_clip

    output_dim = getattr(visual, "output_dim", None)
    if isinstance(output_dim, int):
        return output_dim
    config = open_clip.get_model_config(model_name)
    if config and "embed_dim" in config:
        return int(config["embed_dim"])
    size = getattr(visual, "image_size", 224)
    height, width = (size, size) if isinstance(size, int) else size
    was_training = visual.training
    visual.eval()
    with torch.no_grad():
        out = visual(torch.zeros(1, 3, height, width))
    visual.train(was_training)
    return int((out[0] if isinstance(out, tuple) else out).shape[-1])


@register_backbone_prefix("open_clip")
def build_open_clip(
    model_name: str,
    *,
    num_classes: int = 0,
    in_chans: int = 3,
    pretrained: bool | str = False,
    **kwargs: Any,
) -> OpenCLIPImageTower:
    """Image tower of ``open_clip.create_model(model_name, pretrained=tag or None, **kwargs)``.

    ``pretrained`` is False or an open_clip tag such as ``"openai"`` or ``"laion2b_s34b_b79k"``; weights
    come from the HuggingFace hub or open_clip's download cache (``cache_dir`` kwarg) and must be cached
    to work offline. Useful kwargs: ``force_image_size``, ``precision``, ``cache_dir``.
    """
    import open_clip

    if in_chans != 3:
        raise ValueError(f"open_clip image towers take RGB input (in_chans=3), got in_chans={in_chans}")
    is_hub_name = model_name.startswith("hf-hub:")
    if not is_hub_name and open_clip.get_model_config(model_name) is None:
        raise ValueError(
            f"unknown open_clip model {model_name!r}; see open_clip.list_models() (e.g. 'RN50', 'ViT-B-32')"
        )
    if pretrained is True:
        tags = [] if is_hub_name else open_clip.list_pretrained_tags_by_model(model_name)
        raise ValueError(
            f"open_clip backbones take pretrained as a tag string; tags for {model_name!r}: {tags}"
        )
    tag = pretrained or None
    try:
        clip_model = open_clip.create_model(model_name, pretrained=tag, **kwargs)
    except Exception as err:  # download / cache failures surface as many exception types
        if tag is not None:
            raise RuntimeError(
                f"could not load open_clip {model_name!r} with pretrained={tag!r}: {err}. Weights come from "
                "the HuggingFace hub or open_clip's cache; offline, they must already be cached "
                "(HF_HUB_CACHE or the cache_dir kwarg)."
            ) from err
        raise
    visual = clip_model.visual
    del clip_model  # drop the text tower
    return OpenCLIPImageTower(visual, _embed_dim(model_name, visual), num_classes, model_name)
