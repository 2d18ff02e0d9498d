"""The paper feature preset: DINO ViT-B/8 for RGB, Point-MAE for the point cloud.

Both extractors are frozen and need pretrained weights on local disk; nothing is
downloaded. `check_paper_weights` finds both files before any work starts and
names every missing one in a single error.

Both modalities land on the same G×G grid as the embedded preset: the foreground
mask comes from the same background-plane removal, and the 3D features are pooled
per cell with the same cell boundaries (`modiad.features.geometry`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from modiad.errors import DatasetError, WeightsError
from modiad.features.base import FeatureMaps
from modiad.features.embedded import _check_sample_arrays
from modiad.features.geometry import (
    PixelFeatures,
    pool_to_grid,
    remove_background_plane,
    valid_point_mask,
)

if TYPE_CHECKING:
    import torch

    from modiad.features.pointmae import PointMAEEncoder

__all__ = [
    "PAPER_PRESET_NAME",
    "POINT_MAE_WEIGHTS_FILENAME",
    "PaperExtractor",
    "PaperFeatureSettings",
    "PaperWeightPaths",
    "check_paper_weights",
    "save_random_paper_weights",
]

logger = logging.getLogger(__name__)

PAPER_PRESET_NAME = "paper-dinovitb8-pointmae-v1"

POINT_MAE_WEIGHTS_FILENAME = "point_mae_pretrain.pth"
"""Name under which the official Point-MAE `pretrain.pth` is expected in the weights folder."""

_DINO_INPUT_SIZE = 224

# ImageNet statistics, the normalisation DINO was trained with (timm's pretrained config).
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

_DINO_SOURCE = "https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth"
_POINT_MAE_SOURCE = "https://github.com/Pang-Yatian/Point-MAE/releases (pretrain.pth)"


class PaperFeatureSettings(BaseModel):
    """Settings of the paper preset. Weight paths are resolved by `check_paper_weights`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    grid_size: int = Field(default=56, ge=1, le=512, description="Side G of the G×G feature grid, in cells. Default 56.")
    weights_dir: Path | None = Field(
        default=None,
        description=(
            "Folder with dino_vitbase8_pretrain.pth and point_mae_pretrain.pth. A file set in "
            "dino_weights or point_mae_weights takes precedence. Default: none."
        ),
    )
    dino_weights: Path | None = Field(
        default=None,
        description=(
            "DINO ViT-B/8 weights file (.pth or .safetensors). Default: weights_dir, then timm's local "
            "Hugging Face cache of timm/vit_base_patch8_224.dino."
        ),
    )
    point_mae_weights: Path | None = Field(
        default=None, description="Point-MAE pretraining checkpoint. Default: weights_dir/point_mae_pretrain.pth."
    )
    device: str = Field(default="cpu", description="torch device that runs both encoders: 'cpu', 'cuda' or 'cuda:N'.")
    batch_size: int = Field(default=4, ge=1, le=256, description="Samples per encoder pass in extract_batch. Default 4.")
    # NOTE: Point-MAE was pretrained on ShapeNet shapes scaled into the unit sphere, and
    # the scale that suits its weights on factory parts in metres has not been measured.
    point_scale: float = Field(
        default=1.0, gt=0, description="Factor applied to point coordinates in metres before Point-MAE. Default 1."
    )
    plane_distance_m: float = Field(
        default=0.005, gt=0, description="Minimum height in metres above the background plane for foreground. Default 0.005."
    )
    plane_inlier_m: float = Field(default=0.002, gt=0, description="RANSAC inlier distance in metres. Default 0.002.")
    plane_iterations: int = Field(default=200, ge=1, description="RANSAC hypotheses for the background plane. Default 200.")
    plane_seed: int = Field(default=0, description="Seed of the RANSAC sampler. Default 0.")
    border_px: int = Field(default=10, ge=1, description="Width in pixels of the frame that fits the plane. Default 10.")
    min_border_points: int = Field(
        default=50, ge=3, description="Fewest valid frame points for a plane fit; with fewer, all valid points are foreground."
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, device: str) -> str:
        if device != "cpu" and device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        return device

    def fingerprint(self) -> str:
        """Return 8 hex digits of the SHA-256 of the fields that change features.

        Paths, device and batch size are left out: the weights enter the identity by
        content, and the device and batch size change features only by float rounding.
        """
        canonical = self.model_dump_json(exclude={"weights_dir", "dino_weights", "point_mae_weights", "device", "batch_size"})
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:8]


