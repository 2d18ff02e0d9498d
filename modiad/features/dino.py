"""The DINO ViT-B/8 image encoder through timm, with weights from a local file only.

The model is timm's `vit_base_patch8_224` (timm tag `dino`) built with
`pretrained=False` and no classification head, so timm never downloads anything.
Weights come from a file the caller names: the official DINO release
(`dino_vitbase8_pretrain.pth`), timm's `model.safetensors` for
`timm/vit_base_patch8_224.dino`, or that file in the local Hugging Face cache.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from modiad.errors import WeightsError

__all__ = [
    "DINO_ARCHITECTURE",
    "DINO_HF_REPO",
    "DINO_WEIGHTS_FILENAME",
    "build_dino",
    "cached_dino_weights",
    "dino_patch_features",
    "load_dino_checkpoint",
]

logger = logging.getLogger(__name__)

DINO_ARCHITECTURE = "vit_base_patch8_224"

DINO_HF_REPO = "timm/vit_base_patch8_224.dino"
"""Hugging Face repository from which timm would download the weights."""

DINO_WEIGHTS_FILENAME = "dino_vitbase8_pretrain.pth"
"""File name of the official DINO ViT-B/8 backbone release, expected in the weights folder."""

# Files timm stores for a Hugging Face model, in the order timm prefers them.
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

# Prefixes around the backbone keys in DataParallel and DINO training checkpoints.
_WRAPPER_PREFIXES = ("module.", "backbone.")


def build_dino(**architecture_overrides: Any) -> torch.nn.Module:
    """Build an untrained, headless `vit_base_patch8_224` in eval mode.

    `architecture_overrides` go to `timm.create_model` (e.g. `embed_dim`, `depth`,
    `num_heads` for small test models); without them the model is ViT-B/8 at 224×224.
    """
    import timm

    model = timm.create_model(DINO_ARCHITECTURE, pretrained=False, num_classes=0, **architecture_overrides)
    return model.eval()


def cached_dino_weights() -> Path | None:
    """Return the DINO weights in the local Hugging Face cache that timm uses, or None.

    Only the cache on disk is looked at (`HF_HUB_CACHE` or `HF_HOME` select it),
    nothing is downloaded.
    """
    from huggingface_hub import try_to_load_from_cache

    for filename in _HF_WEIGHT_FILES:
        found = try_to_load_from_cache(DINO_HF_REPO, filename)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def load_dino_checkpoint(model: Any, path: Path) -> None:
    """Load ViT weights from `path` into `model`, strictly.

    Reads .safetensors, or torch files with `weights_only=True`. Wrapper prefixes
    ("module.", "backbone.") and a "state_dict" or "model" container are removed, and timm's ViT checkpoint filter adapts official DINO keys. Raises
    WeightsError when the file cannot be read, or listing every missing, unexpected
    and wrongly shaped key. `model` is a timm VisionTransformer.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    raw = _read_weights(Path(path))
    state = _backbone_state(raw)
    state = checkpoint_filter_fn(state, model)
    expected = model.state_dict()

    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shapes = sorted(
        f"{key} {tuple(state[key].shape)} (model: {tuple(expected[key].shape)})"
        for key in set(state) & set(expected)
        if state[key].shape != expected[key].shape
    )
    if missing or unexpected or wrong_shapes:
        raise WeightsError(
            f"DINO checkpoint {path} does not match {DINO_ARCHITECTURE}: missing keys {missing}, "
            f"unexpected keys {unexpected}, wrong shapes {wrong_shapes}. "
            f"Use the official {DINO_WEIGHTS_FILENAME} or timm's model.safetensors from {DINO_HF_REPO}"
        )
    model.load_state_dict(state, strict=True)
    logger.info("loaded DINO weights from %s (%d tensors)", path, len(state))


def dino_patch_features(model: Any, images: torch.Tensor) -> torch.Tensor:
    """Return float B×D×S×S patch features of normalised B×3×H×W images.

    The features are the output of the last block after the final norm, with the
    class token (and any other prefix token) dropped. For ViT-B/8 at 224×224,
    D = 768 and S = 28. `model` is a timm VisionTransformer.
    """
    tokens = model.forward_features(images)
    patches = tokens[:, model.num_prefix_tokens :]
    batch_size, count, channels = patches.shape
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"expected a square patch grid, got {count} patch tokens")
    return patches.transpose(1, 2).reshape(batch_size, channels, side, side)


def _read_weights(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise WeightsError(f"DINO checkpoint {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        # weights_only=True: the file may contain tensors and plain containers only, never code.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise many types for a bad file
        raise WeightsError(f"DINO checkpoint {path} could not be read ({error}); replace the file") from error


def _backbone_state(raw: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Return the backbone tensors of a checkpoint mapping, wrapper prefixes stripped."""
    for container in ("state_dict", "model"):
        nested = raw.get(container)
        if isinstance(nested, Mapping):
            raw = nested
            break

    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        name = str(key)
        for prefix in _WRAPPER_PREFIXES:
            name = name.removeprefix(prefix)
        if isinstance(value, torch.Tensor):
            state[name] = value
    return state
