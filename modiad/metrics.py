"""Exact detection metrics: image AUROC, pixel AUROC and AUPRO, plus report tables.

The AUPRO follows the MVTec 3D-AD evaluation code (``pro_curve_util.compute_pro`` and
``generic_util.trapezoid``, MVTec Software GmbH, 2021). Scores are used as given: no
sigmoid, no clipping, no per-image normalisation, so only their order matters.
Ties are exact. An AUROC counts a tied (anomalous, normal) pair as one half, and the
PRO curve gets one point per distinct score.

Inputs that leave a metric undefined raise ``ValueError`` naming the problem instead of
returning a number. These are: empty input, only one label present, NaN or infinite
scores, a map whose shape differs from its mask's, and (for AUPRO) no defect region.

Anomaly maps and ground-truth masks are passed as a sequence of 2-D arrays or as one
N×H×W array. Sizes may differ between images, but each map must have its mask's shape.
A mask marks defect pixels with any non-zero value (bool, 0/1 or 0/255 all work).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

__all__ = [
    "DEFAULT_FPR_LIMITS",
    "DEFAULT_TABLE_KEYS",
    "aupro",
    "aupro_at",
    "aupro_key",
    "class_report",
    "format_table",
    "image_auroc",
    "mean_report",
    "pixel_auroc",
]

logger = logging.getLogger(__name__)

DEFAULT_FPR_LIMITS: tuple[float, ...] = (0.3, 0.1, 0.05, 0.01)
"""FPR limits reported for AUPRO. 0.3 is the MVTec standard. The lower limits weigh the
low false-alarm operating points that a production line can afford."""

DEFAULT_TABLE_KEYS: tuple[str, ...] = ("i_auroc", "aupro@0.1", "aupro@0.05")
"""Report keys shown by `format_table` unless the caller picks others."""

# Sorted scores are scanned in blocks of at most this many elements. By estimate, a block
# needs up to 80 bytes of temporaries per element (20 MiB at 2**18). Larger blocks would
# only save NumPy call overhead, which is already negligible at this size.
_BLOCK_ELEMENTS = 1 << 18

# Inputs under 16 · 2**18 elements are scanned in about 16 blocks of at least this many
# elements. Their temporaries then stay near 5 bytes per element, or under about 320 KiB.
_MIN_BLOCK_ELEMENTS = 1 << 12

# 8-connectivity: defect pixels that touch only at a corner belong to the same region.
_REGION_STRUCTURE = np.ones((3, 3), dtype=bool)

# Array dtype kinds accepted for scores and masks: bool, signed and unsigned integer, float.
_REAL_KINDS = "biuf"


@dataclass(frozen=True)
class _ImageSet:
    """Validated anomaly maps with their masks, and the pixel counts of the whole set."""

    maps: list[np.ndarray]
    masks: list[np.ndarray]
    score_dtype: np.dtype
    n_pixels: int
    n_defect_pixels: int


@dataclass(frozen=True)
class _PixelPools:
    """Scores of all pixels of an image set, split by ground truth and sorted ascending.

    ``pro_suffix`` is None unless defect regions were labelled. Otherwise it is a float64
    array of length ``positives.size + 1`` where ``pro_suffix[j]`` is the PRO reached by
    the pixels ``positives[j:]``. Each defect pixel weighs 1 / (n_regions · region size),
    so a whole region adds 1 / n_regions, and ``pro_suffix[-1]`` is 0.
    """

    negatives: np.ndarray
    positives: np.ndarray
    pro_suffix: np.ndarray | None
    n_regions: int


def image_auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Compute the image-level AUROC of one score per image.

    Args:
        scores: shape (N,), one finite score per image. Higher means more anomalous.
            The image score of an anomaly map is usually its maximum.
        labels: shape (N,), 0 for a normal image and 1 for an anomalous one (bool works).

    Returns:
        The probability that an anomalous image scores higher than a normal one, with
        ties counted as one half. This is the exact area under the ROC curve.

    Raises:
        ValueError: on empty or mismatched input, a non-finite score (named by index),
            a label other than 0 or 1, or when only one label is present.
    """
    score_array = np.asarray(scores)
    label_array = np.asarray(labels)
    _check_image_scores(score_array, label_array)

    is_anomalous = label_array == 1
    n_anomalous = int(np.count_nonzero(is_anomalous))
    if n_anomalous == 0 or n_anomalous == label_array.size:
        present = 1 if n_anomalous else 0
        raise ValueError(
            f"image AUROC is undefined because all {label_array.size} images have label {present}. "
            "Evaluate on a set with both normal (0) and anomalous (1) images"
        )

    negatives = np.sort(score_array[~is_anomalous])
    positives = np.sort(score_array[is_anomalous])
    return _auroc_from_sorted(negatives, positives)


