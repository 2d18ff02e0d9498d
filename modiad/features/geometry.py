"""Geometry of organized point clouds: valid points, background plane, FPFH, grid pooling.

An organized cloud is float H×W×3 in metres, in the camera frame (camera at the
origin, looking along +z), indexed like the RGB image: point (row, col) is the
surface seen by pixel (row, col). A missing point is (0, 0, 0), NaN or infinite.
open3d is imported only when FPFH is computed, so the numpy parts work without it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

__all__ = [
    "FPFH_DIM",
    "PixelFeatures",
    "compute_fpfh",
    "fit_plane_ransac",
    "grid_cell_index",
    "pixel_fpfh",
    "pool_foreground",
    "pool_to_grid",
    "remove_background_plane",
    "valid_point_mask",
]

logger = logging.getLogger(__name__)

# FPFH is three 11-bin histograms of the angles between neighbouring normals.
FPFH_DIM = 33

# Point sets smaller than this cannot define a plane.
_MIN_PLANE_POINTS = 3

# RANSAC hypotheses scored per matrix product.
_HYPOTHESIS_CHUNK = 32

# Border points that score each RANSAC hypothesis. 2000 points estimate an inlier
# fraction to about ±1 % (binomial standard error), enough to rank planes.
_MAX_SCORING_POINTS = 2000


def valid_point_mask(xyz: np.ndarray) -> np.ndarray:
    """Return bool H×W: True where the point is finite and not (0, 0, 0)."""
    finite = np.isfinite(xyz).all(axis=-1)
    nonzero = (xyz != 0).any(axis=-1)
    return finite & nonzero


def fit_plane_ransac(
    points: np.ndarray,
    *,
    inlier_m: float,
    iterations: int,
    seed: int,
) -> tuple[np.ndarray, float] | None:
    """Fit a plane n·p + d = 0 to N×3 `points` by RANSAC, then refine it on the inliers.

    Each of `iterations` hypotheses is the plane through three points drawn with a
    numpy generator seeded by `seed`, so the same input gives the same plane. The
    hypothesis with the most points within `inlier_m` metres wins, and a
    least-squares fit (SVD) on its inliers refines it. Returns (unit normal n,
    offset d) oriented so that the camera origin has a positive signed distance d,
    or None when fewer than 3 points are given or every hypothesis is degenerate.
    """
    points = np.asarray(points, dtype=np.float64)
    if len(points) < _MIN_PLANE_POINTS:
        return None

    rng = np.random.default_rng(seed)
    triplets = points[rng.integers(0, len(points), size=(iterations, 3))]

    # A fixed random subset scores the hypotheses: ranking planes needs no more, and
    # the final inliers are still taken from all points.
    scoring = points
    if len(points) > _MAX_SCORING_POINTS:
        scoring = points[rng.choice(len(points), size=_MAX_SCORING_POINTS, replace=False)]

    normals = np.cross(triplets[:, 1] - triplets[:, 0], triplets[:, 2] - triplets[:, 0])
    lengths = np.linalg.norm(normals, axis=1)
    usable = lengths > 1e-12
    if not usable.any():
        return None
    normals = normals[usable] / lengths[usable, None]
    offsets = -np.einsum("ij,ij->i", normals, triplets[usable, 0])

    # Hypotheses are scored in chunks so that the N×chunk distance matrix stays
    # small for large images.
    inlier_counts = np.zeros(len(normals), dtype=np.int64)
    for start in range(0, len(normals), _HYPOTHESIS_CHUNK):
        chunk = slice(start, start + _HYPOTHESIS_CHUNK)
        distances = np.abs(scoring @ normals[chunk].T + offsets[chunk])
        inlier_counts[chunk] = (distances <= inlier_m).sum(axis=0)

    best = int(np.argmax(inlier_counts))
    inliers = points[np.abs(points @ normals[best] + offsets[best]) <= inlier_m]

    normal, offset = _fit_plane_least_squares(inliers)
    if offset < 0:
        normal, offset = -normal, -offset
    return normal, offset


def _fit_plane_least_squares(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Return the total-least-squares plane (unit normal, offset) through N×3 `points`, N ≥ 3."""
    centroid = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - centroid, full_matrices=False)
    normal = vt[-1]
    return normal, float(-normal @ centroid)


