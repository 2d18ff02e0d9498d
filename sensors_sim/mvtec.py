"""Offline preprocessing of MVTec 3D-AD into a cache folder, as the field does it.

For every sample of a tree in the MVTec 3D-AD layout (see `modiad.dataset`):

1. NaN and inf points become missing points (0, 0, 0), as the reader does.
2. The background plane is fitted by RANSAC to the valid points in a band along the
   image border, where the object never is, and every point within
   `plane_distance_m` of it, or behind it, is removed.
3. Optionally only the largest 3D cluster of the remaining points is kept, which drops
   loose background specks.
4. Optionally the sample is resized so its longer side is `image_size` pixels and then
   padded to a square: RGB bicubic, the organized cloud and the mask nearest, so no
   interpolated point ever lies between surfaces. Padding is black RGB, missing points
   and normal mask pixels, identical for the three files.

Removed points become (0, 0, 0). Masks are never changed apart from resizing, so
pixels without a point keep their label, still get a score and stay in the evaluation.

The result goes to a separate cache folder with a `preprocess.json` manifest, and the
raw tree is never written. The feature extractors of the embedded preset remove the
background plane again at run time. Preprocessing exists to match published pipelines
and to shrink the clouds, not because the features need it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage

from modiad.dataset import SPLITS, SampleRef, list_classes, list_samples, read_sample
from modiad.errors import ConfigError, DatasetError
from modiad.features.geometry import fit_plane_ransac, valid_point_mask
from modiad.sample import Sample

__all__ = [
    "MVTEC3D_CLASSES",
    "PreprocessSettings",
    "PreprocessSummary",
    "keep_largest_cluster",
    "preprocess_mvtec",
    "preprocess_sample",
    "remove_plane",
    "resize_and_pad",
]

logger = logging.getLogger(__name__)

MVTEC3D_CLASSES = ("bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope", "tire")
"""The ten classes of the MVTec 3D-AD release. Their images range from 400×400 to
900×900 pixels and are not all square, so nothing here assumes a size."""

_MANIFEST = "preprocess.json"
_PREPROCESSOR_VERSION = 1
_MAX_CLUSTER_GRID_CELLS = 64_000_000
"""Voxel grids larger than this (about 64 MB of labels) are not built. The cluster step
is then skipped with a warning, because such a grid means far outlying points."""


@dataclass(frozen=True)
class PreprocessSettings:
    """Thresholds of the preprocessing, distances in metres and sizes in pixels.

    The defaults follow common MVTec 3D-AD practice: a 5 mm plane band and 6 mm
    cluster linkage, for parts a few centimetres tall seen from about 0.5 m.
    """

    border_px: int = 10
    """Width of the image band whose valid points fit the plane."""
    plane_inlier_m: float = 0.005
    """RANSAC inlier distance to the plane hypothesis."""
    plane_distance_m: float = 0.005
    """Points closer to the plane than this, or behind it, are removed."""
    ransac_iterations: int = 200
    min_border_points: int = 100
    """With fewer valid points in the band, the plane is not fitted and the sample is
    kept as it is (typical for a file that was already preprocessed)."""
    keep_largest_cluster: bool = False
    cluster_distance_m: float = 0.006
    """Points closer than this always share a cluster. Clusters are found on a voxel grid
    of this edge, so points up to 2·√3 times this distance apart may also be joined."""
    image_size: int | None = None
    """Side of the square output. None keeps the original size without padding."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("plane_inlier_m", "plane_distance_m", "cluster_distance_m"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive distance in metres, got {value}.")
        if self.border_px < 1 or self.ransac_iterations < 1 or self.min_border_points < 3:
            raise ConfigError(
                "border_px and ransac_iterations must be at least 1 and min_border_points at least 3, "
                f"got {self.border_px}, {self.ransac_iterations} and {self.min_border_points}."
            )
        if self.image_size is not None and self.image_size < 8:
            raise ConfigError(f"image_size must be at least 8 pixels or None, got {self.image_size}.")


@dataclass
class PreprocessSummary:
    """Result of `preprocess_mvtec`: samples written, samples already in the cache, and
    the source xyz files whose plane removal was skipped for lack of border points."""

    destination: Path
    written: int = 0
    skipped_existing: int = 0
    plane_skipped: list[Path] = field(default_factory=list)


