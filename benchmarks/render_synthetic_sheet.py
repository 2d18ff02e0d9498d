"""Render a contact sheet of the synthetic dataset to docs/images/synthetic-classes.png.

One row per class and one column pair per sample type: a good sample, then one sample
of each defect type. Each pair shows the RGB image and a hillshade of the point cloud
(normals from the xyz points lit from the upper left, missing points in blue), so
RGB-only and surface-only defects are both visible. Defect masks are outlined in
yellow on both images. Samples come from `render_sample` at the demo image size with
seed 0, exactly as `generate_dataset(profile="demo")` writes test sample 000.

Run from the repository root: ``python benchmarks/render_synthetic_sheet.py``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from sensors_sim.synthetic import CLASS_NAMES, DEFECT_TYPES, PROFILES, render_sample

TILE_PX = 112
LABEL_WIDTH_PX = 80
HEADER_HEIGHT_PX = 22
OUTLINE_RGB = (255, 230, 0)
MISSING_RGB = (40, 60, 200)
HILLSHADE_LIGHT = np.array([-0.5, -0.5, -0.7])
SMOOTHING_PX = 1.5
PALETTE_COLOURS = 256
"""The sheet is stored as an 8-bit palette PNG to keep the repository small."""


def hillshade(xyz: np.ndarray) -> np.ndarray:
    """Return a uint8 H×W×3 grey shading of the point cloud's normals, blue where missing.

    Missing points are first filled from their nearest valid neighbour and the sensor
    noise is smoothed away, so dents and bumps stand out from the grain.
    """
    missing = ~np.any(xyz != 0, axis=2)
    nearest = ndimage.distance_transform_edt(missing, return_distances=False, return_indices=True)
    filled = xyz[nearest[0], nearest[1]].astype(np.float64)
    points = ndimage.gaussian_filter(filled, sigma=(SMOOTHING_PX, SMOOTHING_PX, 0))

    normals = np.cross(np.gradient(points, axis=0), np.gradient(points, axis=1))
    normals /= np.linalg.norm(normals, axis=2, keepdims=True) + 1e-12
    light = HILLSHADE_LIGHT / np.linalg.norm(HILLSHADE_LIGHT)
    grey = np.clip(normals @ light, 0, 1) * 230 + 20

    image = np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)
    image[missing] = MISSING_RGB
    return image


def outline(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Draw the mask's inner boundary on a copy of the image."""
    if mask is None or not mask.any():
        return image
    region = mask.astype(bool)
    boundary = region & ~ndimage.binary_erosion(region)
    marked = image.copy()
    marked[boundary] = OUTLINE_RGB
    return marked


def tile(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array).resize((TILE_PX, TILE_PX), Image.Resampling.LANCZOS)


def render_sheet(image_size: int, seed: int) -> Image.Image:
    columns = ("good",) + DEFECT_TYPES
    width = LABEL_WIDTH_PX + len(columns) * 2 * TILE_PX
    height = HEADER_HEIGHT_PX + len(CLASS_NAMES) * TILE_PX
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=14)

    for column, name in enumerate(columns):
        left = LABEL_WIDTH_PX + column * 2 * TILE_PX
        draw.text((left + 6, 3), f"{name}: RGB | 3D", fill=(0, 0, 0), font=font)

    for row, class_name in enumerate(CLASS_NAMES):
        top = HEADER_HEIGHT_PX + row * TILE_PX
        draw.text((6, top + TILE_PX // 2 - 8), class_name, fill=(0, 0, 0), font=font)
        for column, name in enumerate(columns):
            defect = None if name == "good" else name
            sample = render_sample(class_name, 0, split="test", defect=defect, seed=seed, image_size=image_size)
            mask = sample.gt_mask if defect else None
            left = LABEL_WIDTH_PX + column * 2 * TILE_PX
            sheet.paste(tile(outline(sample.rgb, mask)), (left, top))
            sheet.paste(tile(outline(hillshade(sample.xyz), mask)), (left + TILE_PX, top))
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("docs/images/synthetic-classes.png"),
                        help="PNG file to write")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    options = parser.parse_args()

    sheet = render_sheet(PROFILES["demo"].image_size, options.seed)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    palette_sheet = sheet.quantize(colors=PALETTE_COLOURS, method=Image.Quantize.FASTOCTREE)
    palette_sheet.save(options.output, optimize=True)
    print(f"wrote {options.output} ({sheet.width}×{sheet.height})")


if __name__ == "__main__":
    main()
