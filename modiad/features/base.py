"""The interface every feature preset implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["FeatureExtractor", "FeatureMaps"]


@dataclass(frozen=True)
class FeatureMaps:
    """Aligned 2D and 3D features of one sample on a G×G grid.

    `f2d` is float32 G×G×D2, `f3d` is float32 G×G×D3, and `foreground` is bool G×G:
    True where the cell contains valid object points (background plane and missing
    points removed). Training uses only foreground cells; scoring gives every cell a
    value but background cells score 0.
    """

    f2d: np.ndarray
    f3d: np.ndarray
    foreground: np.ndarray


class FeatureExtractor(Protocol):
    """A frozen 2D + 3D extractor pair.

    `identity` names the preset and its version; caches key on it. `extract`
    accepts one sample's uint8 H×W×3 RGB and float32 H×W×3 organized cloud (any H, W)
    and returns features on the extractor's fixed grid of `grid_size`×`grid_size`.
    """

    identity: str
    grid_size: int
    dim_2d: int
    dim_3d: int

    def extract(self, rgb: np.ndarray, xyz: np.ndarray) -> FeatureMaps: ...