def remove_plane(xyz: np.ndarray, settings: PreprocessSettings) -> np.ndarray | None:
    """Return a copy of the H×W×3 cloud without its background plane, or None.

    None means the border band contains fewer than `settings.min_border_points` valid
    points or only collinear ones, so no plane can be trusted.
    """
    valid = valid_point_mask(xyz)
    border = np.zeros(valid.shape, dtype=bool)
    band = settings.border_px
    border[:band, :] = border[-band:, :] = border[:, :band] = border[:, -band:] = True
    border_points = xyz[valid & border]
    if len(border_points) < settings.min_border_points:
        return None

    plane = fit_plane_ransac(border_points, inlier_m=settings.plane_inlier_m,
                             iterations=settings.ransac_iterations, seed=settings.seed)
    if plane is None:
        return None
    normal, offset = plane

    # The fit orients the plane so that the camera, at the origin, is on the positive side.
    signed = np.zeros(valid.shape, dtype=np.float64)
    signed[valid] = xyz[valid].astype(np.float64) @ normal + offset
    cleaned = xyz.copy()
    cleaned[~(valid & (signed > settings.plane_distance_m))] = 0.0
    return cleaned


def keep_largest_cluster(xyz: np.ndarray, distance_m: float) -> np.ndarray:
    """Return a copy of the H×W×3 cloud with only its largest 3D cluster of valid points.

    Points are binned into voxels of `distance_m` edge. Occupied voxels that touch,
    faces, edges or corners, form one cluster, so two points closer than `distance_m`
    always share a cluster. The cloud is returned unchanged, with a warning, when its
    bounding box would need more than 64 million voxels.
    """
    valid = valid_point_mask(xyz)
    if not valid.any():
        return xyz.copy()

    points = xyz[valid].astype(np.float64)
    voxels = np.floor((points - points.min(axis=0)) / distance_m).astype(np.int64)
    grid_shape = tuple(int(extent) for extent in voxels.max(axis=0) + 1)
    if np.prod(grid_shape, dtype=np.float64) > _MAX_CLUSTER_GRID_CELLS:
        logger.warning("largest-cluster step skipped: the points span %s voxels of %.4f m, more than %d",
                       grid_shape, distance_m, _MAX_CLUSTER_GRID_CELLS)
        return xyz.copy()

    occupied = np.zeros(grid_shape, dtype=bool)
    occupied[tuple(voxels.T)] = True
    labels, _ = ndimage.label(occupied, structure=np.ones((3, 3, 3), dtype=bool))
    point_labels = labels[tuple(voxels.T)]
    largest = np.bincount(point_labels).argmax()

    in_largest = valid.copy()
    in_largest[valid] = point_labels == largest
    cleaned = xyz.copy()
    cleaned[~in_largest] = 0.0
    return cleaned