def pixel_auroc(anomaly_maps: Any, gt_masks: Any) -> float:
    """Compute the pixel-level AUROC over all pixels of all images.

    Every pixel is one sample: positive where its mask is non-zero, negative elsewhere.
    The result is exact, with ties counted as one half. Extra memory is one copy of the
    scores plus small per-block buffers, because the two pools are sorted in place and
    ranked against each other by binary search.

    Raises:
        ValueError: on invalid maps or masks (see the module docstring), or when all
            pixels are defect-free or all are defective.
    """
    images = _validate_images(anomaly_maps, gt_masks)
    if images.n_defect_pixels == 0 or images.n_defect_pixels == images.n_pixels:
        present = "defective" if images.n_defect_pixels else "defect-free"
        raise ValueError(
            f"pixel AUROC is undefined because all {images.n_pixels} pixels are {present}. "
            "Evaluate on masks with both defect and defect-free pixels"
        )

    pools = _collect_pools(images, label_regions=False)
    return _auroc_from_sorted(pools.negatives, pools.positives)


def aupro(anomaly_maps: Any, gt_masks: Any, fpr_limit: float = 0.3) -> float:
    """Compute the normalised area under the PRO curve up to ``fpr_limit``.

    See `aupro_at` for the definition. The result lies in [0, 1], and a constant map gives
    ``fpr_limit / 2``.
    """
    return aupro_at(anomaly_maps, gt_masks, limits=(fpr_limit,))[float(fpr_limit)]


def aupro_at(
    anomaly_maps: Any,
    gt_masks: Any,
    limits: Iterable[float] = DEFAULT_FPR_LIMITS,
) -> dict[float, float]:
    """Compute the normalised AUPRO at several FPR limits from one PRO curve.

    The curve follows the MVTec reference evaluation:

    - Defect regions are the 8-connected components of each mask, so a region never
      spans two images.
    - The negative pool is every defect-free pixel of every image, good images included.
    - At threshold t, FPR(t) is the share of the pool scoring at least t, and PRO(t) is
      the plain mean over all regions of the share of the region's pixels scoring at
      least t.
    - The curve has one point per distinct score, plus (0, 0) and (1, 1). Pixels with
      tied scores therefore enter together, without sampling of thresholds.
    - The area up to each limit uses the trapezoid rule. The curve is interpolated
      linearly at the limit, and the area is divided by the limit.

    FPR and PRO are float64 here. The MVTec 3D-AD code casts the FPR to float32, so its
    results can differ from these by float32 rounding.

    Args:
        anomaly_maps: N maps of shape (H_i, W_i) with finite scores, or an N×H×W array.
        gt_masks: N masks of the same shapes, non-zero on defect pixels.
        limits: FPR limits, each in (0, 1].

    Returns:
        A dict from each limit (as float) to its AUPRO in [0, 1].

    Raises:
        ValueError: on invalid maps, masks or limits, when no mask contains a defect, or
            when every pixel is a defect pixel (FPR is then undefined).
    """
    limit_values = _validate_limits(limits)
    images = _validate_images(anomaly_maps, gt_masks)
    _require_defects_and_background(images)

    pools = _collect_pools(images, label_regions=True)
    logger.debug(
        "AUPRO over %d images: %d defect-free pixels, %d defect pixels in %d regions",
        len(images.maps),
        pools.negatives.size,
        pools.positives.size,
        pools.n_regions,
    )
    return _integrate_pro_curve(pools, limit_values)


