"""Anomaly maps and image scores from a class's mapper pair.

A cell's anomaly value is the product of two discrepancies: the Euclidean distance
between the L2-normalised observed 2D feature and its prediction from 3D, and the
same in 3D. The product makes a cell score high only when both modalities disagree
with the normal cross-modal relation. Background cells (no valid object point)
score 0.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional

from modiad.features.base import FeatureMaps
from modiad.mapper import MapperPair

__all__ = ["anomaly_map", "grid_anomaly_map", "image_score", "upsample_map"]

SMOOTHING_SIGMA_PX = 4.0
"""Gaussian smoothing of the full-resolution map, in image pixels; suppresses isolated cells."""


@torch.no_grad()
def grid_anomaly_map(pair: MapperPair, maps: FeatureMaps) -> np.ndarray:
    """Return the G×G float32 anomaly map of one sample (0 on background cells)."""
    grid = maps.foreground.shape
    result = np.zeros(grid, dtype=np.float32)
    rows = np.flatnonzero(maps.foreground.reshape(-1))
    if rows.size == 0:
        return result

    f2d = torch.from_numpy(np.ascontiguousarray(maps.f2d.reshape(-1, maps.f2d.shape[-1])[rows], dtype=np.float32))
    f3d = torch.from_numpy(np.ascontiguousarray(maps.f3d.reshape(-1, maps.f3d.shape[-1])[rows], dtype=np.float32))
    pair.eval()
    predicted_3d, predicted_2d = pair(f2d, f3d)

    distance_2d = torch.linalg.vector_norm(
        functional.normalize(f2d, dim=1) - functional.normalize(predicted_2d, dim=1), dim=1
    )
    distance_3d = torch.linalg.vector_norm(
        functional.normalize(f3d, dim=1) - functional.normalize(predicted_3d, dim=1), dim=1
    )
    result.reshape(-1)[rows] = (distance_2d * distance_3d).numpy()
    return result


def upsample_map(grid_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a G×G map bilinearly to H×W pixels and smooth it with a Gaussian."""
    tensor = torch.from_numpy(grid_map)[None, None]
    resized = functional.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)
    full = resized[0, 0].numpy()
    return ndimage.gaussian_filter(full, sigma=SMOOTHING_SIGMA_PX).astype(np.float32)


def anomaly_map(pair: MapperPair, maps: FeatureMaps, height: int, width: int) -> np.ndarray:
    """Return the H×W float32 anomaly map of one sample at image resolution."""
    return upsample_map(grid_anomaly_map(pair, maps), height, width)


def image_score(full_map: np.ndarray) -> float:
    """Return the image-level anomaly score: the maximum of the anomaly map."""
    return float(np.max(full_map))
