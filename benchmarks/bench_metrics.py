"""Benchmark the detection metrics on a full-size synthetic test set.

The set has 100 anomaly maps of 800×800 float32 scores with bool masks by default.
About 70 % of the images contain 1 to 4 blob-shaped defect regions. The rest are good
images, a third of which carry a false-positive bump. Scores are smooth noise plus a
blurred copy of the mask, so they correlate with the defects without separating them.

The script reports:

- the time of `aupro_at` (all standard limits) against one ``numpy.argsort`` over all
  pixels in the same run (target: at most 2×);
- the peak extra memory of `aupro_at`, traced with tracemalloc, against the input size
  (maps plus masks; target: at most about 3 copies);
- the same figures for `pixel_auroc`, and for ``--check`` an argsort-based reference
  AUPRO computed the MVTec way, which must agree with `aupro_at`.

Run from the repository root: ``python benchmarks/bench_metrics.py``
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

from modiad.metrics import DEFAULT_FPR_LIMITS, aupro_at, pixel_auroc

ANOMALOUS_SHARE = 0.7
BACKGROUND_SIGMA_PX = 6.0
DEFECT_BLUR_SIGMA_PX = 4.0
BLOB_WINDOW_PX = 80  # covers the 30 px centre offset plus the 45 px maximum radius


def make_test_set(n_images: int, side_px: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Generate N×H×W float32 anomaly maps and bool masks as described above."""
    rng = np.random.default_rng(seed)
    maps = np.empty((n_images, side_px, side_px), dtype=np.float32)
    masks = np.zeros((n_images, side_px, side_px), dtype=bool)

    for index in range(n_images):
        if rng.random() < ANOMALOUS_SHARE:
            for _ in range(rng.integers(1, 5)):
                _draw_blob(masks[index], rng)
        maps[index] = _smooth_scores(masks[index], rng)

    return maps, masks


def _draw_blob(mask: np.ndarray, rng: np.random.Generator) -> None:
    """Set a blob of 2 to 3 overlapping rotated ellipses, 6 to 45 px in radius, in ``mask``.

    Ellipse centres lie within 30 px of the blob centre, so every ellipse fits in a
    window of 2 * BLOB_WINDOW_PX around it, and only that window is computed.
    """
    side = mask.shape[0]
    centre = rng.uniform(60, side - 60, size=2)
    top, left = (max(0, int(c) - BLOB_WINDOW_PX) for c in centre)
    window = mask[top : top + 2 * BLOB_WINDOW_PX, left : left + 2 * BLOB_WINDOW_PX]
    rows, cols = np.ogrid[top : top + window.shape[0], left : left + window.shape[1]]

    for _ in range(rng.integers(2, 4)):
        offset = np.clip(rng.normal(0.0, 10.0, size=2), -30.0, 30.0)
        radius_row, radius_col = rng.uniform(6, 45, size=2)
        angle = rng.uniform(0, np.pi)
        d_row = rows - (centre[0] + offset[0])
        d_col = cols - (centre[1] + offset[1])
        along = d_row * np.cos(angle) + d_col * np.sin(angle)
        across = -d_row * np.sin(angle) + d_col * np.cos(angle)
        window |= (along / radius_row) ** 2 + (across / radius_col) ** 2 <= 1.0