@dataclass(frozen=True)
class PaperWeightPaths:
    """Resolved weight files of the paper preset."""

    dino: Path
    point_mae: Path


def check_paper_weights(settings: PaperFeatureSettings) -> PaperWeightPaths:
    """Find both weight files, or raise one WeightsError that names every missing file.

    Lookup order for DINO: `dino_weights`, then `weights_dir`/dino_vitbase8_pretrain.pth,
    then timm's local Hugging Face cache. For Point-MAE: `point_mae_weights`, then
    `weights_dir`/point_mae_pretrain.pth. Only the file system is read.
    """
    from modiad.features.dino import (
        DINO_HF_REPO,
        DINO_WEIGHTS_FILENAME,
        cached_dino_weights,
    )

    problems = []
    dino = _configured_file(settings.dino_weights, settings.weights_dir, DINO_WEIGHTS_FILENAME)
    if dino is None and settings.dino_weights is None:
        dino = cached_dino_weights()
    if dino is None:
        target = settings.dino_weights or _default_target(settings.weights_dir, DINO_WEIGHTS_FILENAME)
        problems.append(
            f"DINO ViT-B/8 weights not found at {target}: download {_DINO_SOURCE} and save it as {target} "
            f"(or place timm's model.safetensors of {DINO_HF_REPO} in the local Hugging Face cache)"
        )

    point_mae = _configured_file(settings.point_mae_weights, settings.weights_dir, POINT_MAE_WEIGHTS_FILENAME)
    if point_mae is None:
        target = settings.point_mae_weights or _default_target(settings.weights_dir, POINT_MAE_WEIGHTS_FILENAME)
        problems.append(f"Point-MAE weights not found at {target}: download {_POINT_MAE_SOURCE} and save it as {target}")

    if problems:
        raise WeightsError("the paper feature preset needs pretrained weights on local disk. " + "; ".join(problems))
    assert dino is not None and point_mae is not None
    return PaperWeightPaths(dino=dino, point_mae=point_mae)


def save_random_paper_weights(weights_dir: Path, seed: int = 0) -> PaperWeightPaths:
    """Write randomly initialised DINO ViT-B/8 and Point-MAE weights in the official file formats.

    The files have the official names, keys and shapes (about 430 MB together), so
    `PaperExtractor` loads them like the published weights. They serve tests and dry
    runs of the pipeline only: their features carry no meaning.
    """
    import torch

    from modiad.features.dino import DINO_WEIGHTS_FILENAME, build_dino
    from modiad.features.pointmae import PointMAEEncoder

    weights_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    dino_path = weights_dir / DINO_WEIGHTS_FILENAME
    torch.save(build_dino().state_dict(), dino_path)

    # The official pretraining checkpoint wraps the encoder as module.MAE_encoder inside base_model.
    encoder_state = PointMAEEncoder().state_dict()
    base_model = {f"module.MAE_encoder.{key}": value for key, value in encoder_state.items()}
    point_mae_path = weights_dir / POINT_MAE_WEIGHTS_FILENAME
    torch.save({"base_model": base_model, "epoch": 0}, point_mae_path)
    return PaperWeightPaths(dino=dino_path, point_mae=point_mae_path)


def _configured_file(explicit: Path | None, weights_dir: Path | None, filename: str) -> Path | None:
    """Return the explicit file if set and present, else weights_dir/filename if present, else None."""
    if explicit is not None:
        return explicit if explicit.is_file() else None
    if weights_dir is not None and (weights_dir / filename).is_file():
        return weights_dir / filename
    return None


def _default_target(weights_dir: Path | None, filename: str) -> Path:
    """Return where a missing file should go: in weights_dir, or in the working directory's weights/."""
    return (weights_dir if weights_dir is not None else Path("weights")) / filename


