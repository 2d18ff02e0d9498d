"""Tests for the synthetic RGB-D generator: layout, determinism, physics and defects.

Reference quantities come from the generated files themselves. The plate is fitted by
least squares to the points near the image border and heights are measured against it.
Each defect is compared with its defect-free twin rendered from the same seed.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from modiad.errors import DatasetError
from sensors_sim import synthetic
from sensors_sim.synthetic import (
    CLASS_NAMES,
    DEFECT_TYPES,
    PROFILES,
    generate_dataset,
    render_sample,
)

SMALL = PROFILES["small"]
RGB_ONLY = ("stain", "contamination")
SURFACE_ONLY = ("dent", "bump")
BOTH = ("crack", "hole")


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full small profile (10 classes, seed 0), shared read-only by this module."""
    return generate_dataset(tmp_path_factory.mktemp("synthetic") / "data", profile="small", seed=0)


def _files(root: Path, class_name: str) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted((root / class_name).rglob("*"))
        if path.is_file()
    }


def _height_above_plate(xyz: np.ndarray) -> np.ndarray:
    """Return the height in metres of every point above a plane fitted to the border
    points, NaN where the point is missing."""
    size = xyz.shape[0]
    border = np.ones(xyz.shape[:2], dtype=bool)
    strip = max(3, size // 12)
    border[strip:-strip, strip:-strip] = False
    valid = np.any(xyz != 0, axis=2)
    fit = border & valid
    design = np.column_stack([xyz[fit][:, 0], xyz[fit][:, 1], np.ones(fit.sum())])
    coefficients, *_ = np.linalg.lstsq(design, xyz[fit][:, 2], rcond=None)
    plate_z = coefficients[0] * xyz[..., 0] + coefficients[1] * xyz[..., 1] + coefficients[2]
    return np.where(valid, plate_z - xyz[..., 2], np.nan)


def _changed(sample, twin) -> tuple[np.ndarray, np.ndarray]:
    rgb_changed = np.any(sample.rgb != twin.rgb, axis=2)
    xyz_changed = np.any(sample.xyz != twin.xyz, axis=2)
    return rgb_changed, xyz_changed


def _pair(class_name: str, defect: str, index: int = 0, image_size: int = 64):
    sample = render_sample(class_name, index, split="test", defect=defect, seed=0, image_size=image_size)
    twin = render_sample(
        class_name, index, split="test", defect=defect, seed=0, image_size=image_size, defect_free=True
    )
    return sample, twin


# ---------------------------------------------------------------------------------
# Layout and file formats


def test_layout_counts_match_profile(small_root):
    for class_name in CLASS_NAMES:
        class_dir = small_root / class_name
        expected = {("train", "good"): SMALL.train, ("validation", "good"): SMALL.validation,
                    ("test", "good"): SMALL.test_good}
        expected |= {("test", defect): SMALL.test_per_defect for defect in DEFECT_TYPES}
        for (split, folder), count in expected.items():
            subfolders = ("rgb", "xyz", "gt") if split == "test" else ("rgb", "xyz")
            for sub in subfolders:
                names = sorted(path.name for path in (class_dir / split / folder / sub).iterdir())
                suffix = ".tiff" if sub == "xyz" else ".png"
                assert names == [f"{i:03d}{suffix}" for i in range(count)], (class_name, split, folder, sub)
        assert not (class_dir / "train" / "good" / "gt").exists()


def test_file_formats(small_root):
    folder = small_root / "egg" / "test" / "hole"
    size = SMALL.image_size

    with Image.open(folder / "rgb" / "000.png") as rgb:
        assert rgb.format == "PNG"
        assert rgb.mode == "RGB"
        assert rgb.size == (size, size)
    xyz = tifffile.imread(folder / "xyz" / "000.tiff")
    assert xyz.dtype == np.float32
    assert xyz.shape == (size, size, 3)
    with Image.open(folder / "gt" / "000.png") as gt:
        assert gt.mode == "L"
        values = set(np.unique(np.asarray(gt)))
    assert values == {0, 255}

    with Image.open(small_root / "egg" / "test" / "good" / "gt" / "000.png") as good_gt:
        assert set(np.unique(np.asarray(good_gt))) == {0}


def test_manifest_records_generation(small_root):
    manifest = json.loads((small_root / "dataset.json").read_text())

    assert manifest["profile"] == "small"
    assert manifest["seed"] == 0
    assert manifest["generator_version"] == synthetic.GENERATOR_VERSION
    assert manifest["classes"] == list(CLASS_NAMES)
    for class_name in CLASS_NAMES:
        counts = manifest["counts"][class_name]
        assert counts["train"] == len(list((small_root / class_name / "train" / "good" / "rgb").iterdir()))
        for folder, count in counts["test"].items():
            assert count == len(list((small_root / class_name / "test" / folder / "rgb").iterdir()))


def test_points_in_front_of_camera(small_root):
    xyz = tifffile.imread(small_root / "block" / "train" / "good" / "xyz" / "000.tiff")
    valid = np.any(xyz != 0, axis=2)

    assert valid.mean() > 0.95
    assert valid.mean() < 1.0
    assert xyz[valid][:, 2].min() > 0.35
    assert xyz[valid][:, 2].max() < 0.45


# ---------------------------------------------------------------------------------
# Determinism and regeneration


def test_same_seed_identical_bytes(small_root, tmp_path):
    subset = generate_dataset(tmp_path / "subset", profile="small", seed=0, classes=["gear", "wave"])

    for class_name in ("gear", "wave"):
        assert _files(subset, class_name) == _files(small_root, class_name)


def test_different_seed_different_files(small_root, tmp_path):
    other = generate_dataset(tmp_path / "other", profile="small", seed=1, classes=["gear"])

    reference = _files(small_root, "gear")
    changed = _files(other, "gear")
    assert changed.keys() == reference.keys()
    for name in reference:
        if "/rgb/" in name or "/xyz/" in name:
            assert changed[name] != reference[name], name


def test_regeneration_is_a_no_op(small_root):
    manifest = small_root / "dataset.json"
    sample = small_root / "dome" / "train" / "good" / "rgb" / "000.png"
    before = (manifest.stat().st_mtime_ns, sample.stat().st_mtime_ns)

    started = time.perf_counter()
    result = generate_dataset(small_root, profile="small", seed=0)
    elapsed = time.perf_counter() - started

    assert result == small_root
    assert (manifest.stat().st_mtime_ns, sample.stat().st_mtime_ns) == before
    assert elapsed < 0.5


def test_new_seed_replaces_tree(tmp_path):
    root = tmp_path / "data"
    generate_dataset(root, profile="small", seed=0, classes=["cross"])
    first = _files(root, "cross")

    generate_dataset(root, profile="small", seed=2, classes=["capsule"])

    assert json.loads((root / "dataset.json").read_text())["seed"] == 2
    assert not (root / "cross").exists()
    assert (root / "capsule" / "test" / "dent" / "xyz" / "000.tiff").is_file()
    assert first
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data"]


def test_generates_into_empty_folder(tmp_path):
    root = tmp_path / "data"
    root.mkdir()

    generate_dataset(root, profile="small", seed=0, classes=["egg"])

    assert json.loads((root / "dataset.json").read_text())["classes"] == ["egg"]
    assert (root / "egg" / "train" / "good" / "rgb" / "000.png").is_file()


def test_missing_class_folder_triggers_regeneration(tmp_path):
    root = generate_dataset(tmp_path / "data", profile="small", seed=0, classes=["egg", "ring"])
    expected = _files(root, "ring")
    shutil.rmtree(root / "ring")

    generate_dataset(root, profile="small", seed=0, classes=["egg", "ring"])

    assert _files(root, "ring") == expected


def test_rejects_non_synthetic_folder(tmp_path):
    root = tmp_path / "mvtec"
    (root / "bagel").mkdir(parents=True)

    with pytest.raises(DatasetError, match="Cannot generate into"):
        generate_dataset(root, profile="small", seed=0, classes=["dome"])

    assert (root / "bagel").is_dir()


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    # Fault injection: fail on the fifth sample write, as a full disk would.
    original = synthetic._write_sample
    calls = []

    def failing_write(*args, **kwargs):
        calls.append(args)
        if len(calls) == 5:
            raise OSError("No space left on device")
        original(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_write_sample", failing_write)

    with pytest.raises(OSError, match="No space"):
        generate_dataset(tmp_path / "data", profile="small", seed=0, classes=["dome"])

    assert list(tmp_path.iterdir()) == []


def test_rejects_unknown_profile_and_class(tmp_path):
    with pytest.raises(DatasetError, match="small"):
        generate_dataset(tmp_path / "a", profile="huge")
    with pytest.raises(DatasetError, match="dome"):
        generate_dataset(tmp_path / "b", profile="small", classes=["bagel"])


def test_render_sample_deterministic():
    first = render_sample("ring", 3, split="train", seed=4, image_size=48)
    second = render_sample("ring", 3, split="train", seed=4, image_size=48)
    other = render_sample("ring", 3, split="train", seed=5, image_size=48)

    np.testing.assert_array_equal(first.rgb, second.rgb)
    np.testing.assert_array_equal(first.xyz, second.xyz)
    assert np.any(first.rgb != other.rgb)
    assert np.any(first.xyz != other.xyz)


def test_render_sample_metadata():
    train = render_sample("wave", 7, split="train", seed=0, image_size=32)
    defect = render_sample("wave", 1, split="test", defect="bump", seed=0, image_size=32)
    twin = render_sample("wave", 1, split="test", defect="bump", seed=0, image_size=32, defect_free=True)

    assert train.sample_id == "wave/train/good/007"
    assert train.gt_mask is None
    assert train.label == 0
    assert defect.sample_id == "wave/test/bump/001"
    assert defect.label == 1
    assert defect.defect_type == "bump"
    assert defect.gt_mask.dtype == np.uint8
    assert twin.label == 0
    assert twin.defect_type == "good"
    assert not twin.gt_mask.any()


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"class_name": "bagel", "split": "train"}, "capsule"),
        ({"class_name": "dome", "split": "val"}, "validation"),
        ({"class_name": "dome", "split": "train", "defect": "dent"}, "only test"),
        ({"class_name": "dome", "split": "test", "defect": "scratch"}, "contamination"),
        ({"class_name": "dome", "split": "train", "image_size": 16}, "at least 32"),
    ],
)
def test_render_sample_rejects_invalid_request(arguments, expected):
    options = {"index": 0, "seed": 0, "image_size": 64} | arguments
    class_name = options.pop("class_name")
    index = options.pop("index")

    with pytest.raises(DatasetError, match=expected):
        render_sample(class_name, index, **options)


