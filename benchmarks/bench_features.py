"""Time the embedded feature preset on one core: 2D and 3D seconds per sample, peak memory.

The scene is synthetic and 224×224: a plane at 0.4 m tilted by about 6 degrees, a
dome and a box standing on it, seen by a pinhole camera, and an RGB image shaded
from the surface normals. torch and open3d are limited to one thread each.

    python benchmarks/bench_features.py [--repeats 10] [--strides 1 2 3 4]

Wall time depends on what else runs on the machine, so CPU time of the process
(`time.process_time`) is printed next to it. With one thread it approximates the
time on one free core. Peak memory is the process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable

import numpy as np
import open3d as o3d
import torch

from modiad.features.embedded import EmbeddedExtractor
from modiad.features.geometry import remove_background_plane, valid_point_mask

IMAGE_SIZE_PX = 224
FOCAL_PX = 560.0  # 224 pixels span about 0.16 m at 0.4 m, 0.7 mm per pixel
PLANE_DEPTH_M = 0.4
PLANE_TILT = 0.1  # dz/dx of the plane
DOME_RADIUS_M = 0.035
BOX_HALF_SIZE_M = (0.02, 0.03)
BOX_HEIGHT_M = 0.015
DEPTH_NOISE_M = 0.0002


def render_scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (uint8 RGB, float32 organized cloud in metres, bool object mask) of the test scene.

    Each pixel's ray meets the plane, and the point is then lifted along the plane
    normal by the height of the dome or box at that spot. This is not an exact ray
    cast of the objects, but pixel (row, col) and point (row, col) still describe
    the same surface, which is what the extractor relies on.
    """
    rng = np.random.default_rng(seed)
    rows, cols = np.indices((IMAGE_SIZE_PX, IMAGE_SIZE_PX), dtype=np.float64)
    centre = (IMAGE_SIZE_PX - 1) / 2
    ray_x = (cols - centre) / FOCAL_PX
    ray_y = (rows - centre) / FOCAL_PX
    depth = PLANE_DEPTH_M / (1.0 - PLANE_TILT * ray_x)
    plane = np.stack([depth * ray_x, depth * ray_y, depth], axis=-1)
    normal = np.array([PLANE_TILT, 0.0, -1.0]) / np.hypot(PLANE_TILT, 1.0)

    # Heights above the plane as functions of camera x and y, which differ little
    # from in-plane coordinates at this tilt.
    x, y = plane[..., 0], plane[..., 1]
    dome_r2 = (x + 0.03) ** 2 + (y - 0.02) ** 2
    dome = np.sqrt(np.clip(DOME_RADIUS_M**2 - dome_r2, 0.0, None))
    box = (np.abs(x - 0.035) < BOX_HALF_SIZE_M[0]) & (np.abs(y + 0.015) < BOX_HALF_SIZE_M[1])
    height = np.maximum(dome, box * BOX_HEIGHT_M)

    xyz = plane + height[..., None] * normal + rng.normal(scale=DEPTH_NOISE_M, size=plane.shape)
    rgb = shade(xyz, dome > 0, box, rng)
    return rgb, xyz.astype(np.float32), height > 0


def shade(xyz: np.ndarray, dome: np.ndarray, box: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return a uint8 image: per-object albedo with texture, lit from the upper left (Lambert)."""
    surface_normals = np.cross(np.gradient(xyz, axis=1), np.gradient(xyz, axis=0))
    surface_normals /= np.linalg.norm(surface_normals, axis=-1, keepdims=True) + 1e-12
    light = np.array([-0.4, -0.4, -0.8])
    light /= np.linalg.norm(light)
    lambert = np.abs(surface_normals @ light)

    albedo = np.empty(xyz.shape, dtype=np.float64)
    albedo[:] = (0.55, 0.55, 0.5)
    albedo[dome] = (0.9, 0.55, 0.2)
    albedo[box] = (0.2, 0.35, 0.8)
    albedo *= 1.0 + 0.1 * rng.standard_normal(xyz.shape[:2])[..., None]

    image = albedo * (0.3 + 0.7 * lambert[..., None])
    return np.clip(image * 255.0, 0, 255).astype(np.uint8)


def time_call(function: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Return the median (wall seconds, CPU seconds) of `repeats` calls after one warm-up call."""
    function()
    wall, cpu = [], []
    for _ in range(repeats):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - wall_start)
        cpu.append(time.process_time() - cpu_start)
    return statistics.median(wall), statistics.median(cpu)


def peak_rss_mib() -> float:
    """Return the process's peak resident set size in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="Timed calls per measurement (default 10).")
    parser.add_argument(
        "--strides", type=int, nargs="+", default=[1, 2, 3, 4], help="point_stride values to time (default 1 2 3 4)."
    )
    parser.add_argument("--batch", type=int, default=8, help="Batch size for the batched 2D timing (default 8).")
    arguments = parser.parse_args()

    torch.set_num_threads(1)
    o3d.utility.set_max_threads(1)
    rss_after_imports = peak_rss_mib()

    rgb, xyz, object_mask = render_scene()
    extractor = EmbeddedExtractor()
    rss_after_build = peak_rss_mib()
    settings = extractor.settings
    valid = valid_point_mask(xyz)

    def remove_plane() -> np.ndarray:
        return remove_background_plane(
            xyz,
            valid,
            distance_m=settings.plane_distance_m,
            border_px=settings.border_px,
            inlier_m=settings.plane_inlier_m,
            iterations=settings.plane_iterations,
            min_border_points=settings.min_border_points,
            seed=settings.plane_seed,
        )

    foreground = remove_plane()

    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {load}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, open3d {o3d.__version__}"
    )
    print(f"scene: {IMAGE_SIZE_PX}x{IMAGE_SIZE_PX}, object pixels {int(object_mask.sum())}, "
          f"foreground pixels after plane removal {int(foreground.sum())}")
    print(f"settings: {settings.model_dump()}")
    print()

    plane_wall, plane_cpu = time_call(remove_plane, arguments.repeats)
    wall_2d, cpu_2d = time_call(lambda: extractor.features_2d([rgb]), arguments.repeats)
    batch = [rgb] * arguments.batch
    batch_wall, batch_cpu = time_call(lambda: extractor.features_2d(batch), max(arguments.repeats // 2, 1))

    print("| measurement | wall s/sample | CPU s/sample |")
    print("|---|---|---|")
    print(f"| 2D, batch of 1 | {wall_2d:.4f} | {cpu_2d:.4f} |")
    print(f"| 2D, batch of {arguments.batch} | {batch_wall / arguments.batch:.4f} | {batch_cpu / arguments.batch:.4f} |")
    print(f"| 3D plane removal only | {plane_wall:.4f} | {plane_cpu:.4f} |")
    for stride in arguments.strides:
        strided = EmbeddedExtractor(settings.model_copy(update={"point_stride": stride}))
        wall_3d, cpu_3d = time_call(functools.partial(strided.features_3d, xyz), arguments.repeats)
        print(f"| 3D, point_stride={stride} | {wall_3d:.4f} | {cpu_3d:.4f} |")
        print(f"| total (2D batch of 1 + 3D), point_stride={stride} | {wall_2d + wall_3d:.4f} | {cpu_2d + cpu_3d:.4f} |")
    print()
    print(f"peak RSS: {rss_after_imports:.0f} MiB after imports, {rss_after_build:.0f} MiB after building "
          f"the extractor, {peak_rss_mib():.0f} MiB after all runs")


if __name__ == "__main__":
    main()
