"""Reader for datasets in the MVTec 3D-AD on-disk layout.

The layout, shared by the real MVTec 3D-AD release and the synthetic generator in
`sensors_sim.synthetic`::

    <root>/<class>/train/good/{rgb/NNN.png, xyz/NNN.tiff}
    <root>/<class>/validation/good/{rgb/NNN.png, xyz/NNN.tiff}
    <root>/<class>/test/{good,<defect>}/{rgb/NNN.png, xyz/NNN.tiff, gt/NNN.png}

`rgb` is an 8-bit PNG. `xyz` is a float32 H×W×3 TIFF holding an organized point cloud
in metres, where (0, 0, 0) marks a missing point. Real MVTec files may also hold NaN
for a missing point, so the reader replaces every non-finite point with (0, 0, 0).
`gt` is a PNG with 0 (normal) and 255 (defect). The three files of one sample share
the stem.

This module lives in the shared core because the cloud evaluates on the test split
and must not import `sensors_sim`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from modiad.errors import DatasetError
from modiad.sample import Sample

__all__ = [
    "SPLITS",
    "ClassCounts",
    "DatasetCheck",
    "DatasetProblem",
    "SampleRef",
    "check_dataset",
    "format_check",
    "list_classes",
    "list_samples",
    "load_split",
    "read_sample",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
"""Split folder names of the layout. Only `test` contains defect folders and masks."""

_GOOD = "good"
_RGB_SUFFIX = ".png"
_XYZ_SUFFIX = ".tiff"
_GT_SUFFIX = ".png"
_GT_THRESHOLD = 128
"""Mask values at or above this count as defect. Masks are 0/255, so this only matters
for masks that were resized with interpolation."""

_FIX_HINT = (
    "Run `modiad demo`, which generates the synthetic dataset, or pass --data-root "
    "pointing at an MVTec 3D-AD style dataset"
)


@dataclass(frozen=True)
class SampleRef:
    """Location of one sample on disk, before its files are read.

    `sample_id` has the form "<class>/<split>/<defect_type>/<stem>", e.g.
    "bagel/test/crack/003". `defect_type` is "good" or the defect folder name.
    `gt_path` is set for test samples and None for train and validation samples. A
    test/good sample may have no mask file, and then reads as an all-zero mask.
    """

    sample_id: str
    class_name: str
    split: str
    defect_type: str
    rgb_path: Path
    xyz_path: Path
    gt_path: Path | None


def list_classes(root: str | Path) -> list[str]:
    """Return the sorted class names under `root`.

    A class is a subfolder holding at least one split folder, so the readme and
    license files of the real release are skipped. Raises DatasetError if `root`
    is missing or holds no class.
    """
    root_path = _require_directory(Path(root), "dataset root")
    classes = sorted(
        entry.name
        for entry in root_path.iterdir()
        if entry.is_dir() and any((entry / split).is_dir() for split in SPLITS)
    )
    if not classes:
        raise DatasetError(
            f"No class folders with train/validation/test splits found in {root_path}. "
            f"{_FIX_HINT}."
        )
    return classes


def list_samples(root: str | Path, class_name: str, split: str) -> list[SampleRef]:
    """List the samples of one class and split without reading them.

    The result is sorted with "good" first, then defect folders by name, then by the
    numeric value of the stem (by name for stems that are not numbers). Raises
    DatasetError for a missing root, an unknown class (naming the known classes), an
    unknown or missing split, an rgb file without its xyz twin or the reverse, and a
    defect sample without its mask.
    """
    if split not in SPLITS:
        raise DatasetError(f"Unknown split {split!r}: expected one of {', '.join(SPLITS)}.")

    root_path = Path(root)
    known_classes = list_classes(root_path)
    if class_name not in known_classes:
        raise DatasetError(
            f"Class {class_name!r} not found in {root_path}. "
            f"Known classes: {', '.join(known_classes)}."
        )

    split_dir = _require_directory(root_path / class_name / split, f"{split} split")
    defect_dirs = sorted(entry for entry in split_dir.iterdir() if entry.is_dir())
    if split != "test":
        defect_dirs = [entry for entry in defect_dirs if entry.name == _GOOD]
    if not defect_dirs:
        raise DatasetError(
            f"No sample folders in {split_dir}: expected {split_dir / _GOOD}. {_FIX_HINT}."
        )

    refs: list[SampleRef] = []
    for defect_dir in defect_dirs:
        refs.extend(_list_defect_folder(class_name, split, defect_dir))
    refs.sort(key=_sort_key)
    return refs


def read_sample(ref: SampleRef) -> Sample:
    """Read and validate the files of one sample.

    Returns a Sample with uint8 H×W×3 RGB, float32 H×W×3 xyz where every non-finite
    point is replaced by (0, 0, 0), and for test samples a uint8 0/1 mask. Raises
    DatasetError naming the file when a file is unreadable, xyz is not float32
    H×W×3, or the RGB, xyz and mask sizes differ.
    """
    rgb = _read_rgb(ref.rgb_path)
    xyz = _read_xyz(ref.xyz_path)
    if xyz.shape[:2] != rgb.shape[:2]:
        raise DatasetError(
            f"Size mismatch in {ref.xyz_path}: xyz is {xyz.shape[1]}×{xyz.shape[0]} "
            f"but {ref.rgb_path.name} is {rgb.shape[1]}×{rgb.shape[0]} (width×height). "
            "The rgb, xyz and gt files of one sample must have the same size."
        )

    gt_mask = None
    if ref.split == "test":
        gt_mask = _read_test_mask(ref, rgb.shape[:2])

    return Sample(
        sample_id=ref.sample_id,
        class_name=ref.class_name,
        rgb=rgb,
        xyz=xyz,
        gt_mask=gt_mask,
        label=0 if ref.defect_type == _GOOD else 1,
        defect_type=ref.defect_type,
    )


def load_split(root: str | Path, class_name: str, split: str) -> list[Sample]:
    """Read every sample of one class and split, in `list_samples` order."""
    refs = list_samples(root, class_name, split)
    samples = [read_sample(ref) for ref in refs]
    logger.debug("Loaded %d samples of %s/%s from %s", len(samples), class_name, split, root)
    return samples


def _require_directory(path: Path, role: str) -> Path:
    if not path.exists():
        raise DatasetError(f"The {role} {path} does not exist. {_FIX_HINT}.")
    if not path.is_dir():
        raise DatasetError(f"The {role} {path} is not a directory. {_FIX_HINT}.")
    return path


def _list_defect_folder(class_name: str, split: str, defect_dir: Path) -> list[SampleRef]:
    defect_type = defect_dir.name
    rgb_dir = defect_dir / "rgb"
    xyz_dir = defect_dir / "xyz"
    gt_dir = defect_dir / "gt"
    _require_directory(rgb_dir, "rgb folder")
    _require_directory(xyz_dir, "xyz folder")

    rgb_stems = {path.stem for path in rgb_dir.glob(f"*{_RGB_SUFFIX}")}
    xyz_stems = {path.stem for path in xyz_dir.glob(f"*{_XYZ_SUFFIX}")}
    _require_same_stems(rgb_dir, rgb_stems, xyz_dir, xyz_stems)

    refs = []
    for stem in rgb_stems:
        gt_path = None
        if split == "test":
            gt_path = gt_dir / f"{stem}{_GT_SUFFIX}"
            if defect_type != _GOOD and not gt_path.is_file():
                raise DatasetError(
                    f"Missing defect mask {gt_path} for {rgb_dir / (stem + _RGB_SUFFIX)}. "
                    "Every defect sample in the test split needs a gt mask."
                )
        refs.append(
            SampleRef(
                sample_id=f"{class_name}/{split}/{defect_type}/{stem}",
                class_name=class_name,
                split=split,
                defect_type=defect_type,
                rgb_path=rgb_dir / f"{stem}{_RGB_SUFFIX}",
                xyz_path=xyz_dir / f"{stem}{_XYZ_SUFFIX}",
                gt_path=gt_path,
            )
        )
    return refs


def _require_same_stems(
    rgb_dir: Path, rgb_stems: set[str], xyz_dir: Path, xyz_stems: set[str]
) -> None:
    rgb_only = sorted(rgb_stems - xyz_stems)
    if rgb_only:
        raise DatasetError(
            f"Missing point cloud {xyz_dir / (rgb_only[0] + _XYZ_SUFFIX)} for "
            f"{rgb_dir / (rgb_only[0] + _RGB_SUFFIX)} ({len(rgb_only)} rgb files without xyz)."
        )
    xyz_only = sorted(xyz_stems - rgb_stems)
    if xyz_only:
        raise DatasetError(
            f"Missing image {rgb_dir / (xyz_only[0] + _RGB_SUFFIX)} for "
            f"{xyz_dir / (xyz_only[0] + _XYZ_SUFFIX)} ({len(xyz_only)} xyz files without rgb)."
        )


def _sort_key(ref: SampleRef) -> tuple[bool, str, int, str]:
    stem = ref.rgb_path.stem
    number = int(stem) if re.fullmatch(r"\d+", stem) else -1
    return (ref.defect_type != _GOOD, ref.defect_type, number, stem)


def _read_png(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DatasetError(
            f"Failed to read image {path}: {error}. Replace or regenerate the file."
        ) from error


def _read_rgb(path: Path) -> np.ndarray:
    image = _read_png(path)
    # np.array copies: np.asarray on a Pillow image is read-only, and torch warns on those.
    return np.array(image.convert("RGB"), dtype=np.uint8)


def _read_xyz(path: Path) -> np.ndarray:
    try:
        xyz = tifffile.imread(path)
    except (OSError, ValueError, tifffile.TiffFileError) as error:
        raise DatasetError(
            f"Failed to read point cloud {path}: {error}. Replace or regenerate the file."
        ) from error

    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise DatasetError(
            f"Invalid point cloud {path}: expected shape H×W×3, got {xyz.shape}."
        )
    if xyz.dtype != np.float32:
        raise DatasetError(f"Invalid point cloud {path}: expected float32, got {xyz.dtype}.")

    xyz = np.array(xyz, dtype=np.float32)
    invalid = ~np.isfinite(xyz).all(axis=2)
    if invalid.any():
        xyz[invalid] = 0.0
        logger.debug("Replaced %d non-finite points with (0, 0, 0) in %s", invalid.sum(), path)
    return xyz


def _read_test_mask(ref: SampleRef, image_shape: tuple[int, int]) -> np.ndarray:
    if ref.gt_path is None or not ref.gt_path.is_file():
        # A good test sample without a mask file has no defect pixels.
        return np.zeros(image_shape, dtype=np.uint8)

    image = _read_png(ref.gt_path)
    mask = np.asarray(image.convert("L"), dtype=np.uint8)
    if mask.shape != image_shape:
        raise DatasetError(
            f"Size mismatch in {ref.gt_path}: mask is {mask.shape[1]}×{mask.shape[0]} but "
            f"{ref.rgb_path.name} is {image_shape[1]}×{image_shape[0]} (width×height). "
            "The rgb, xyz and gt files of one sample must have the same size."
        )
    return (mask >= _GT_THRESHOLD).astype(np.uint8)


# ---------------------------------------------------------------------------------
# Tree check: every problem with its path, instead of stopping at the first one


@dataclass(frozen=True)
class DatasetProblem:
    """One problem found by `check_dataset`: the offending path and what is wrong."""

    path: Path
    message: str


@dataclass
class ClassCounts:
    """Sample counts of one class, in the columns of the dataset papers' tables.

    `sizes` contains every distinct image size seen, as (width, height) in pixels.
    """

    train: int = 0
    validation: int = 0
    test_good: int = 0
    test_defect: int = 0
    defect_types: list[str] = field(default_factory=list)
    sizes: set[tuple[int, int]] = field(default_factory=set)


@dataclass
class DatasetCheck:
    """Result of `check_dataset`: counts per class and every problem found."""

    root: Path
    counts: dict[str, ClassCounts] = field(default_factory=dict)
    problems: list[DatasetProblem] = field(default_factory=list)


def check_dataset(root: str | Path, *, read_files: bool = False) -> DatasetCheck:
    """Validate a tree in the MVTec 3D-AD layout and count its samples per class and split.

    Unlike the reader, the check does not stop at the first problem: it records each one
    with its path. It reports missing splits and rgb/xyz folders, unpaired rgb and xyz
    files, defect samples without a mask, unreadable headers, xyz that is not float32
    H×W×3, and size mismatches between rgb, xyz and gt. Only image headers are read,
    unless `read_files` is True, which also decodes every sample with `read_sample` and
    so finds truncated files, at the cost of reading the whole dataset.
    """
    root_path = Path(root)
    check = DatasetCheck(root=root_path)
    try:
        classes = list_classes(root_path)
    except DatasetError as error:
        check.problems.append(DatasetProblem(root_path, str(error)))
        return check

    for class_name in classes:
        counts = ClassCounts()
        check.counts[class_name] = counts
        for split in SPLITS:
            _check_split(root_path, class_name, split, counts, check.problems, read_files)
    return check


def format_check(check: DatasetCheck) -> str:
    """Format the counts as a table in the style of the dataset papers, then the problems."""
    header = ["class", "train", "validation", "test good", "test defect", "defect types", "size (W×H)"]
    rows: list[list[str]] = []
    for class_name, counts in check.counts.items():
        sizes = ", ".join(f"{width}×{height}" for width, height in sorted(counts.sizes)) or "-"
        numbers = [counts.train, counts.validation, counts.test_good, counts.test_defect, len(counts.defect_types)]
        rows.append([class_name, *map(str, numbers), sizes])
    if check.counts:
        classes = check.counts.values()
        totals = [
            sum(counts.train for counts in classes),
            sum(counts.validation for counts in classes),
            sum(counts.test_good for counts in classes),
            sum(counts.test_defect for counts in classes),
            len({defect for counts in classes for defect in counts.defect_types}),
        ]
        rows.append(["total", *map(str, totals), ""])

    # The class column is left-aligned and the others right-aligned, as in a paper table.
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]
    lines = []
    for row in (header, *rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
    lines.insert(1, "  ".join("-" * width for width in widths))

    if check.problems:
        lines.append("")
        lines.append(f"{len(check.problems)} problems found:")
        lines.extend(f"  {problem.path}: {problem.message}" for problem in check.problems)
    else:
        lines.append("")
        lines.append("no problems found")
    return "\n".join(lines)


def _check_split(
    root: Path, class_name: str, split: str, counts: ClassCounts, problems: list[DatasetProblem], read_files: bool
) -> None:
    split_dir = root / class_name / split
    if not split_dir.is_dir():
        problems.append(DatasetProblem(split_dir, f"missing {split} split folder"))
        return

    for defect_dir in sorted(entry for entry in split_dir.iterdir() if entry.is_dir()):
        if split != "test" and defect_dir.name != _GOOD:
            problems.append(DatasetProblem(defect_dir, f"unexpected folder: the {split} split contains only good"))
            continue
        stems = _check_defect_folder(defect_dir, split, counts, problems, read_files)
        if split == "train":
            counts.train += stems
        elif split == "validation":
            counts.validation += stems
        elif defect_dir.name == _GOOD:
            counts.test_good += stems
        else:
            counts.test_defect += stems
            if stems:
                counts.defect_types.append(defect_dir.name)


def _check_defect_folder(
    defect_dir: Path, split: str, counts: ClassCounts, problems: list[DatasetProblem], read_files: bool
) -> int:
    """Check one defect folder and return its count of complete rgb/xyz pairs."""
    rgb_dir, xyz_dir, gt_dir = defect_dir / "rgb", defect_dir / "xyz", defect_dir / "gt"
    for folder in (rgb_dir, xyz_dir):
        if not folder.is_dir():
            problems.append(DatasetProblem(folder, "missing folder"))
    if not (rgb_dir.is_dir() and xyz_dir.is_dir()):
        return 0

    rgb_stems = {path.stem for path in rgb_dir.glob(f"*{_RGB_SUFFIX}")}
    xyz_stems = {path.stem for path in xyz_dir.glob(f"*{_XYZ_SUFFIX}")}
    for stem in sorted(rgb_stems - xyz_stems):
        problems.append(DatasetProblem(rgb_dir / f"{stem}{_RGB_SUFFIX}", f"missing point cloud xyz/{stem}{_XYZ_SUFFIX}"))
    for stem in sorted(xyz_stems - rgb_stems):
        problems.append(DatasetProblem(xyz_dir / f"{stem}{_XYZ_SUFFIX}", f"missing image rgb/{stem}{_RGB_SUFFIX}"))

    paired = sorted(rgb_stems & xyz_stems)
    for stem in paired:
        gt_path = gt_dir / f"{stem}{_GT_SUFFIX}"
        if split == "test" and defect_dir.name != _GOOD and not gt_path.is_file():
            problems.append(DatasetProblem(gt_path, "missing defect mask"))
        _check_headers(rgb_dir / f"{stem}{_RGB_SUFFIX}", xyz_dir / f"{stem}{_XYZ_SUFFIX}",
                       gt_path if split == "test" and gt_path.is_file() else None, counts, problems)

    if read_files:
        _check_decoding(defect_dir, split, paired, problems)
    return len(paired)


def _check_headers(
    rgb_path: Path, xyz_path: Path, gt_path: Path | None, counts: ClassCounts, problems: list[DatasetProblem]
) -> None:
    rgb_size = _image_size(rgb_path, problems)
    if rgb_size is not None:
        counts.sizes.add(rgb_size)

    xyz_size = None
    try:
        with tifffile.TiffFile(xyz_path) as tiff:
            page = tiff.pages[0]
            shape, dtype = page.shape, page.dtype
        if len(shape) != 3 or shape[2] != 3:
            problems.append(DatasetProblem(xyz_path, f"invalid point cloud: expected shape H×W×3, got {shape}"))
        elif dtype != np.float32:
            problems.append(DatasetProblem(xyz_path, f"invalid point cloud: expected float32, got {dtype}"))
        else:
            xyz_size = (shape[1], shape[0])
    except (OSError, ValueError, IndexError, tifffile.TiffFileError) as error:
        problems.append(DatasetProblem(xyz_path, f"unreadable point cloud: {error}"))

    if rgb_size is not None and xyz_size is not None and rgb_size != xyz_size:
        problems.append(DatasetProblem(
            xyz_path, f"size mismatch: xyz is {xyz_size[0]}×{xyz_size[1]} but rgb is {rgb_size[0]}×{rgb_size[1]}"
        ))
    if gt_path is not None:
        gt_size = _image_size(gt_path, problems)
        if rgb_size is not None and gt_size is not None and gt_size != rgb_size:
            problems.append(DatasetProblem(
                gt_path, f"size mismatch: mask is {gt_size[0]}×{gt_size[1]} but rgb is {rgb_size[0]}×{rgb_size[1]}"
            ))


def _image_size(path: Path, problems: list[DatasetProblem]) -> tuple[int, int] | None:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError, ValueError) as error:
        problems.append(DatasetProblem(path, f"unreadable image: {error}"))
        return None


def _check_decoding(defect_dir: Path, split: str, stems: list[str], problems: list[DatasetProblem]) -> None:
    class_name = defect_dir.parent.parent.name
    for stem in stems:
        gt_path = defect_dir / "gt" / f"{stem}{_GT_SUFFIX}" if split == "test" else None
        ref = SampleRef(
            sample_id=f"{class_name}/{split}/{defect_dir.name}/{stem}",
            class_name=class_name,
            split=split,
            defect_type=defect_dir.name,
            rgb_path=defect_dir / "rgb" / f"{stem}{_RGB_SUFFIX}",
            xyz_path=defect_dir / "xyz" / f"{stem}{_XYZ_SUFFIX}",
            gt_path=gt_path,
        )
        try:
            read_sample(ref)
        except DatasetError as error:
            problems.append(DatasetProblem(ref.rgb_path, f"failed to read sample: {error}"))