# ---------------------------------------------------------------------------------
# Scene physics


def test_depth_noise_on_plate_near_sigma():
    sample = render_sample("dome", 0, split="train", seed=0, image_size=128)

    height = _height_above_plate(sample.xyz)
    border = np.ones(height.shape, dtype=bool)
    border[12:-12, 12:-12] = False
    residual = height[border & ~np.isnan(height)]

    assert 0.00015 < residual.std() < 0.00025


def test_missing_points_along_depth_edges():
    sample = render_sample("block", 0, split="train", seed=0, image_size=128)

    height = np.nan_to_num(_height_above_plate(sample.xyz), nan=0.0)
    missing = ~np.any(sample.xyz != 0, axis=2)
    object_mask = height > 0.005
    near_object = np.zeros_like(object_mask)
    for shift in (-2, -1, 1, 2):
        near_object |= np.roll(object_mask, shift, axis=0) ^ object_mask
        near_object |= np.roll(object_mask, shift, axis=1) ^ object_mask

    assert missing.any()
    assert missing[near_object].mean() > 10 * missing[~near_object].mean()


def test_rgb_shading_follows_geometry():
    # The dome's albedo is nearly uniform, so brightness is Lambertian shading of the
    # surface normal under a light close to the nominal direction.
    light = np.array([-0.35, -0.45, -1.0])
    light /= np.linalg.norm(light)
    correlations = []
    for index in range(3):
        sample = render_sample("dome", index, split="train", seed=0, image_size=128)
        xyz = sample.xyz.astype(np.float64)
        normals = np.cross(np.gradient(xyz, axis=0), np.gradient(xyz, axis=1))
        normals /= np.linalg.norm(normals, axis=2, keepdims=True) + 1e-12
        cosine = normals @ light

        height = _height_above_plate(sample.xyz)
        valid = np.all(np.abs(np.gradient(xyz[..., 2])) < 0.01, axis=0) & np.any(sample.xyz != 0, axis=2)
        on_object = (np.nan_to_num(height) > 0.002) & valid
        luminance = sample.rgb[on_object].astype(float).mean(axis=1)
        correlations.append(np.corrcoef(luminance, cosine[on_object])[0, 1])

    assert min(correlations) > 0.6, correlations