def aupro_key(limit: float) -> str:
    """Return the report key of the AUPRO at ``limit``, for example "aupro@0.05"."""
    return f"aupro@{float(limit):g}"


def class_report(
    scores: ArrayLike,
    labels: ArrayLike,
    anomaly_maps: Any,
    gt_masks: Any,
    limits: Iterable[float] = DEFAULT_FPR_LIMITS,
) -> dict[str, float]:
    """Compute every detection metric of one class's test set.

    Image i has the score ``scores[i]``, the label ``labels[i]``, the map
    ``anomaly_maps[i]`` and the mask ``gt_masks[i]``. The pixels are split and sorted
    once and shared by the pixel AUROC and the AUPRO.

    Returns:
        {"i_auroc", "p_auroc", "aupro@<limit>" for each limit}. With the default limits,
        the AUPRO keys are "aupro@0.3", "aupro@0.1", "aupro@0.05" and "aupro@0.01".

    Raises:
        ValueError: if any metric is undefined (see `image_auroc` and `aupro_at`), or if
            the number of scores differs from the number of maps.
    """
    limit_values = _validate_limits(limits)
    report = {"i_auroc": image_auroc(scores, labels)}

    images = _validate_images(anomaly_maps, gt_masks)
    n_scores = np.asarray(scores).shape[0]
    if n_scores != len(images.maps):
        raise ValueError(
            f"got {n_scores} image scores but {len(images.maps)} anomaly maps. "
            "Pass one score, label, map and mask per test image"
        )
    _require_defects_and_background(images)

    pools = _collect_pools(images, label_regions=True)
    report["p_auroc"] = _auroc_from_sorted(pools.negatives, pools.positives)
    for limit, area in _integrate_pro_curve(pools, limit_values).items():
        report[aupro_key(limit)] = area
    return report