def _border_mask(shape: tuple[int, int], border_px: int) -> np.ndarray:
    """Return bool H×W: True in the frame `border_px` pixels wide along the image edges."""
    height, width = shape
    border = np.zeros((height, width), dtype=bool)
    band = max(int(border_px), 0)
    border[:band, :] = True
    border[height - band :, :] = True
    border[:, :band] = True
    border[:, width - band :] = True
    return border


def remove_background_plane(
    xyz: np.ndarray,
    valid: np.ndarray,
    *,
    distance_m: float,
    border_px: int,
    inlier_m: float = 0.002,
    iterations: int = 200,
    min_border_points: int = 50,
    seed: int = 0,
) -> np.ndarray:
    """Return the foreground mask of an organized cloud: valid points off the background plane.

    The background plane is fitted by RANSAC (`fit_plane_ransac`, `inlier_m`,
    `iterations`, `seed`) to the valid points in the image frame `border_px`
    pixels wide, because the object is expected in the middle of the view. A
    point is foreground when it is valid and lies more than `distance_m` metres
    from the plane on the camera side. Points behind the plane are background too.

    When the frame contains fewer than `min_border_points` valid points, no plane can
    be trusted: the function logs a warning and returns `valid` unchanged.
    `xyz` is float H×W×3 in metres and `valid` bool H×W; the result is bool H×W.
    """
    valid = np.asarray(valid, dtype=bool)
    border_points = xyz[valid & _border_mask(valid.shape, border_px)]
    if len(border_points) < max(min_border_points, _MIN_PLANE_POINTS):
        logger.warning(
            "background plane not removed: %d valid points in the %d-pixel image border, need %d. "
            "Keeping all %d valid points as foreground",
            len(border_points),
            border_px,
            min_border_points,
            int(valid.sum()),
        )
        return valid.copy()

    plane = fit_plane_ransac(border_points, inlier_m=inlier_m, iterations=iterations, seed=seed)
    if plane is None:
        logger.warning(
            "background plane not removed: the %d border points are collinear, so all valid points are kept",
            len(border_points),
        )
        return valid.copy()
    normal, offset = plane

    # Signed distance, positive on the camera's side because the fit orients the
    # plane so that the origin has a positive distance.
    signed = np.zeros(valid.shape, dtype=np.float64)
    signed[valid] = xyz[valid].astype(np.float64) @ normal + offset
    return valid & (signed > distance_m)


def compute_fpfh(
    points: np.ndarray,
    *,
    normal_radius_m: float,
    normal_max_nn: int,
    fpfh_radius_m: float,
    fpfh_max_nn: int,
) -> np.ndarray:
    """Compute the 33-d FPFH descriptor of each of N×3 `points` (metres) with open3d.

    Normals come from a hybrid search (`normal_radius_m`, at most `normal_max_nn`
    neighbours) and are turned to face the camera at the origin, so their sign,
    and with it the descriptor, does not depend on the eigen-solver. FPFH uses a
    hybrid search of `fpfh_radius_m` and at most `fpfh_max_nn` neighbours.
    Returns float32 N×33 of non-negative histogram values. A point without
    neighbours gets zeros, and any non-finite value is set to 0.
    """
    import open3d as o3d

    if len(points) == 0:
        return np.zeros((0, FPFH_DIM), dtype=np.float32)

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, dtype=np.float64)))
    cloud.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=normal_radius_m, max_nn=normal_max_nn))
    cloud.orient_normals_towards_camera_location(np.zeros(3))
    fpfh = o3d.pipelines.registration.compute_fpfh_feature(
        cloud, o3d.geometry.KDTreeSearchParamHybrid(radius=fpfh_radius_m, max_nn=fpfh_max_nn)
    )
    features = np.asarray(fpfh.data, dtype=np.float32).T

    non_finite = ~np.isfinite(features)
    if non_finite.any():
        logger.warning("FPFH returned %d non-finite values, set to 0", int(non_finite.sum()))
        features[non_finite] = 0.0
    return np.ascontiguousarray(features)