def test_classes_have_distinct_shapes():
    # Rotation-invariant shape signature: footprint area and height percentiles.
    signatures = {}
    for class_name in CLASS_NAMES:
        rows = []
        for index in range(2):
            sample = render_sample(class_name, index, split="train", seed=0, image_size=64)
            height = np.nan_to_num(_height_above_plate(sample.xyz), nan=0.0)
            on_object = height > 0.001
            rows.append([on_object.sum(), *np.percentile(height[on_object], [25, 50, 75, 95])])
        signatures[class_name] = np.mean(rows, axis=0)

    for first_index, first in enumerate(CLASS_NAMES):
        for second in CLASS_NAMES[first_index + 1:]:
            area_ratio = signatures[first][0] / signatures[second][0]
            height_gap_mm = 1000 * np.abs(signatures[first][1:] - signatures[second][1:]).max()
            assert abs(np.log(area_ratio)) > 0.15 or height_gap_mm > 1.5, (first, second)


# ---------------------------------------------------------------------------------
# Defects


@pytest.mark.parametrize("defect", DEFECT_TYPES)
def test_defect_changes_only_its_modalities(defect):
    for class_name in CLASS_NAMES:
        for index in range(2):
            sample, twin = _pair(class_name, defect, index)
            region = sample.gt_mask.astype(bool)
            rgb_changed, xyz_changed = _changed(sample, twin)
            context = (class_name, index)

            assert region.sum() > 0, context
            assert not np.any(rgb_changed & ~region), context
            assert not np.any(xyz_changed & ~region), context
            if defect in RGB_ONLY:
                assert not xyz_changed.any(), context
                assert rgb_changed[region].mean() > 0.8, context
            elif defect in SURFACE_ONLY:
                assert not rgb_changed.any(), context
                assert xyz_changed[region].mean() > 0.8, context
            else:
                assert rgb_changed[region].mean() > 0.5, context
                assert xyz_changed[region].mean() > 0.5, context
                assert (rgb_changed | xyz_changed)[region].mean() > 0.9, context