def mean_report(per_class: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Average each metric over classes, each class weighing the same.

    Args:
        per_class: class name to its report, as made by `class_report`.

    Returns:
        The mean of each key, in the key order of the first class. A NaN value in any
        class makes that key's mean NaN.

    Raises:
        ValueError: if ``per_class`` is empty or the classes report different keys.
    """
    if not per_class:
        raise ValueError("no class reports to average. Pass at least one class report")

    reference_class, reference_report = next(iter(per_class.items()))
    keys = list(reference_report)
    for class_name, report in per_class.items():
        if set(report) != set(keys):
            raise ValueError(
                f"class {class_name!r} reports keys {sorted(report)} but class "
                f"{reference_class!r} reports {sorted(keys)}. Build all reports with the "
                "same limits"
            )

    return {
        key: math.fsum(float(report[key]) for report in per_class.values()) / len(per_class)
        for key in keys
    }


def format_table(
    per_class: Mapping[str, Mapping[str, float]],
    mean: Mapping[str, float],
    keys: Sequence[str] = DEFAULT_TABLE_KEYS,
) -> str:
    """Format reports as a fixed-width text table with 3 decimals.

    There is one row per class, in the mapping's order, then a "mean" row. Rules of "-"
    separate the header and the mean row. Every line has the same width, and the string
    has no trailing newline.

    Raises:
        ValueError: if a row lacks one of ``keys``.
    """
    rows = [(name, _format_row_values(name, per_class[name], keys)) for name in per_class]
    rows.append(("mean", _format_row_values("mean", mean, keys)))

    name_width = max(len("class"), *(len(name) for name, _ in rows))
    value_widths = [
        max(len(key), *(len(values[column]) for _, values in rows))
        for column, key in enumerate(keys)
    ]

    def join_cells(first: str, cells: Sequence[str]) -> str:
        padded = [cell.rjust(width) for cell, width in zip(cells, value_widths)]
        return "  ".join([first.ljust(name_width), *padded])

    header = join_cells("class", keys)
    rule = "-" * len(header)
    lines = [header, rule]
    lines.extend(join_cells(name, values) for name, values in rows[:-1])
    lines.append(rule)
    lines.append(join_cells(*rows[-1]))
    return "\n".join(lines)


def _format_row_values(
    row_name: str, report: Mapping[str, float], keys: Sequence[str]
) -> list[str]:
    missing = [key for key in keys if key not in report]
    if missing:
        raise ValueError(
            f"row {row_name!r} has no value for {missing}. It has {sorted(report)}. "
            "Pass keys that every report contains"
        )
    return [f"{float(report[key]):.3f}" for key in keys]


def _check_image_scores(scores: np.ndarray, labels: np.ndarray) -> None:
    """Raise ValueError unless scores and labels are two equal-length 1-D real arrays."""
    if scores.ndim != 1 or labels.ndim != 1:
        raise ValueError(
            f"image scores and labels must be 1-D, got shapes {scores.shape} and "
            f"{labels.shape}. Pass one score and one label per image"
        )
    if scores.size == 0:
        raise ValueError("no image scores given. Pass at least one normal and one anomalous image")
    if scores.size != labels.size:
        raise ValueError(
            f"got {scores.size} image scores but {labels.size} labels. Pass one label per score"
        )
    if scores.dtype.kind not in _REAL_KINDS:
        raise ValueError(f"image scores have dtype {scores.dtype}. Pass real numbers")
    if labels.dtype.kind not in _REAL_KINDS:
        raise ValueError(
            f"image labels have dtype {labels.dtype}. Pass 0 (normal) or 1 (anomalous)"
        )

    if scores.dtype.kind == "f":
        non_finite = np.flatnonzero(~np.isfinite(scores))
        if non_finite.size:
            index = int(non_finite[0])
            raise ValueError(
                f"image score {index} is {scores[index]}. Scores must be finite, "
                "so fix the scoring that produced it"
            )

    invalid = np.flatnonzero((labels != 0) & (labels != 1))
    if invalid.size:
        index = int(invalid[0])
        raise ValueError(
            f"image label {index} is {labels[index]}. Labels must be 0 (normal) or 1 (anomalous)"
        )


def _as_image_list(images: Any, name: str) -> list[np.ndarray]:
    """Split an N×H×W array or a sequence of 2-D arrays into a list of 2-D arrays."""
    if hasattr(images, "ndim"):
        stacked = np.asarray(images)
        if stacked.ndim != 3:
            raise ValueError(
                f"{name} must be an N×H×W array or a sequence of 2-D arrays, got an array "
                f"of shape {stacked.shape}. Wrap a single map or mask in a list"
            )
        return list(stacked)
    return [np.asarray(image) for image in images]


def _validate_images(anomaly_maps: Any, gt_masks: Any) -> _ImageSet:
    """Check every map against its mask and count the pixels of the whole set."""
    maps = _as_image_list(anomaly_maps, "anomaly_maps")
    masks = _as_image_list(gt_masks, "gt_masks")
    if not maps:
        raise ValueError("no anomaly maps given. Pass at least one map with its ground-truth mask")
    if len(maps) != len(masks):
        raise ValueError(
            f"got {len(maps)} anomaly maps but {len(masks)} ground-truth masks. "
            "Pass one mask per map"
        )

    n_pixels = 0
    n_defect_pixels = 0
    for index, (anomaly_map, mask) in enumerate(zip(maps, masks)):
        _check_map_and_mask(index, anomaly_map, mask)
        n_pixels += anomaly_map.size
        n_defect_pixels += int(np.count_nonzero(mask))

    if n_pixels == 0:
        raise ValueError(
            "all anomaly maps are empty (zero pixels). Pass maps with at least one pixel"
        )

    score_dtype = np.result_type(*{anomaly_map.dtype for anomaly_map in maps})
    return _ImageSet(maps, masks, score_dtype, n_pixels, n_defect_pixels)


def _check_map_and_mask(index: int, anomaly_map: np.ndarray, mask: np.ndarray) -> None:
    if anomaly_map.ndim != 2:
        raise ValueError(
            f"anomaly map {index} has shape {anomaly_map.shape}. Each map must be 2-D (H×W)"
        )
    if mask.shape != anomaly_map.shape:
        raise ValueError(
            f"anomaly map {index} has shape {anomaly_map.shape} but its ground-truth mask "
            f"has shape {mask.shape}. Resize the map to its mask's size before evaluation"
        )
    if anomaly_map.dtype.kind not in _REAL_KINDS:
        raise ValueError(
            f"anomaly map {index} has dtype {anomaly_map.dtype}. Scores must be real numbers"
        )
    if mask.dtype.kind not in _REAL_KINDS:
        raise ValueError(
            f"ground-truth mask {index} has dtype {mask.dtype}. Pass bool or integer masks "
            "with non-zero values on defect pixels"
        )

    if anomaly_map.dtype.kind == "f" and not np.isfinite(anomaly_map).all():
        raise ValueError(
            f"anomaly map {index} contains NaN or infinite scores. Scores must be finite, "
            "so fix the scoring that produced this map"
        )
    if mask.dtype.kind == "f" and not np.isfinite(mask).all():
        raise ValueError(
            f"ground-truth mask {index} contains NaN or infinite values. "
            "Pass masks that are 0 on normal pixels and non-zero on defect pixels"
        )


def _require_defects_and_background(images: _ImageSet) -> None:
    if images.n_defect_pixels == 0:
        raise ValueError(
            f"AUPRO is undefined because none of the {len(images.masks)} ground-truth "
            "masks contains a defect region. Evaluate on a set with at least one "
            "anomalous image and its mask"
        )
    if images.n_defect_pixels == images.n_pixels:
        raise ValueError(
            f"AUPRO is undefined because all {images.n_pixels} pixels are defect pixels, so the "
            "false-positive rate has no defect-free pixels to count. Include normal pixels"
        )


def _validate_limits(limits: Iterable[float]) -> tuple[float, ...]:
    if isinstance(limits, (int, float)):
        raise TypeError(
            f"limits must be a sequence of FPR limits, got the number {limits!r}. "
            "Wrap it in a tuple"
        )

    values = tuple(float(limit) for limit in limits)
    if not values:
        raise ValueError("no FPR limits given. Pass at least one limit in (0, 1]")
    for limit in values:
        if not 0.0 < limit <= 1.0:
            raise ValueError(
                f"FPR limit {limit!r} is outside (0, 1]. Pass limits such as 0.3 or 0.05"
            )
    return values


def _collect_pools(images: _ImageSet, label_regions: bool) -> _PixelPools:
    """Copy the scores into a defect-free pool and a defect pool, and sort both.

    With ``label_regions``, each defect pixel also gets its region's PRO weight, and the
    defect pool is sorted with an argsort so that the weights follow their scores.
    """
    n_positive = images.n_defect_pixels
    negatives = np.empty(images.n_pixels - n_positive, dtype=images.score_dtype)
    positives = np.empty(n_positive, dtype=images.score_dtype)
    region_ids = np.empty(n_positive if label_regions else 0, dtype=np.int32)
    region_sizes: list[np.ndarray] = []

    negative_at = 0
    positive_at = 0
    n_regions = 0
    for anomaly_map, mask in zip(images.maps, images.masks):
        is_defect = mask != 0
        n_image_positive = int(np.count_nonzero(is_defect))
        n_image_negative = is_defect.size - n_image_positive

        negatives[negative_at : negative_at + n_image_negative] = anomaly_map[~is_defect]
        positives[positive_at : positive_at + n_image_positive] = anomaly_map[is_defect]

        if label_regions and n_image_positive:
            labeled, n_image_regions = ndimage.label(is_defect, structure=_REGION_STRUCTURE)
            # Global 0-based region id: this image's label 1 maps to id n_regions.
            image_region_ids = labeled[is_defect] + (n_regions - 1)
            region_ids[positive_at : positive_at + n_image_positive] = image_region_ids
            region_sizes.append(np.bincount(labeled.ravel(), minlength=n_image_regions + 1)[1:])
            n_regions += n_image_regions

        negative_at += n_image_negative
        positive_at += n_image_positive

    negatives.sort()
    if not label_regions:
        positives.sort()
        return _PixelPools(negatives, positives, None, 0)

    all_region_sizes = np.concatenate(region_sizes)
    pro_suffix = _sort_with_pro_weights(positives, region_ids, all_region_sizes, n_regions)
    return _PixelPools(negatives, positives, pro_suffix, n_regions)


def _sort_with_pro_weights(
    positives: np.ndarray, region_ids: np.ndarray, region_sizes: np.ndarray, n_regions: int
) -> NDArray[np.float64]:
    """Sort the defect scores ascending in place and return their PRO suffix sums.

    ``region_ids`` is reordered in place with the scores. The peak extra memory is the
    argsort indices (8 bytes per defect pixel) plus one gather buffer of the score dtype.

    NOTE: with float32 maps and bool masks, the whole AUPRO then peaks near 19 bytes per
    defect pixel. That is under one input copy at 1 % defect pixels, but 2.5 copies at
    50 % and 3.8 copies at 90 % (20 maps of 800×800, measured with
    ``benchmarks/bench_metrics.py --defect-share``).
    """
    order = np.argsort(positives)
    positives[...] = positives[order]
    region_ids[...] = region_ids[order]
    del order

    region_weights = 1.0 / (n_regions * region_sizes.astype(np.float64))
    pro_suffix = np.empty(region_ids.size + 1, dtype=np.float64)
    pro_suffix[-1] = 0.0
    # Block by block, because np.take converts int32 indices to a full intp copy and,
    # in its default mode, also buffers ``out``. All indices are valid, so "clip" is exact.
    block_size = _block_size(region_ids.size)
    for start in range(0, region_ids.size, block_size):
        stop = min(start + block_size, region_ids.size)
        np.take(region_weights, region_ids[start:stop], out=pro_suffix[start:stop], mode="clip")

    # A cumulative sum over the reversed view turns the weights into suffix sums in place.
    np.cumsum(pro_suffix[::-1], out=pro_suffix[::-1])
    return pro_suffix


def _block_size(n_elements: int) -> int:
    return min(_BLOCK_ELEMENTS, max(_MIN_BLOCK_ELEMENTS, n_elements // 16))


def _auroc_from_sorted(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Compute P(positive > negative) + P(positive = negative) / 2 for two sorted pools.

    The smaller pool is located in the larger one by binary search, block by block. The
    count of wins is kept doubled, as a Python int, so that it stays exact.
    """
    n_negative = negatives.size
    n_positive = positives.size
    doubled_wins = 0

    if n_positive <= n_negative:
        block_size = _block_size(n_positive)
        for start in range(0, n_positive, block_size):
            block = positives[start : start + block_size]
            # For each positive, (negatives below) + (negatives at or below) = 2·wins + ties.
            doubled_wins += int(np.searchsorted(negatives, block, side="left").sum())
            doubled_wins += int(np.searchsorted(negatives, block, side="right").sum())
    else:
        block_size = _block_size(n_negative)
        for start in range(0, n_negative, block_size):
            block = negatives[start : start + block_size]
            # For each negative, the positives above it count twice and the tied ones once.
            below = int(np.searchsorted(positives, block, side="left").sum())
            at_or_below = int(np.searchsorted(positives, block, side="right").sum())
            doubled_wins += 2 * n_positive * block.size - below - at_or_below

    return doubled_wins / (2 * n_positive * n_negative)


def _integrate_pro_curve(pools: _PixelPools, limits: tuple[float, ...]) -> dict[float, float]:
    """Integrate the exact PRO curve up to each limit and normalise by the limit.

    Defect-free scores are scanned from the highest down, one distinct value v at a
    time. Between two distinct defect-free values, only defect pixels enter, so the
    curve rises vertically and adds no area. The segment that ends at v therefore runs
    from (FPR above v, PRO of defect pixels > v) to (FPR(v), PRO(v)), and this covers
    every point of the full curve. The scan stops once the FPR passes the largest limit.
    """
    assert pools.pro_suffix is not None
    negatives = pools.negatives
    n_negative = negatives.size
    areas = dict.fromkeys(limits, 0.0)
    max_limit = max(limits)

    block_size = _block_size(n_negative)
    fpr_before = 0.0
    stop = n_negative  # negatives[stop:] are already scanned
    while stop > 0 and fpr_before < max_limit:
        start = max(0, stop - block_size)
        block = negatives[start:stop][::-1]

        # Keep the last element of each run of equal scores: it carries the full count.
        is_run_end = np.empty(block.size, dtype=bool)
        np.not_equal(block[:-1], block[1:], out=is_run_end[:-1])
        is_run_end[-1] = start == 0 or block[-1] != negatives[start - 1]
        run_ends = np.flatnonzero(is_run_end)
        n_scanned_before = n_negative - stop
        stop = start
        if run_ends.size == 0:
            continue

        # The element at block position j is the (n_scanned_before + j + 1)-th highest.
        thresholds = block[run_ends]
        fpr = (run_ends + (n_scanned_before + 1)) / n_negative
        pro_above, pro_at = _pro_around(pools, thresholds)
        fpr_start = np.empty_like(fpr)
        fpr_start[0] = fpr_before
        fpr_start[1:] = fpr[:-1]

        _add_segment_areas(areas, fpr_start, fpr, pro_above, pro_at)
        fpr_before = float(fpr[-1])

    # Rounding in the weight sums can leave a result a few ulp outside [0, 1].
    return {limit: float(min(1.0, max(0.0, areas[limit] / limit))) for limit in limits}


def _pro_around(pools: _PixelPools, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the PRO of defect pixels scoring > t and >= t, for descending thresholds t.

    The search runs in the slice of defect scores within the thresholds' range, which
    stays in cache, with the thresholds ascending because NumPy's binary search reuses
    its previous bound for ascending keys. The second search runs only for thresholds
    that a defect pixel ties, since elsewhere both counts are equal.
    """
    assert pools.pro_suffix is not None
    ascending = thresholds[::-1]
    first = int(np.searchsorted(pools.positives, ascending[0], side="left"))
    stop = int(np.searchsorted(pools.positives, ascending[-1], side="right"))
    positives = pools.positives[first:stop]

    above_start = np.searchsorted(positives, ascending, side="right")
    at_start = above_start.copy()
    if positives.size:
        previous = positives[np.maximum(above_start - 1, 0)]
        is_tied = (above_start > 0) & (previous == ascending)
        if is_tied.any():
            at_start[is_tied] = np.searchsorted(positives, ascending[is_tied], side="left")
    above_start += first
    at_start += first

    return pools.pro_suffix[above_start][::-1], pools.pro_suffix[at_start][::-1]


def _add_segment_areas(
    areas: dict[float, float],
    fpr_start: NDArray[np.float64],
    fpr_end: NDArray[np.float64],
    pro_start: NDArray[np.float64],
    pro_end: NDArray[np.float64],
) -> None:
    """Add the trapezoid areas of curve segments, cut at each limit, to ``areas``.

    Segment i runs from (fpr_start[i], pro_start[i]) to (fpr_end[i], pro_end[i]), with
    ``fpr_end`` strictly increasing and ``fpr_start[i+1] == fpr_end[i]``.
    """
    # Twice the area under the first k segments, for every k. One cumulative sum serves
    # every limit, and it avoids a BLAS dot product, whose threads cost more than the
    # arithmetic at this size.
    doubled_areas = fpr_end - fpr_start
    doubled_areas *= pro_start + pro_end
    np.cumsum(doubled_areas, out=doubled_areas)

    for limit in areas:
        if fpr_start[0] >= limit:
            continue

        n_inside = int(np.searchsorted(fpr_end, limit, side="right"))
        if n_inside:
            areas[limit] += 0.5 * float(doubled_areas[n_inside - 1])

        # The segment that crosses the limit counts up to the limit, where its PRO is
        # interpolated linearly.
        if n_inside < fpr_end.size and fpr_start[n_inside] < limit:
            left = float(fpr_start[n_inside])
            fraction = (limit - left) / (float(fpr_end[n_inside]) - left)
            pro_left = float(pro_start[n_inside])
            pro_limit = pro_left + fraction * (float(pro_end[n_inside]) - pro_left)
            areas[limit] += 0.5 * (limit - left) * (pro_left + pro_limit)
