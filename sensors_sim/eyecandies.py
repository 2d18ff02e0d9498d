"""Reader of the raw Eyecandies dataset and its converter to the MVTec 3D-AD layout.

The raw release keeps every item of a sample as a flat file named by the sample index::

    <root>/<ClassName>/{train,val,test_public,test_private}/data/<index>_<item>.<ext>

with 17 items per index: `image_0.png` .. `image_5.png` (one lighting setup each),
`depth.png` (16-bit, normalized to 0..65535), `info_depth.yaml` (`normalization.min`
and `normalization.max` in metres), `normals.png`, `pose.txt` (4×4), `obj_params.yaml`,
`metadata.yaml`, the defect masks `bumps_mask.png`, `dents_mask.png`, `colors_mask.png`,
`normals_mask.png`, and `mask.png`, their union. Train indices have 3 digits (`000`)
and test indices 2 (`00`). The reader accepts any width. The masks and metadata are
missing in `test_private`, which this module therefore skips.

Depth in metres is d = raw / 65535 · (max − min) + min. A pixel whose depth is zero or
not finite is a missing point, stored as (0, 0, 0), never inf. Points are back-projected
through a pinhole camera with a focal length of 711.11 px and the principal point at
(W/2, H/2), as in the dataset authors' conversion code. In the `world` frame the pose
then maps them to world coordinates, p_world = pose⁻¹ · p_camera. The default `camera`
frame leaves them in the camera frame (camera at the origin, looking along +z), which is
the frame of MVTec 3D-AD clouds and the one the background-plane removal of the
feature extractors expects.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
import yaml
from PIL import Image, UnidentifiedImageError

from modiad.errors import DatasetError
from modiad.sample import Sample

__all__ = [
    "DEFAULT_IMAGE",
    "DEPTH_FULL_SCALE",
    "FOCAL_LENGTH_PX",
    "FRAMES",
    "LIGHTING_IMAGES",
    "MASK_TYPES",
    "SPLIT_NAMES",
    "ConversionSummary",
    "EyecandiesRef",
    "backproject_depth",
    "convert_eyecandies",
    "list_eyecandies_classes",
    "list_eyecandies_samples",
    "read_depth_m",
    "read_eyecandies_sample",
    "read_pose",
    "snake_case_class",
]

logger = logging.getLogger(__name__)

FOCAL_LENGTH_PX = 711.11
"""Focal length of the one camera that rendered every Eyecandies image, in pixels."""

DEPTH_FULL_SCALE = 65535
"""Raw depth value that maps to `normalization.max`."""

LIGHTING_IMAGES = tuple(f"image_{index}" for index in range(6))
DEFAULT_IMAGE = "image_4"

MASK_TYPES = ("bumps", "dents", "colors", "normals")
"""Defect kinds with their own mask. A converted test sample goes to the folder of
its only non-empty kind, to `combined` when several are non-empty, and to `good`
when the union mask is empty."""

FRAMES = ("camera", "world")

SPLIT_NAMES = {"train": "train", "val": "validation", "test_public": "test"}
"""Raw split folder → split of the MVTec 3D-AD layout. `test_private` has no masks."""

_DATA_FOLDER = "data"
_COMBINED = "combined"
_GOOD = "good"
_ITEM_PATTERN = re.compile(r"(?P<index>\d+)_(?P<item>[a-z_0-9]+)\.(?P<suffix>png|yaml|txt)")
_REQUIRED_ITEMS = ("depth.png", "info_depth.yaml", "pose.txt")
_CONVERTER_VERSION = 1
_MANIFEST = "conversion.json"


@dataclass(frozen=True)
class EyecandiesRef:
    """One raw sample: its class folder, raw split, index and the data folder holding it.

    `stem` is the index as written on disk ("007" in train, "07" in test), which the
    file names need, and `index` its integer value.
    """

    class_folder: str
    split: str
    index: int
    stem: str
    folder: Path

    def path(self, item: str) -> Path:
        """Return the path of one item, e.g. `ref.path("depth.png")`."""
        return self.folder / f"{self.stem}_{item}"


@dataclass
class ConversionSummary:
    """Result of `convert_eyecandies`: samples written per converted class and split,
    and the count of raw test_private samples skipped because they have no masks."""

    destination: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped_private: int = 0
    up_to_date: bool = False


def snake_case_class(class_folder: str) -> str:
    """Return the converted class name of a raw folder, e.g. "CandyCane" → "candy_cane"."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", class_folder).lower()