class PaperExtractor:
    """Frozen DINO ViT-B/8 (2D, 768-d) and Point-MAE (3D, 1152-d) features on one G×G grid.

    2D: the RGB image is resized to 224×224 (bicubic) and normalised with ImageNet
    statistics. The last block's patch tokens after the final norm (28×28×768, class
    token dropped) are resized bilinearly to G×G.
    3D: Point-MAE runs on the foreground points (valid points off the background
    plane). Its 1152-d group features are interpolated back to every foreground point
    from the 3 nearest centres and averaged per grid cell. Cells without foreground
    have `foreground` False and zero f3d.

    A cloud with no foreground point gets zero f3d and an all-False foreground. A
    cloud with some foreground, but fewer points than Point-MAE's groups (1024) or
    group size (128), raises DatasetError, because sampling it would repeat points.
    """

    def __init__(self, settings: PaperFeatureSettings | None = None) -> None:
        from modiad.features.dino import build_dino, load_dino_checkpoint
        from modiad.features.pointmae import PointMAEEncoder, load_point_mae_checkpoint

        settings = settings if settings is not None else PaperFeatureSettings()
        paths = check_paper_weights(settings)
        dino = build_dino()
        load_dino_checkpoint(dino, paths.dino)
        point_mae = PointMAEEncoder()
        load_point_mae_checkpoint(point_mae, paths.point_mae)
        self._setup(settings, dino, point_mae)

    @classmethod
    def from_modules(cls, settings: PaperFeatureSettings, dino: Any, point_mae: PointMAEEncoder) -> PaperExtractor:
        """Build an extractor around encoders that are already loaded, e.g. small models in tests.

        `dino` is a headless timm VisionTransformer taking 224×224 input. The identity
        hashes the encoders' weights, so different weights never share cache entries.
        """
        extractor = cls.__new__(cls)
        extractor._setup(settings, dino, point_mae)
        return extractor

    def _setup(self, settings: PaperFeatureSettings, dino: Any, point_mae: PointMAEEncoder) -> None:
        import torch

        self.settings = settings
        self._device = torch.device(settings.device)
        self._dino = dino.eval().requires_grad_(False).to(self._device)
        self._point_mae = point_mae.eval().requires_grad_(False).to(self._device)
        self.grid_size = settings.grid_size
        self.dim_2d = int(dino.num_features)
        self.dim_3d = point_mae.architecture.feature_dim
        weights_digest = _weights_digest(self._dino, self._point_mae)
        self.identity = f"{PAPER_PRESET_NAME}-{settings.fingerprint()}-{weights_digest}"
        logger.info("built feature extractor %s (dim_2d=%d, dim_3d=%d)", self.identity, self.dim_2d, self.dim_3d)

    def extract(self, rgb: np.ndarray, xyz: np.ndarray) -> FeatureMaps:
        """Return the aligned 2D and 3D features of one sample.

        `rgb` is uint8 H×W×3 and `xyz` float H×W×3 in metres with the same H, W.
        Missing points may be (0, 0, 0), NaN or infinite.
        """
        return self.extract_batch([(rgb, xyz)])[0]

    def extract_batch(self, samples: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[FeatureMaps]:
        """Return the features of several (rgb, xyz) samples, `batch_size` samples per encoder pass.

        Each result equals `extract` on that sample up to float rounding.
        """
        for index, (rgb, xyz) in enumerate(samples):
            _check_sample_arrays(rgb, xyz, index)
        results: list[FeatureMaps] = []
        for start in range(0, len(samples), self.settings.batch_size):
            chunk = samples[start : start + self.settings.batch_size]
            features_2d = self.features_2d([rgb for rgb, _ in chunk])
            features_3d = self.features_3d([xyz for _, xyz in chunk])
            for f2d, (f3d, foreground) in zip(features_2d, features_3d):
                results.append(FeatureMaps(f2d=f2d, f3d=f3d, foreground=foreground))
        return results

    def features_2d(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Return float32 G×G×dim_2d DINO features for each uint8 H×W×3 image."""
        import torch

        from modiad.features.dino import dino_patch_features

        if not images:
            return []
        batch = torch.stack([_preprocess_image(image) for image in images]).to(self._device)
        with torch.inference_mode():
            patches = dino_patch_features(self._dino, batch)
            grid = (self.grid_size, self.grid_size)
            resized = torch.nn.functional.interpolate(patches, size=grid, mode="bilinear", align_corners=False)
            maps = resized.permute(0, 2, 3, 1).float().cpu().numpy()
        return [np.ascontiguousarray(item, dtype=np.float32) for item in maps]

    def features_3d(self, clouds: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Return (float32 G×G×dim_3d cell means, bool G×G foreground) for each organized cloud.

        Raises DatasetError naming the cloud's index when it has some foreground but
        fewer points than Point-MAE needs.
        """
        foregrounds = [self._foreground(xyz) for xyz in clouds]
        needed = self._point_mae.architecture.min_points
        for index, foreground in enumerate(foregrounds):
            count = int(foreground.sum())
            if 0 < count < needed:
                raise DatasetError(
                    f"cloud {index} of this batch: {count} foreground points, but Point-MAE needs at least {needed} "
                    "(one per group centre and a full neighbourhood); reject the sample or lower the "
                    "background-plane distance"
                )

        present = [index for index, foreground in enumerate(foregrounds) if foreground.any()]
        point_lists = [np.asarray(clouds[index][foregrounds[index]], dtype=np.float32) for index in present]
        point_features = self._point_mae_features(point_lists) if point_lists else []

        results = []
        by_index = dict(zip(present, point_features))
        for index, foreground in enumerate(foregrounds):
            rows, cols = np.nonzero(foreground)
            values = by_index.get(index, np.zeros((0, self.dim_3d), dtype=np.float32))
            pixels = PixelFeatures(rows=rows, cols=cols, values=values)
            results.append(pool_to_grid(pixels, image_shape=foreground.shape, grid_size=self.grid_size))
        return results

    def _point_mae_features(self, point_lists: list[np.ndarray]) -> list[np.ndarray]:
        """Return float32 N_i×dim_3d Point-MAE features for each N_i×3 point array, in one padded pass."""
        import torch

        longest = max(len(points) for points in point_lists)
        padded = np.zeros((len(point_lists), longest, 3), dtype=np.float32)
        valid = np.zeros((len(point_lists), longest), dtype=bool)
        for row, points in enumerate(point_lists):
            padded[row, : len(points)] = points * self.settings.point_scale
            valid[row, : len(points)] = True

        with torch.inference_mode():
            points_tensor = torch.from_numpy(padded).to(self._device)
            valid_tensor = torch.from_numpy(valid).to(self._device)
            features = self._point_mae.point_features(points_tensor, valid_tensor).float().cpu().numpy()
        return [np.ascontiguousarray(features[row, : len(points)]) for row, points in enumerate(point_lists)]

    def _foreground(self, xyz: np.ndarray) -> np.ndarray:
        """Return bool H×W: valid points off the background plane, as in the embedded preset."""
        settings = self.settings
        return remove_background_plane(
            xyz,
            valid_point_mask(xyz),
            distance_m=settings.plane_distance_m,
            border_px=settings.border_px,
            inlier_m=settings.plane_inlier_m,
            iterations=settings.plane_iterations,
            min_border_points=settings.min_border_points,
            seed=settings.plane_seed,
        )


def _preprocess_image(image: np.ndarray) -> torch.Tensor:
    """Return the float32 3×224×224 ImageNet-normalised DINO input of a uint8 H×W×3 image."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    if tensor.shape[1:] != (_DINO_INPUT_SIZE, _DINO_INPUT_SIZE):
        # Bicubic with antialiasing, clamped back to [0, 1] because bicubic overshoots.
        tensor = torch.nn.functional.interpolate(
            tensor[None], size=(_DINO_INPUT_SIZE, _DINO_INPUT_SIZE), mode="bicubic", align_corners=False, antialias=True
        )[0].clamp_(0.0, 1.0)
    mean = torch.tensor(_IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(_IMAGENET_STD).view(3, 1, 1)
    return (tensor - mean) / std


def _weights_digest(*modules: Any) -> str:
    """Return 8 hex digits of the SHA-256 over every tensor of the modules' state dicts, in key order."""
    digest = hashlib.sha256()
    for module in modules:
        for key, tensor in sorted(module.state_dict().items()):
            digest.update(key.encode("utf-8"))
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:8]