@pytest.mark.parametrize("defect", DEFECT_TYPES)
def test_defect_on_object_with_moderate_area(defect):
    fractions = []
    for class_name in CLASS_NAMES:
        sample, twin = _pair(class_name, defect, 0, image_size=128)
        region = sample.gt_mask.astype(bool)
        height = np.nan_to_num(_height_above_plate(twin.xyz), nan=np.inf)
        object_mask = height > 0.0005
        measured = region & np.any(twin.xyz != 0, axis=2)

        assert (height[measured] > 0.0005).mean() > 0.95, class_name
        fractions.append(region.sum() / object_mask.sum())

    assert min(fractions) > 0.01, fractions
    assert max(fractions) < 0.10, fractions


def test_defect_contrast_is_moderate():
    for class_name in CLASS_NAMES:
        for index in range(2):
            stain, stain_twin = _pair(class_name, "stain", index, image_size=96)
            region = stain.gt_mask.astype(bool)
            shift = np.abs(stain.rgb.astype(int) - stain_twin.rgb.astype(int)).max(axis=2)[region]
            assert 15 <= shift.mean() <= 50, (class_name, index, shift.mean())
            assert shift.max() <= 60, (class_name, index)
            assert stain.rgb.max() < 255

            for defect, sign in (("dent", 1), ("bump", -1)):
                sample, twin = _pair(class_name, defect, index, image_size=96)
                region = sample.gt_mask.astype(bool)
                valid = region & np.any(sample.xyz != 0, axis=2)
                change_mm = 1000 * sign * (sample.xyz[..., 2] - twin.xyz[..., 2])[valid]
                assert change_mm.min() >= 0, (class_name, defect, index)
                assert 0.8 < change_mm.max() < 3.2, (class_name, defect, index, change_mm.max())


def test_defect_twin_matches_good_rendering_path():
    # A defect-free twin must be a plain rendering: its points and colours come from
    # the same sensor model as every other sample, so its missing-point share and
    # brightness match those of good samples.
    twin = render_sample("puck", 0, split="test", defect="crack", seed=0, image_size=64, defect_free=True)
    good = render_sample("puck", 0, split="test", seed=0, image_size=64)

    assert abs(np.mean(~np.any(twin.xyz != 0, axis=2)) - np.mean(~np.any(good.xyz != 0, axis=2))) < 0.03
    assert abs(twin.rgb.mean() - good.rgb.mean()) < 20