@dataclass(frozen=True)
class PixelFeatures:
    """Features at foreground pixels: `rows`, `cols` (int N) and `values` (float32 N×D)."""

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray


def pixel_fpfh(
    xyz: np.ndarray,
    foreground: np.ndarray,
    *,
    point_stride: int,
    normal_radius_m: float,
    normal_max_nn: int,
    fpfh_radius_m: float,
    fpfh_max_nn: int,
) -> PixelFeatures:
    """Compute FPFH for every foreground pixel of an organized cloud.

    FPFH is computed on the foreground points at every `point_stride`-th row and
    column (1 = every pixel), so its cost falls roughly with the square of the
    stride. Only foreground points enter the neighbourhoods, so the background
    plane does not shape the object's descriptors. With a stride above 1, each
    other foreground pixel takes the descriptor of its nearest computed point in
    3D. Returns the features of all foreground pixels in row-major order.
    """
    rows, cols = np.nonzero(foreground)
    if len(rows) == 0:
        return PixelFeatures(rows, cols, np.zeros((0, FPFH_DIM), dtype=np.float32))
    points = xyz[rows, cols].astype(np.float64)

    stride = max(int(point_stride), 1)
    sampled = (rows % stride == 0) & (cols % stride == 0)
    if not sampled.any():
        # A foreground blob smaller than the stride lattice: use all its points.
        sampled[:] = True

    sampled_features = compute_fpfh(
        points[sampled],
        normal_radius_m=normal_radius_m,
        normal_max_nn=normal_max_nn,
        fpfh_radius_m=fpfh_radius_m,
        fpfh_max_nn=fpfh_max_nn,
    )
    if sampled.all():
        return PixelFeatures(rows, cols, sampled_features)

    _, nearest = cKDTree(points[sampled]).query(points, k=1)
    return PixelFeatures(rows, cols, sampled_features[nearest])


def grid_cell_index(rows: np.ndarray, cols: np.ndarray, image_shape: tuple[int, int], grid_size: int) -> np.ndarray:
    """Return the flat cell index (i·G + j) of each pixel on a G×G grid over an H×W image.

    Cell (i, j) covers rows [i·H/G, (i+1)·H/G) and columns [j·W/G, (j+1)·W/G), the
    same image area that bilinear resizing with `align_corners=False` maps to
    output pixel (i, j). When H or W is not a multiple of G, cells differ by one pixel.
    """
    height, width = image_shape
    cell_rows = (np.asarray(rows, dtype=np.int64) * grid_size) // height
    cell_cols = (np.asarray(cols, dtype=np.int64) * grid_size) // width
    return cell_rows * grid_size + cell_cols


def pool_to_grid(
    features: PixelFeatures,
    *,
    image_shape: tuple[int, int],
    grid_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Average per-pixel features over the cells of a G×G grid.

    Returns (float32 G×G×D cell means, bool G×G occupied). A cell is occupied when
    at least one pixel of `features` falls in it. Unoccupied cells are zeros.
    """
    cells = grid_cell_index(features.rows, features.cols, image_shape, grid_size)
    dim = features.values.shape[1]
    cell_count = grid_size * grid_size

    counts = np.bincount(cells, minlength=cell_count)
    sums = np.zeros((cell_count, dim), dtype=np.float64)
    for channel in range(dim):
        sums[:, channel] = np.bincount(cells, weights=features.values[:, channel], minlength=cell_count)

    occupied = counts > 0
    means = np.zeros((cell_count, dim), dtype=np.float32)
    means[occupied] = sums[occupied] / counts[occupied, None]
    return means.reshape(grid_size, grid_size, dim), occupied.reshape(grid_size, grid_size)


def pool_foreground(foreground: np.ndarray, grid_size: int) -> np.ndarray:
    """Return bool G×G: True for each cell that contains at least one foreground pixel."""
    rows, cols = np.nonzero(foreground)
    cells = grid_cell_index(rows, cols, foreground.shape, grid_size)
    occupied = np.zeros(grid_size * grid_size, dtype=bool)
    occupied[cells] = True
    return occupied.reshape(grid_size, grid_size)