def list_eyecandies_classes(root: str | Path) -> list[str]:
    """Return the sorted raw class folders under `root`, those that contain `<split>/data`.

    Raises DatasetError if `root` is missing or contains no such folder.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise DatasetError(
            f"Eyecandies root {root_path} is not a directory. Pass the folder that contains "
            "the class folders (CandyCane, ChocolateCookie, ...)."
        )
    raw_splits = (*SPLIT_NAMES, "test_private")
    classes = sorted(
        entry.name
        for entry in root_path.iterdir()
        if entry.is_dir() and any(_split_folder(entry, split).is_dir() for split in raw_splits)
    )
    if not classes:
        raise DatasetError(
            f"No Eyecandies class folders found in {root_path}: expected folders such as "
            "CandyCane/train/data. Extract the class archives into this folder."
        )
    return classes


def list_eyecandies_samples(root: str | Path, class_folder: str, split: str) -> list[EyecandiesRef]:
    """List the samples of one raw class and split, sorted by index, without reading them.

    A sample is an index with a depth map. Indices of any digit count are accepted.
    Raises DatasetError when the split's data folder is missing, when one index is
    written with two widths, or when a sample lacks its info_depth.yaml or pose.txt.
    """
    folder = _split_folder(_join_relative(Path(root), class_folder), split)
    if not folder.is_dir():
        raise DatasetError(f"Eyecandies split folder {folder} does not exist.")

    stems_by_index: dict[int, set[str]] = defaultdict(set)
    items_by_stem: dict[str, set[str]] = defaultdict(set)
    for entry in folder.iterdir():
        match = _ITEM_PATTERN.fullmatch(entry.name)
        if match is None:
            continue
        stem = match["index"]
        stems_by_index[int(stem)].add(stem)
        items_by_stem[stem].add(f"{match['item']}.{match['suffix']}")

    refs = []
    for index, stems in sorted(stems_by_index.items()):
        if len(stems) > 1:
            raise DatasetError(
                f"Index {index} is written with several widths ({', '.join(sorted(stems))}) in "
                f"{folder}. Keep one set of files per sample."
            )
        stem = stems.pop()
        items = items_by_stem[stem]
        if "depth.png" not in items:
            continue
        for item in _REQUIRED_ITEMS:
            if item not in items:
                raise DatasetError(
                    f"Missing {folder / f'{stem}_{item}'} for sample {stem} of {folder}. "
                    "Extract the class archive again."
                )
        refs.append(EyecandiesRef(class_folder, split, index, stem, folder))
    return refs


def read_depth_m(depth_path: Path, info_path: Path) -> np.ndarray:
    """Read a 16-bit depth PNG and its info_depth.yaml and return float32 H×W depth in metres.

    d = raw / 65535 · (max − min) + min, computed in float64. Raises DatasetError
    naming the file when the PNG is not single-channel 16-bit or the YAML lacks finite
    `normalization.min` and `normalization.max` with min ≤ max.
    """
    image = _open_image(depth_path)
    if image.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise DatasetError(
            f"Invalid depth map {depth_path}: expected a 16-bit grayscale PNG, got mode {image.mode}."
        )
    raw = np.array(image, dtype=np.float64)
    if raw.min(initial=0) < 0 or raw.max(initial=0) > DEPTH_FULL_SCALE:
        raise DatasetError(f"Invalid depth map {depth_path}: values outside 0..{DEPTH_FULL_SCALE}.")

    depth_min, depth_max = _read_normalization(info_path)
    return (raw / DEPTH_FULL_SCALE * (depth_max - depth_min) + depth_min).astype(np.float32)


def read_pose(path: Path) -> np.ndarray:
    """Read a 4×4 rigid pose from a text file.

    Raises DatasetError if the file is not a finite 4×4 matrix with last row (0, 0, 0, 1).
    """
    try:
        pose = np.loadtxt(path, dtype=np.float64)
    except (OSError, ValueError) as error:
        raise DatasetError(f"Failed to read pose {path}: {error}.") from error
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        raise DatasetError(f"Invalid pose {path}: expected a finite 4×4 matrix, got shape {pose.shape}.")
    if not np.allclose(pose[3], [0.0, 0.0, 0.0, 1.0]):
        raise DatasetError(f"Invalid pose {path}: the last row must be 0 0 0 1, got {pose[3].tolist()}.")
    return pose


def backproject_depth(
    depth_m: np.ndarray,
    *,
    focal_px: float = FOCAL_LENGTH_PX,
    pose: np.ndarray | None = None,
) -> np.ndarray:
    """Back-project H×W depth in metres to a float32 H×W×3 organized cloud in metres.

    Pixel (row v, column u) at depth d becomes ((u − W/2)·d/f, (v − H/2)·d/f, d) in the
    camera frame. With a 4×4 `pose` the points are mapped to the world frame by pose⁻¹,
    which equals the dataset authors' inverse of (intrinsics · pose) applied to
    (u·d, v·d, d, 1). Pixels with a depth that is zero, negative or not finite become
    (0, 0, 0).
    """
    height, width = depth_m.shape
    depth = depth_m.astype(np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    depth = np.where(valid, depth, 0.0)

    columns = np.arange(width, dtype=np.float64)[None, :]
    rows = np.arange(height, dtype=np.float64)[:, None]
    points = np.empty((height, width, 3), dtype=np.float64)
    points[..., 0] = (columns - width / 2) * depth / focal_px
    points[..., 1] = (rows - height / 2) * depth / focal_px
    points[..., 2] = depth

    if pose is not None:
        camera_to_world = np.linalg.inv(pose)
        points = points @ camera_to_world[:3, :3].T + camera_to_world[:3, 3]

    points[~valid] = 0.0
    return points.astype(np.float32)


def read_eyecandies_sample(
    ref: EyecandiesRef,
    *,
    image: str = DEFAULT_IMAGE,
    frame: str = "camera",
) -> Sample:
    """Read one raw sample as a Sample in the converted naming.

    `image` picks the lighting variant used as RGB. `frame` is "camera" or "world" (see
    the module docstring). The sample id is "<class>/<split>/<defect_type>/<NNN>" with
    the converted class and split names. Samples of `test_public` carry the union mask
    as gt (any non-zero pixel is defect). Raises DatasetError naming the file when an
    item is missing, unreadable or of the wrong size.
    """
    _require_choice(image, LIGHTING_IMAGES, "lighting image")
    _require_choice(frame, FRAMES, "frame")
    if ref.split not in SPLIT_NAMES:
        raise DatasetError(
            f"Split {ref.split!r} cannot be read as a labelled sample: expected one of "
            f"{', '.join(SPLIT_NAMES)}. test_private has no masks."
        )

    rgb = np.array(_open_image(ref.path(f"{image}.png")).convert("RGB"), dtype=np.uint8)
    depth = read_depth_m(ref.path("depth.png"), ref.path("info_depth.yaml"))
    _require_same_size(ref.path("depth.png"), depth.shape, ref.path(f"{image}.png"), rgb.shape[:2])
    pose = read_pose(ref.path("pose.txt")) if frame == "world" else None
    xyz = backproject_depth(depth, pose=pose)

    gt_mask = None
    defect_type = _GOOD
    split = SPLIT_NAMES[ref.split]
    if split == "test":
        gt_mask, defect_type = _read_test_masks(ref, rgb.shape[:2])

    return Sample(
        sample_id=f"{snake_case_class(ref.class_folder)}/{split}/{defect_type}/{ref.index:03d}",
        class_name=snake_case_class(ref.class_folder),
        rgb=rgb,
        xyz=xyz,
        gt_mask=gt_mask,
        label=0 if defect_type == _GOOD else 1,
        defect_type=defect_type,
    )


def convert_eyecandies(
    source: str | Path,
    destination: str | Path,
    *,
    image: str = DEFAULT_IMAGE,
    frame: str = "camera",
    classes: list[str] | None = None,
) -> ConversionSummary:
    """Convert raw Eyecandies classes to the MVTec 3D-AD layout under `destination`.

    `classes` are raw folder names (default: every class found). train → train/good,
    val → validation/good, test_public → test/{good,bumps,dents,colors,normals,combined}
    with 0/255 gt masks. Stems are the index with 3 digits. test_private is skipped.
    Every output path is built from relative parts under `destination`, so no part can
    replace the root. A `conversion.json` manifest records the settings. When it
    matches, nothing is written. Otherwise the tree is written to a hidden sibling
    folder and renamed into place. Raises DatasetError when `destination` overlaps
    `source` (raw data is never overwritten) or is a non-empty folder that is not an
    earlier conversion.
    """
    _require_choice(image, LIGHTING_IMAGES, "lighting image")
    _require_choice(frame, FRAMES, "frame")
    source_path = Path(source).resolve()
    destination_path = Path(destination).resolve()
    _require_disjoint(source_path, destination_path)

    class_folders = list_eyecandies_classes(source_path) if classes is None else list(classes)
    manifest = {
        "converter": "sensors_sim.eyecandies",
        "converter_version": _CONVERTER_VERSION,
        "source": str(source_path),
        "image": image,
        "frame": frame,
        "classes": class_folders,
    }
    summary = ConversionSummary(destination=destination_path)
    if _conversion_matches(destination_path, manifest):
        logger.info("Converted Eyecandies tree at %s is up to date", destination_path)
        summary.up_to_date = True
        summary.counts = json.loads((destination_path / _MANIFEST).read_text())["counts"]
        return summary
    _require_replaceable(destination_path)

    destination_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination_path.name}.partial-", dir=destination_path.parent))
    staging.chmod(0o755)
    try:
        for class_folder in class_folders:
            summary.counts[snake_case_class(class_folder)] = _convert_class(
                source_path, class_folder, staging, image=image, frame=frame, summary=summary
            )
        manifest["counts"] = summary.counts
        (staging / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _swap_into_place(staging, destination_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    logger.info("Converted %d Eyecandies classes from %s to %s", len(class_folders), source_path, destination_path)
    return summary


def _convert_class(
    source: Path, class_folder: str, staging: Path, *, image: str, frame: str, summary: ConversionSummary
) -> dict[str, int]:
    if not (source / class_folder).is_dir():
        raise DatasetError(f"Eyecandies class folder {source / class_folder} does not exist.")

    counts: dict[str, int] = {}
    for raw_split, split in SPLIT_NAMES.items():
        if not _split_folder(source / class_folder, raw_split).is_dir():
            logger.warning("Eyecandies class %s has no %s split, so it is skipped", class_folder, raw_split)
            continue
        refs = list_eyecandies_samples(source, class_folder, raw_split)
        for ref in refs:
            sample = read_eyecandies_sample(ref, image=image, frame=frame)
            _write_sample(staging, sample)
        counts[split] = len(refs)

    private = _split_folder(source / class_folder, "test_private")
    if private.is_dir():
        skipped = len(list_eyecandies_samples(source, class_folder, "test_private"))
        summary.skipped_private += skipped
        logger.info("Skipped %d test_private samples of %s: they have no masks", skipped, class_folder)
    return counts


def _write_sample(staging: Path, sample: Sample) -> None:
    # sample_id is "<class>/<split>/<defect>/<stem>": four relative parts.
    class_name, split, defect_type, stem = sample.sample_id.split("/")
    folder = _join_relative(staging, class_name, split, defect_type)
    for sub in ("rgb", "xyz") + (("gt",) if sample.gt_mask is not None else ()):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(sample.rgb).save(folder / "rgb" / f"{stem}.png", compress_level=1)
    tifffile.imwrite(folder / "xyz" / f"{stem}.tiff", sample.xyz, photometric="rgb")
    if sample.gt_mask is not None:
        Image.fromarray(sample.gt_mask * np.uint8(255)).save(folder / "gt" / f"{stem}.png")


def _join_relative(root: Path, *parts: str) -> Path:
    """Join `parts` under `root`, rejecting absolute parts and `..`.

    pathlib and os.path.join both discard the root when a later part is absolute, so
    a part such as "/train/data" would silently point outside the dataset.
    """
    for part in parts:
        if Path(part).is_absolute() or ".." in Path(part).parts:
            raise DatasetError(f"Invalid path part {part!r} under {root}: expected a relative name.")
    return root.joinpath(*parts)


def _split_folder(class_path: Path, split: str) -> Path:
    return _join_relative(class_path, split, _DATA_FOLDER)


def _read_test_masks(ref: EyecandiesRef, shape: tuple[int, int]) -> tuple[np.ndarray, str]:
    union_path = ref.path("mask.png")
    if not union_path.is_file():
        raise DatasetError(f"Missing mask {union_path}: every test_public sample needs its union mask.")
    union = _read_mask(union_path, shape)

    kinds = [kind for kind in MASK_TYPES if ref.path(f"{kind}_mask.png").is_file()
             and _read_mask(ref.path(f"{kind}_mask.png"), shape).any()]
    if not union.any():
        return union, _GOOD
    return union, kinds[0] if len(kinds) == 1 else _COMBINED


def _read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    mask = np.array(_open_image(path).convert("L"), dtype=np.uint8)
    _require_same_size(path, mask.shape, None, shape)
    return (mask > 0).astype(np.uint8)


def _read_normalization(info_path: Path) -> tuple[float, float]:
    try:
        info = yaml.safe_load(info_path.read_text(encoding="utf-8"))
        depth_min = float(info["normalization"]["min"])
        depth_max = float(info["normalization"]["max"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as error:
        raise DatasetError(
            f"Invalid depth info {info_path}: expected normalization.min and normalization.max "
            f"in metres ({error!r})."
        ) from error
    if not (np.isfinite(depth_min) and np.isfinite(depth_max)) or depth_min > depth_max:
        raise DatasetError(
            f"Invalid depth info {info_path}: need finite min ≤ max, got min={depth_min}, max={depth_max}."
        )
    return depth_min, depth_max


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except FileNotFoundError as error:
        raise DatasetError(f"Missing Eyecandies file {path}.") from error
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DatasetError(f"Failed to read image {path}: {error}. Replace the file.") from error


def _require_same_size(path: Path, shape: tuple[int, ...], reference: Path | None, expected: tuple[int, ...]) -> None:
    if tuple(shape) != tuple(expected):
        against = f" of {reference.name}" if reference is not None else " of the sample"
        raise DatasetError(
            f"Size mismatch in {path}: {shape[1]}×{shape[0]} but expected the size{against}, "
            f"{expected[1]}×{expected[0]} (width×height)."
        )


def _require_choice(value: str, choices: tuple[str, ...], role: str) -> None:
    if value not in choices:
        raise DatasetError(f"Unknown {role} {value!r}: expected one of {', '.join(choices)}.")


def _require_disjoint(source: Path, destination: Path) -> None:
    if destination == source or destination.is_relative_to(source) or source.is_relative_to(destination):
        raise DatasetError(
            f"Destination {destination} overlaps the raw dataset {source}. Choose a folder outside "
            "it, because the converter never writes into raw data."
        )


def _conversion_matches(destination: Path, manifest: dict) -> bool:
    try:
        existing = json.loads((destination / _MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(existing, dict) or "counts" not in existing:
        return False
    if any(existing.get(key) != value for key, value in manifest.items()):
        return False
    return all((destination / snake_case_class(name)).is_dir() for name in manifest["classes"])


def _require_replaceable(destination: Path) -> None:
    if not destination.exists():
        return
    if not destination.is_dir():
        raise DatasetError(f"Destination {destination} is a file. Pass a folder path.")
    if (destination / _MANIFEST).is_file() or not any(destination.iterdir()):
        return
    raise DatasetError(
        f"Cannot convert into {destination}: the folder is not empty and contains no {_MANIFEST}, "
        "so it may contain other data. Pass an empty or new folder."
    )


def _swap_into_place(staging: Path, destination: Path) -> None:
    if destination.exists():
        retired = destination.with_name(f".{destination.name}.old")
        shutil.rmtree(retired, ignore_errors=True)
        destination.rename(retired)
        staging.rename(destination)
        shutil.rmtree(retired, ignore_errors=True)
        return
    staging.rename(destination)
