"""Tests for MVTec 3D-AD preprocessing on generated fixtures in the exact layout.

Each fixture scene is a tilted plate 0.4 m from a pinhole camera (focal length 100 px,
so a pixel is about 4 mm wide) with a box 1 cm tall and a 2×2-pixel speck, both raised
off the plate. The expected foreground is known from the construction, so every check
compares against the scene's own masks.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from modiad.dataset import list_classes, list_samples, read_sample
from modiad.errors import ConfigError, DatasetError
from sensors_sim.mvtec import (
    PreprocessSettings,
    keep_largest_cluster,
    preprocess_mvtec,
    remove_plane,
    resize_and_pad,
)

FOCAL_PX = 100.0
RAISE_M = 0.01
SETTINGS = PreprocessSettings(border_px=4, min_border_points=50)


def build_scene(height: int, width: int, box: tuple[slice, slice], speck: tuple[slice, slice], seed: int):
    """Return (xyz float32 H×W×3, box mask, speck mask) of a plate with a raised box and speck."""
    rng = np.random.default_rng(seed)
    normal = np.array([0.05, 0.02, -1.0])
    normal /= np.linalg.norm(normal)
    offset = 0.4

    columns, rows = np.meshgrid(np.arange(width), np.arange(height))
    rays = np.stack([(columns - width / 2) / FOCAL_PX, (rows - height / 2) / FOCAL_PX, np.ones((height, width))], -1)
    plate_depth = -offset / (rays @ normal)
    box_mask = np.zeros((height, width), dtype=bool)
    box_mask[box] = True
    speck_mask = np.zeros((height, width), dtype=bool)
    speck_mask[speck] = True

    depth = plate_depth - RAISE_M * (box_mask | speck_mask) + rng.normal(0.0, 0.0002, (height, width))
    xyz = (rays * depth[..., None]).astype(np.float32)
    return xyz, box_mask, speck_mask


def write_sample(folder: Path, stem: str, rgb: np.ndarray, xyz: np.ndarray, gt: np.ndarray | None) -> None:
    for sub in ("rgb", "xyz") + (("gt",) if gt is not None else ()):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(folder / "rgb" / f"{stem}.png")
    tifffile.imwrite(folder / "xyz" / f"{stem}.tiff", xyz, photometric="rgb")
    if gt is not None:
        Image.fromarray(gt.astype(np.uint8) * 255).save(folder / "gt" / f"{stem}.png")


SQUARE = {"shape": (40, 40), "box": (slice(12, 28), slice(12, 28)), "speck": (slice(32, 34), slice(4, 6))}
NON_SQUARE = {"shape": (30, 40), "box": (slice(8, 22), slice(12, 28)), "speck": (slice(23, 25), slice(4, 6))}
DAMAGED_PIXELS = {"nan": [(14, 14), (2, 30)], "inf": [(15, 20)], "zero": [(16, 16), (3, 3)]}


def write_class(root: Path, class_name: str, layout: dict, seed: int) -> dict[str, dict]:
    """Write train (2), validation (1) and test good/crack (1 each) samples; return the scenes by sample id."""
    scenes = {}
    height, width = layout["shape"]
    folders = [("train", "good", 2), ("validation", "good", 1), ("test", "good", 1), ("test", "crack", 1)]
    for split, defect, count in folders:
        for index in range(count):
            xyz, box_mask, speck_mask = build_scene(height, width, layout["box"], layout["speck"], seed + index)
            damaged = np.zeros((height, width), dtype=bool)
            for kind, pixels in DAMAGED_PIXELS.items():
                for row, col in pixels:
                    xyz[row, col] = {"nan": np.nan, "inf": np.inf, "zero": 0.0}[kind]
                    damaged[row, col] = True
            rgb = np.random.default_rng(seed + 50 + index).integers(0, 256, (height, width, 3), dtype=np.uint8)
            gt = None
            if split == "test":
                gt = np.zeros((height, width), dtype=bool)
                if defect != "good":
                    gt[layout["box"][0].start + 2 : layout["box"][0].start + 5, layout["box"][1]] = True
            write_sample(root / class_name / split / defect, f"{index:03d}", rgb, xyz, gt)
            scenes[f"{class_name}/{split}/{defect}/{index:03d}"] = {
                "box": box_mask, "speck": speck_mask, "damaged": damaged, "rgb": rgb, "gt": gt
            }
    return scenes


def tree_digest(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("mvtec") / "raw"
    scenes = write_class(root, "bagel", SQUARE, seed=0)
    scenes |= write_class(root, "cable_gland", NON_SQUARE, seed=10)
    return root, scenes


def nonzero_points(xyz: np.ndarray) -> np.ndarray:
    return (xyz != 0).any(axis=-1)


# ---------------------------------------------------------------------------------
# Steps


def test_remove_plane_keeps_raised_points():
    xyz, box_mask, speck_mask = build_scene(40, 40, SQUARE["box"], SQUARE["speck"], seed=1)

    cleaned = remove_plane(xyz, SETTINGS)

    np.testing.assert_array_equal(nonzero_points(cleaned), box_mask | speck_mask)
    np.testing.assert_array_equal(cleaned[box_mask], xyz[box_mask])


def test_plane_distance_is_configurable():
    xyz, _, _ = build_scene(40, 40, SQUARE["box"], SQUARE["speck"], seed=1)
    settings = PreprocessSettings(border_px=4, min_border_points=50, plane_distance_m=2 * RAISE_M)

    cleaned = remove_plane(xyz, settings)

    assert not nonzero_points(cleaned).any()


def test_remove_plane_too_few_border_points():
    xyz, box_mask, _ = build_scene(40, 40, SQUARE["box"], SQUARE["speck"], seed=1)
    xyz[~box_mask] = 0.0

    assert remove_plane(xyz, SETTINGS) is None


def test_largest_cluster_drops_speck():
    xyz, box_mask, speck_mask = build_scene(40, 40, SQUARE["box"], SQUARE["speck"], seed=2)
    cleaned = remove_plane(xyz, SETTINGS)

    largest = keep_largest_cluster(cleaned, 0.006)

    np.testing.assert_array_equal(nonzero_points(largest), box_mask)
    assert nonzero_points(cleaned)[speck_mask].all()


def independent_nearest(array: np.ndarray, new_height: int, new_width: int) -> np.ndarray:
    """Nearest resize by pixel centres: output (i, j) reads input (⌊(i+½)·H/h⌋, ⌊(j+½)·W/w⌋)."""
    height, width = array.shape[:2]
    rows = np.floor((np.arange(new_height) + 0.5) * height / new_height).astype(int)
    cols = np.floor((np.arange(new_width) + 0.5) * width / new_width).astype(int)
    return array[rows][:, cols]


def test_resize_and_pad_non_square_alignment():
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    xyz = rng.uniform(0.1, 0.5, (30, 40, 3)).astype(np.float32)
    mask = (rng.random((30, 40)) > 0.7).astype(np.uint8)

    out_rgb, out_xyz, out_mask = resize_and_pad(rgb, xyz, mask, 32)

    assert out_rgb.shape == (32, 32, 3)
    assert out_xyz.shape == (32, 32, 3)
    assert out_mask.shape == (32, 32)
    # 40×30 scaled by 32/40 is 32×24, centred with 4 padding rows above and below.
    np.testing.assert_array_equal(out_xyz[4:28], independent_nearest(xyz, 24, 32))
    np.testing.assert_array_equal(out_mask[4:28], independent_nearest(mask, 24, 32))
    for padding in (slice(0, 4), slice(28, 32)):
        assert not out_rgb[padding].any()
        assert not out_xyz[padding].any()
        assert not out_mask[padding].any()


def test_settings_reject_bad_thresholds():
    with pytest.raises(ConfigError, match="plane_distance_m"):
        PreprocessSettings(plane_distance_m=-0.001)
    with pytest.raises(ConfigError, match="cluster_distance_m"):
        PreprocessSettings(cluster_distance_m=float("nan"))
    with pytest.raises(ConfigError, match="image_size"):
        PreprocessSettings(image_size=2)


# ---------------------------------------------------------------------------------
# Whole tree


@pytest.fixture(scope="module")
def cache(raw_tree, tmp_path_factory: pytest.TempPathFactory):
    root, _ = raw_tree
    before = tree_digest(root)
    destination = tmp_path_factory.mktemp("cache") / "preprocessed"
    summary = preprocess_mvtec(root, destination, SETTINGS)
    return destination, summary, before


def test_cache_foreground_matches_scene(raw_tree, cache):
    _, scenes = raw_tree
    destination, summary, _ = cache

    assert list_classes(destination) == ["bagel", "cable_gland"]
    assert summary.written == len(scenes)
    assert summary.plane_skipped == []
    for class_name in ("bagel", "cable_gland"):
        for split in ("train", "validation", "test"):
            for ref in list_samples(destination, class_name, split):
                scene = scenes[ref.sample_id]
                sample = read_sample(ref)
                expected = (scene["box"] | scene["speck"]) & ~scene["damaged"]
                assert np.isfinite(sample.xyz).all()
                np.testing.assert_array_equal(nonzero_points(sample.xyz), expected)
                np.testing.assert_array_equal(sample.rgb, scene["rgb"])
                if scene["gt"] is not None:
                    np.testing.assert_array_equal(sample.gt_mask, scene["gt"].astype(np.uint8))


def test_nan_inf_zero_pixels_stay_missing(raw_tree, cache):
    destination, _, _ = cache

    for ref in list_samples(destination, "bagel", "train"):
        xyz = read_sample(ref).xyz
        for pixels in DAMAGED_PIXELS.values():
            for row, col in pixels:
                np.testing.assert_array_equal(xyz[row, col], [0.0, 0.0, 0.0])


def test_raw_tree_never_written(raw_tree, cache):
    root, _ = raw_tree
    _, _, before = cache

    assert tree_digest(root) == before


def test_rerun_skips_cached_files(raw_tree, cache):
    root, scenes = raw_tree
    destination, _, _ = cache
    digest = tree_digest(destination)

    summary = preprocess_mvtec(root, destination, SETTINGS)

    assert summary.written == 0
    assert summary.skipped_existing == len(scenes)
    assert tree_digest(destination) == digest


def test_non_square_class_resized_consistently(raw_tree, tmp_path):
    root, scenes = raw_tree
    settings = PreprocessSettings(border_px=4, min_border_points=50, image_size=32)

    preprocess_mvtec(root, tmp_path / "cache", settings, classes=["cable_gland"])

    refs = list_samples(tmp_path / "cache", "cable_gland", "test")
    assert len(refs) == 2
    for ref in refs:
        sample = read_sample(ref)
        scene = scenes[ref.sample_id]
        assert sample.rgb.shape == (32, 32, 3)
        assert sample.xyz.shape == (32, 32, 3)
        assert sample.gt_mask.shape == (32, 32)
        expected_foreground = independent_nearest((scene["box"] | scene["speck"]) & ~scene["damaged"], 24, 32)
        np.testing.assert_array_equal(nonzero_points(sample.xyz)[4:28], expected_foreground)
        np.testing.assert_array_equal(sample.gt_mask[4:28], independent_nearest(scene["gt"].astype(np.uint8), 24, 32))
        assert not nonzero_points(sample.xyz)[:4].any()


def test_already_preprocessed_file_skipped(cache, tmp_path, caplog):
    destination, _, _ = cache
    before = tree_digest(destination)

    with caplog.at_level(logging.WARNING, logger="sensors_sim.mvtec"):
        summary = preprocess_mvtec(destination, tmp_path / "again", SETTINGS, classes=["bagel"])

    bagel_files = sorted(destination.glob("bagel/*/*/xyz/*.tiff"))
    assert sorted(summary.plane_skipped) == bagel_files
    assert summary.written == len(bagel_files)
    assert "Background plane not removed" in caplog.text
    assert str(bagel_files[0]) in caplog.text
    assert tree_digest(destination) == before
    for ref in list_samples(tmp_path / "again", "bagel", "train"):
        original = read_sample(next(r for r in list_samples(destination, "bagel", "train") if r.sample_id == ref.sample_id))
        np.testing.assert_array_equal(read_sample(ref).xyz, original.xyz)


def test_destination_inside_source_rejected(raw_tree):
    root, _ = raw_tree

    with pytest.raises(DatasetError, match="overlaps"):
        preprocess_mvtec(root, root / "cache", SETTINGS)


def test_changed_settings_need_overwrite(raw_tree, tmp_path):
    root, _ = raw_tree
    destination = tmp_path / "cache"
    preprocess_mvtec(root, destination, SETTINGS, classes=["bagel"])
    changed = PreprocessSettings(border_px=4, min_border_points=50, keep_largest_cluster=True)

    with pytest.raises(DatasetError, match="other settings"):
        preprocess_mvtec(root, destination, changed, classes=["bagel"])
    summary = preprocess_mvtec(root, destination, changed, classes=["bagel"], overwrite=True)

    assert summary.written == 5
    xyz = read_sample(list_samples(destination, "bagel", "train")[0]).xyz
    assert not nonzero_points(xyz)[SQUARE["speck"]].any()