def _smooth_scores(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return smooth unit-variance noise plus a blurred, randomly scaled copy of the mask."""
    white_noise = rng.standard_normal(mask.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(white_noise, BACKGROUND_SIGMA_PX)
    noise /= noise.std()

    signal = mask.astype(np.float32)
    if not mask.any() and rng.random() < 1 / 3:
        # A false-positive bump on a good image: high scores where no defect is.
        bump = np.zeros(mask.shape, dtype=bool)
        _draw_blob(bump, rng)
        signal = bump.astype(np.float32)
    signal = ndimage.gaussian_filter(signal, DEFECT_BLUR_SIGMA_PX)
    return noise + rng.uniform(1.0, 3.0) * signal


def reference_aupro_by_argsort(
    maps: np.ndarray, masks: np.ndarray, limits: tuple[float, ...]
) -> dict[float, float]:
    """Compute AUPRO as the MVTec 3D-AD evaluation code does, with one global argsort.

    Each defect pixel carries 1 / (n_regions · region size) and each normal pixel 1, and
    cumulative sums along the descending argsort give the curve at every distinct score.
    """
    structure = np.ones((3, 3), dtype=bool)
    pro_changes = np.zeros(maps.shape, dtype=np.float64)
    n_regions = 0
    for index in range(maps.shape[0]):
        labeled, count = ndimage.label(masks[index], structure=structure)
        sizes = np.bincount(labeled.ravel())
        weights = np.zeros(count + 1)
        weights[1:] = 1.0 / sizes[1:]
        pro_changes[index] = weights[labeled]
        n_regions += count

    scores = maps.ravel()
    order = np.argsort(scores)[::-1]
    sorted_scores = scores[order]
    fpr = np.cumsum(~masks.ravel()[order]) / np.count_nonzero(~masks)
    pro = np.cumsum(pro_changes.ravel()[order]) / n_regions
    keep = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    fpr = np.concatenate([[0.0], fpr[keep], [1.0]])
    pro = np.concatenate([[0.0], pro[keep], [1.0]])

    result = {}
    for limit in limits:
        inside = int(np.searchsorted(fpr, limit, side="right"))
        area = float(np.trapezoid(pro[:inside], fpr[:inside]))
        if inside < fpr.size and fpr[inside - 1] < limit:
            fraction = (limit - fpr[inside - 1]) / (fpr[inside] - fpr[inside - 1])
            pro_limit = pro[inside - 1] + fraction * (pro[inside] - pro[inside - 1])
            area += 0.5 * (limit - fpr[inside - 1]) * (pro[inside - 1] + pro_limit)
        result[limit] = area / limit
    return result


def time_call(function: Callable[..., Any], *args: Any, repeats: int) -> tuple[float, Any]:
    """Return the best wall time in seconds over ``repeats`` calls, and the last result."""
    best = float("inf")
    result = None
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        result = function(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def traced_peak_bytes(function: Callable[..., Any], *args: Any) -> int:
    """Return the peak of memory allocated during one call, above what was allocated before.

    NumPy reports its array buffers to tracemalloc, so the figure includes them.
    """
    gc.collect()
    tracemalloc.start()
    baseline, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    function(*args)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak - baseline


def make_defect_heavy_set(
    n_images: int, side_px: int, seed: int, defect_share: float
) -> tuple[np.ndarray, np.ndarray]:
    """Generate maps whose masks cover ``defect_share`` of the pixels, for the memory worst case.

    Each mask is a smooth random field thresholded at its quantile, so the defect regions
    are large irregular blobs. Scores are white noise plus 1 on defect pixels.
    """
    rng = np.random.default_rng(seed)
    maps = rng.standard_normal((n_images, side_px, side_px), dtype=np.float32)
    masks = np.empty((n_images, side_px, side_px), dtype=bool)
    for index in range(n_images):
        field = ndimage.gaussian_filter(rng.standard_normal((side_px, side_px), dtype=np.float32), 10.0)
        masks[index] = field > np.quantile(field, 1.0 - defect_share)
    maps += masks
    return maps, masks


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100, help="number of anomaly maps")
    parser.add_argument("--side", type=int, default=800, help="map height and width in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic test set")
    parser.add_argument(
        "--defect-share",
        type=float,
        default=None,
        help="replace the blob defects by masks covering this share of every image (0 to 1)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="timed calls per measurement, of which the best counts"
    )
    parser.add_argument(
        "--no-check", action="store_true", help="skip the argsort-based reference AUPRO"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()

    start = time.perf_counter()
    if args.defect_share is None:
        maps, masks = make_test_set(args.images, args.side, args.seed)
    else:
        maps, masks = make_defect_heavy_set(args.images, args.side, args.seed, args.defect_share)
    generation_s = time.perf_counter() - start

    input_mib = (maps.nbytes + masks.nbytes) / 2**20
    n_anomalous = int(masks.reshape(args.images, -1).any(axis=1).sum())
    print(f"machine: {platform.machine()}, Python {platform.python_version()}, NumPy {np.__version__}")
    print(f"load average before the run: {os.getloadavg()[0]:.1f}")
    print(
        f"test set: {args.images} maps of {args.side}x{args.side} = {maps.size / 1e6:.1f} M pixels, "
        f"{np.count_nonzero(masks) / masks.size:.2%} defect pixels, {n_anomalous} anomalous "
        f"images, generated in {generation_s:.1f} s"
    )
    print(
        f"input: maps {maps.nbytes / 2**20:.0f} MiB + masks {masks.nbytes / 2**20:.0f} MiB "
        f"= {input_mib:.0f} MiB"
    )

    flat_scores = maps.ravel()
    argsort_s, _ = time_call(np.argsort, flat_scores, repeats=args.repeats)
    aupro_s, result = time_call(aupro_at, maps, masks, repeats=args.repeats)
    auroc_s, p_auroc = time_call(pixel_auroc, maps, masks, repeats=args.repeats)

    argsort_mib = traced_peak_bytes(np.argsort, flat_scores) / 2**20
    aupro_mib = traced_peak_bytes(aupro_at, maps, masks) / 2**20
    auroc_mib = traced_peak_bytes(pixel_auroc, maps, masks) / 2**20

    print(f"numpy.argsort over all pixels: {argsort_s:.2f} s, peak extra {argsort_mib:.0f} MiB")
    print(
        f"aupro_at {DEFAULT_FPR_LIMITS}: {aupro_s:.2f} s = {aupro_s / argsort_s:.2f}x argsort "
        f"(target <= 2x), peak extra {aupro_mib:.0f} MiB = {aupro_mib / input_mib:.2f} "
        "input copies (target <= ~3)"
    )
    print(
        f"pixel_auroc: {auroc_s:.2f} s = {auroc_s / argsort_s:.2f}x argsort, "
        f"peak extra {auroc_mib:.0f} MiB = {auroc_mib / input_mib:.2f} input copies"
    )
    values = [f"aupro@{limit:g}={value:.6f}" for limit, value in result.items()]
    print("values: " + ", ".join(values) + f", p_auroc={p_auroc:.6f}")

    if not args.no_check:
        del flat_scores
        reference_s, reference = time_call(
            reference_aupro_by_argsort, maps, masks, DEFAULT_FPR_LIMITS, repeats=1
        )
        largest_gap = max(abs(reference[limit] - result[limit]) for limit in DEFAULT_FPR_LIMITS)
        print(f"argsort-based reference AUPRO: {reference_s:.2f} s, largest difference {largest_gap:.2e}")


if __name__ == "__main__":
    main()