def resize_and_pad(
    rgb: np.ndarray, xyz: np.ndarray, mask: np.ndarray | None, image_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Resize so that the longer side is `image_size`, then pad to image_size × image_size.

    RGB is resized bicubic. xyz and the mask are resized nearest with Pillow's pixel-centre
    rule, so every output point is an input point. The content is centred, and the
    padding is zero in all three arrays. Returns (rgb, xyz, mask) with equal H×W.
    """
    height, width = rgb.shape[:2]
    scale = image_size / max(height, width)
    new_width = max(1, round(width * scale))
    new_height = max(1, round(height * scale))
    size = (new_width, new_height)

    resized_rgb = np.array(Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC), dtype=np.uint8)
    resized_xyz = np.stack(
        [np.array(Image.fromarray(np.ascontiguousarray(xyz[..., axis], dtype=np.float32)).resize(size, Image.Resampling.NEAREST))
         for axis in range(3)],
        axis=-1,
    ).astype(np.float32)
    resized_mask = None
    if mask is not None:
        resized_mask = np.array(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST), dtype=np.uint8)

    top = (image_size - new_height) // 2
    left = (image_size - new_width) // 2
    padding = ((top, image_size - new_height - top), (left, image_size - new_width - left))
    padded_rgb = np.pad(resized_rgb, (*padding, (0, 0)))
    padded_xyz = np.pad(resized_xyz, (*padding, (0, 0)))
    padded_mask = None if resized_mask is None else np.pad(resized_mask, padding)
    return padded_rgb, padded_xyz, padded_mask


def preprocess_sample(sample: Sample, settings: PreprocessSettings) -> tuple[Sample, bool]:
    """Apply plane removal, the optional cluster step and the optional resize to one sample.

    Returns the new sample and whether the plane was removed. When it was not (too few
    border points), the cluster step is skipped too, because without the plane removed
    the background would be the largest cluster.
    """
    xyz = np.where(np.isfinite(sample.xyz), sample.xyz, 0.0).astype(np.float32)
    cleaned = remove_plane(xyz, settings)
    plane_removed = cleaned is not None
    if cleaned is None:
        cleaned = xyz
    elif settings.keep_largest_cluster:
        cleaned = keep_largest_cluster(cleaned, settings.cluster_distance_m)

    rgb, mask = sample.rgb, sample.gt_mask
    if settings.image_size is not None:
        rgb, cleaned, mask = resize_and_pad(rgb, cleaned, mask, settings.image_size)

    processed = Sample(sample_id=sample.sample_id, class_name=sample.class_name, rgb=rgb, xyz=cleaned,
                       gt_mask=mask, label=sample.label, defect_type=sample.defect_type)
    return processed, plane_removed


def preprocess_mvtec(
    source: str | Path,
    destination: str | Path,
    settings: PreprocessSettings | None = None,
    *,
    classes: list[str] | None = None,
    overwrite: bool = False,
) -> PreprocessSummary:
    """Preprocess a tree in the MVTec 3D-AD layout into the cache folder `destination`.

    The output has the same layout and stems. A sample whose output files all exist is
    skipped, so an interrupted run resumes, and each file is written under a temporary
    name and then renamed. Raises DatasetError when `destination` overlaps `source`,
    when it is a non-empty folder without a `preprocess.json`, or when its manifest
    records other settings or another source. Pass `overwrite=True` to delete such an
    earlier cache first.
    """
    settings = settings or PreprocessSettings()
    source_path = Path(source).resolve()
    destination_path = Path(destination).resolve()
    _require_disjoint(source_path, destination_path)
    class_names = list_classes(source_path) if classes is None else list(classes)

    manifest = {
        "preprocessor": "sensors_sim.mvtec",
        "preprocessor_version": _PREPROCESSOR_VERSION,
        "source": str(source_path),
        "settings": asdict(settings),
    }
    _prepare_destination(destination_path, manifest, overwrite)

    summary = PreprocessSummary(destination=destination_path)
    for class_name in class_names:
        for split in SPLITS:
            if not (source_path / class_name / split).is_dir():
                logger.warning("Class %s has no %s split in %s, so it is skipped", class_name, split, source_path)
                continue
            for ref in list_samples(source_path, class_name, split):
                _preprocess_ref(ref, source_path, destination_path, settings, summary)

    logger.info(
        "Preprocessed %s into %s: %d samples written, %d already in the cache, plane removal skipped for %d",
        source_path, destination_path, summary.written, summary.skipped_existing, len(summary.plane_skipped),
    )
    return summary


def _preprocess_ref(ref: SampleRef, source: Path, destination: Path, settings: PreprocessSettings,
                    summary: PreprocessSummary) -> None:
    rgb_out = destination / ref.rgb_path.relative_to(source)
    xyz_out = destination / ref.xyz_path.relative_to(source)
    gt_out = destination / ref.gt_path.relative_to(source) if ref.gt_path is not None else None
    outputs = [rgb_out, xyz_out] + ([gt_out] if gt_out is not None else [])
    if all(path.is_file() for path in outputs):
        logger.debug("Skipping %s: already preprocessed in %s", ref.sample_id, destination)
        summary.skipped_existing += 1
        return

    processed, plane_removed = preprocess_sample(read_sample(ref), settings)
    if not plane_removed:
        logger.warning(
            "Background plane not removed from %s: fewer than %d valid points in the %d-pixel border "
            "(the file may be preprocessed already). Its points are kept as they are.",
            ref.xyz_path, settings.min_border_points, settings.border_px,
        )
        summary.plane_skipped.append(ref.xyz_path)

    _write_atomically(rgb_out, lambda path: Image.fromarray(processed.rgb).save(path, format="PNG", compress_level=1))
    _write_atomically(xyz_out, lambda path: tifffile.imwrite(path, processed.xyz, photometric="rgb"))
    if gt_out is not None and processed.gt_mask is not None:
        mask = processed.gt_mask * np.uint8(255)
        _write_atomically(gt_out, lambda path: Image.fromarray(mask).save(path, format="PNG"))
    summary.written += 1


def _write_atomically(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    write(partial)
    os.replace(partial, path)


def _prepare_destination(destination: Path, manifest: dict, overwrite: bool) -> None:
    manifest_path = destination / _MANIFEST
    if destination.exists() and not destination.is_dir():
        raise DatasetError(f"Destination {destination} is a file. Pass a folder path for the cache.")

    if manifest_path.is_file():
        try:
            existing = json.loads(manifest_path.read_text())
        except ValueError:
            existing = None
        if existing == manifest:
            return
        if not overwrite:
            raise DatasetError(
                f"The cache {destination} was written with other settings or from another source "
                f"(see {manifest_path}). Pass another destination, or overwrite=True "
                "(--overwrite) to delete the cache and preprocess again."
            )
        shutil.rmtree(destination)
    elif destination.is_dir() and any(destination.iterdir()):
        raise DatasetError(
            f"Cannot preprocess into {destination}: the folder is not empty and contains no {_MANIFEST}, "
            "so it may contain other data. Pass an empty or new folder."
        )

    destination.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")


def _require_disjoint(source: Path, destination: Path) -> None:
    if destination == source or destination.is_relative_to(source) or source.is_relative_to(destination):
        raise DatasetError(
            f"Destination {destination} overlaps the raw dataset {source}. Choose a folder outside "
            "it, because preprocessing never writes into raw data."
        )
