"""Tests for the raw Eyecandies reader and its converter, on generated 40×40 fixtures.

The fixtures follow the raw release byte format: 17 flat files per index, 16-bit depth
PNGs, info_depth.yaml, a 4×4 pose text file and 8-bit masks. `write_raw_class` is also
used by the CLI tests.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from modiad.dataset import list_classes, list_samples, read_sample
from modiad.errors import DatasetError
from sensors_sim.eyecandies import (
    FOCAL_LENGTH_PX,
    backproject_depth,
    convert_eyecandies,
    list_eyecandies_classes,
    list_eyecandies_samples,
    read_depth_m,
    read_eyecandies_sample,
    snake_case_class,
)

SIZE = 40
DEPTH_MIN_M = 0.3
DEPTH_MAX_M = 0.5


def rotation_pose(angle_rad: float, translation: tuple[float, float, float]) -> np.ndarray:
    """Return a 4×4 rigid pose: rotation about x by `angle_rad`, then `translation`."""
    cos, sin = np.cos(angle_rad), np.sin(angle_rad)
    pose = np.eye(4)
    pose[1:3, 1:3] = [[cos, -sin], [sin, cos]]
    pose[:3, 3] = translation
    return pose


def write_raw_sample(
    folder: Path,
    stem: str,
    *,
    seed: int,
    masks: dict[str, np.ndarray] | None = None,
    depth_range_m: tuple[float, float] = (DEPTH_MIN_M, DEPTH_MAX_M),
    zero_pixels: tuple[tuple[int, int], ...] = (),
    with_masks: bool = True,
) -> dict[str, np.ndarray]:
    """Write the 17 files of one raw sample and return the raw depth, pose and images."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)

    images = {}
    for index in range(6):
        images[index] = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(images[index]).save(folder / f"{stem}_image_{index}.png")

    depth_raw = rng.integers(1000, 60000, size=(SIZE, SIZE)).astype(np.uint16)
    for row, col in zero_pixels:
        depth_raw[row, col] = 0
    Image.fromarray(depth_raw).save(folder / f"{stem}_depth.png")
    info = {"normalization": {"min": depth_range_m[0], "max": depth_range_m[1]}}
    (folder / f"{stem}_info_depth.yaml").write_text(yaml.safe_dump(info))

    pose = rotation_pose(0.3 + 0.1 * seed, (0.01 * seed, -0.02, 0.6))
    np.savetxt(folder / f"{stem}_pose.txt", pose)
    Image.fromarray(rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)).save(folder / f"{stem}_normals.png")
    (folder / f"{stem}_obj_params.yaml").write_text("object: {}\n")

    if with_masks:
        masks = masks or {}
        union = np.zeros((SIZE, SIZE), dtype=np.uint8)
        for kind in ("bumps", "dents", "colors", "normals"):
            mask = masks.get(kind, np.zeros((SIZE, SIZE), dtype=np.uint8))
            Image.fromarray(mask).save(folder / f"{stem}_{kind}_mask.png")
            union = np.maximum(union, mask)
        Image.fromarray(union).save(folder / f"{stem}_mask.png")
        (folder / f"{stem}_metadata.yaml").write_text(f"anomalous: {int(union.any())}\n")
    return {"depth_raw": depth_raw, "pose": pose, "images": images}


def square_mask(top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[top : top + side, left : left + side] = 255
    return mask


def write_raw_class(root: Path, class_folder: str, *, seed: int = 0) -> None:
    """Write one raw class: 3 train (3-digit), 2 val, 4 test_public (2-digit), 1 test_private."""
    base = root / class_folder
    for index in range(3):
        write_raw_sample(base / "train" / "data", f"{index:03d}", seed=seed + index)
    for index in range(2):
        write_raw_sample(base / "val" / "data", f"{index:03d}", seed=seed + 10 + index)
    test = base / "test_public" / "data"
    write_raw_sample(test, "00", seed=seed + 20)
    write_raw_sample(test, "01", seed=seed + 21, masks={"dents": square_mask(5, 5, 6)})
    write_raw_sample(test, "02", seed=seed + 22, masks={"colors": square_mask(20, 10, 4)})
    write_raw_sample(
        test, "03", seed=seed + 23, masks={"bumps": square_mask(2, 2, 3), "normals": square_mask(30, 30, 5)}
    )
    write_raw_sample(base / "test_private" / "data", "00", seed=seed + 30, with_masks=False)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eyecandies") / "raw"
    write_raw_class(root, "CandyCane", seed=0)
    write_raw_class(root, "GummyBear", seed=100)
    return root


# ---------------------------------------------------------------------------------
# Reader


def test_class_names_snake_case():
    assert snake_case_class("CandyCane") == "candy_cane"
    assert snake_case_class("PeppermintCandy") == "peppermint_candy"
    assert snake_case_class("Lollipop") == "lollipop"


def test_list_classes_finds_raw_folders(raw_root):
    assert list_eyecandies_classes(raw_root) == ["CandyCane", "GummyBear"]


def test_both_index_widths_listed(raw_root):
    train = list_eyecandies_samples(raw_root, "CandyCane", "train")
    test = list_eyecandies_samples(raw_root, "CandyCane", "test_public")

    assert [ref.stem for ref in train] == ["000", "001", "002"]
    assert [ref.index for ref in train] == [0, 1, 2]
    assert [ref.stem for ref in test] == ["00", "01", "02", "03"]
    assert test[1].path("depth.png").name == "01_depth.png"
    assert test[1].path("depth.png").is_file()


def test_depth_formula_matches_normalization(raw_root):
    ref = list_eyecandies_samples(raw_root, "CandyCane", "train")[1]
    raw = np.array(Image.open(ref.path("depth.png"))).astype(np.float64)
    info = yaml.safe_load(ref.path("info_depth.yaml").read_text())["normalization"]

    depth = read_depth_m(ref.path("depth.png"), ref.path("info_depth.yaml"))

    expected = raw / 65535.0 * (info["max"] - info["min"]) + info["min"]
    np.testing.assert_allclose(depth, expected, rtol=1e-6)
    assert depth.dtype == np.float32


def official_backprojection(depth_m: np.ndarray, pose: np.ndarray, focal_px: float) -> np.ndarray:
    """The dataset authors' per-pixel formula: inv(K·pose) · (u, v, 1, 1/d) · d."""
    height, width = depth_m.shape
    intrinsics = np.array(
        [[focal_px, 0, width / 2, 0], [0, focal_px, height / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    )
    inverse = np.linalg.inv(intrinsics @ pose)
    points = np.zeros((height, width, 3))
    for row in range(height):
        for col in range(width):
            depth = float(depth_m[row, col])
            vector = np.array([col, row, 1.0, 1.0 / depth])
            points[row, col] = (depth * (inverse @ vector))[:3]
    return points


def test_world_frame_matches_official_formula():
    rng = np.random.default_rng(3)
    depth = rng.uniform(0.3, 0.5, size=(12, 16))
    pose = rotation_pose(0.4, (0.05, -0.02, 0.7))

    points = backproject_depth(depth, pose=pose)

    np.testing.assert_allclose(points, official_backprojection(depth, pose, FOCAL_LENGTH_PX), atol=1e-6)


def test_camera_frame_is_pinhole():
    depth = np.full((10, 20), 0.4)

    points = backproject_depth(depth)

    np.testing.assert_allclose(points[..., 2], 0.4)
    np.testing.assert_allclose(points[3, 7, 0], (7 - 10) * 0.4 / FOCAL_LENGTH_PX, rtol=1e-6)
    np.testing.assert_allclose(points[3, 7, 1], (3 - 5) * 0.4 / FOCAL_LENGTH_PX, rtol=1e-6)


def test_camera_and_world_frames_differ_by_pose(raw_root):
    ref = list_eyecandies_samples(raw_root, "GummyBear", "val")[0]
    pose = np.loadtxt(ref.path("pose.txt"))

    camera = read_eyecandies_sample(ref, frame="camera").xyz.astype(np.float64)
    world = read_eyecandies_sample(ref, frame="world").xyz.astype(np.float64)

    homogeneous = np.concatenate([world, np.ones(world.shape[:2] + (1,))], axis=-1)
    np.testing.assert_allclose((homogeneous @ pose.T)[..., :3], camera, atol=1e-5)


def test_zero_depth_pixel_is_missing_point(tmp_path):
    folder = tmp_path / "Confetto" / "train" / "data"
    write_raw_sample(folder, "000", seed=5, depth_range_m=(0.0, 0.5), zero_pixels=((4, 7), (39, 0)))
    ref = list_eyecandies_samples(tmp_path, "Confetto", "train")[0]

    for frame in ("camera", "world"):
        xyz = read_eyecandies_sample(ref, frame=frame).xyz

        assert np.isfinite(xyz).all()
        np.testing.assert_array_equal(xyz[4, 7], [0.0, 0.0, 0.0])
        np.testing.assert_array_equal(xyz[39, 0], [0.0, 0.0, 0.0])
        assert (xyz != 0).any(axis=-1).sum() == SIZE * SIZE - 2


def test_raw_zero_with_positive_minimum_is_valid(tmp_path):
    folder = tmp_path / "Confetto" / "train" / "data"
    write_raw_sample(folder, "000", seed=6, zero_pixels=((1, 1),))
    ref = list_eyecandies_samples(tmp_path, "Confetto", "train")[0]

    xyz = read_eyecandies_sample(ref).xyz

    np.testing.assert_allclose(xyz[1, 1, 2], DEPTH_MIN_M, rtol=1e-6)


def test_lighting_image_is_configurable(raw_root):
    ref = list_eyecandies_samples(raw_root, "CandyCane", "train")[0]

    for index in (0, 4, 5):
        expected = np.array(Image.open(ref.path(f"image_{index}.png")).convert("RGB"))
        np.testing.assert_array_equal(read_eyecandies_sample(ref, image=f"image_{index}").rgb, expected)
    np.testing.assert_array_equal(
        read_eyecandies_sample(ref).rgb, np.array(Image.open(ref.path("image_4.png")).convert("RGB"))
    )


def test_test_sample_defect_type_from_masks(raw_root):
    refs = list_eyecandies_samples(raw_root, "CandyCane", "test_public")

    samples = [read_eyecandies_sample(ref) for ref in refs]

    assert [sample.defect_type for sample in samples] == ["good", "dents", "colors", "combined"]
    assert [sample.label for sample in samples] == [0, 1, 1, 1]
    assert samples[1].gt_mask.sum() == 36
    assert samples[3].gt_mask.sum() == 9 + 25
    assert samples[1].sample_id == "candy_cane/test/dents/001"


def test_absolute_split_part_rejected(raw_root):
    with pytest.raises(DatasetError, match="relative"):
        list_eyecandies_samples(raw_root, "CandyCane", "/train")
    with pytest.raises(DatasetError, match="relative"):
        list_eyecandies_samples(raw_root, "/CandyCane", "train")


def test_missing_pose_names_file(tmp_path):
    folder = tmp_path / "Confetto" / "train" / "data"
    write_raw_sample(folder, "000", seed=1)
    (folder / "000_pose.txt").unlink()

    with pytest.raises(DatasetError) as caught:
        list_eyecandies_samples(tmp_path, "Confetto", "train")

    assert str(folder / "000_pose.txt") in str(caught.value)


def test_eight_bit_depth_rejected(tmp_path):
    folder = tmp_path / "Confetto" / "train" / "data"
    write_raw_sample(folder, "000", seed=1)
    Image.fromarray(np.zeros((SIZE, SIZE), dtype=np.uint8)).save(folder / "000_depth.png")
    ref = list_eyecandies_samples(tmp_path, "Confetto", "train")[0]

    with pytest.raises(DatasetError, match="16-bit"):
        read_eyecandies_sample(ref)


# ---------------------------------------------------------------------------------
# Converter


@pytest.fixture(scope="module")
def converted(raw_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, dict]:
    before = tree_digest(raw_root)
    destination = tmp_path_factory.mktemp("converted") / "mvtec-like"
    summary = convert_eyecandies(raw_root, destination)
    return destination, summary, before


def test_converted_tree_reads_as_mvtec_layout(converted):
    destination, summary, _ = converted

    assert list_classes(destination) == ["candy_cane", "gummy_bear"]
    assert [ref.sample_id for ref in list_samples(destination, "candy_cane", "train")] == [
        "candy_cane/train/good/000", "candy_cane/train/good/001", "candy_cane/train/good/002"
    ]
    assert len(list_samples(destination, "gummy_bear", "validation")) == 2
    test_ids = [ref.sample_id for ref in list_samples(destination, "candy_cane", "test")]
    assert test_ids == [
        "candy_cane/test/good/000", "candy_cane/test/colors/002",
        "candy_cane/test/combined/003", "candy_cane/test/dents/001",
    ]
    assert summary.counts["candy_cane"] == {"train": 3, "validation": 2, "test": 4}
    assert summary.skipped_private == 2


def test_converted_sample_equals_direct_read(converted, raw_root):
    destination, _, _ = converted
    raw_refs = list_eyecandies_samples(raw_root, "GummyBear", "test_public")

    for raw_ref in raw_refs:
        direct = read_eyecandies_sample(raw_ref)
        stored = [ref for ref in list_samples(destination, "gummy_bear", "test") if ref.sample_id == direct.sample_id]
        assert len(stored) == 1

        converted_sample = read_sample(stored[0])

        np.testing.assert_array_equal(converted_sample.rgb, direct.rgb)
        np.testing.assert_array_equal(converted_sample.xyz, direct.xyz)
        np.testing.assert_array_equal(converted_sample.gt_mask, direct.gt_mask)
        assert converted_sample.label == direct.label


def test_conversion_leaves_raw_untouched(converted, raw_root):
    _, _, before = converted

    assert tree_digest(raw_root) == before


def test_conversion_rerun_is_up_to_date(converted, raw_root):
    destination, _, _ = converted
    stamp = (destination / "candy_cane" / "train" / "good" / "xyz" / "000.tiff").stat().st_mtime_ns

    summary = convert_eyecandies(raw_root, destination)

    assert summary.up_to_date
    assert summary.counts["gummy_bear"]["test"] == 4
    assert (destination / "candy_cane" / "train" / "good" / "xyz" / "000.tiff").stat().st_mtime_ns == stamp


def test_destination_inside_source_rejected(raw_root):
    with pytest.raises(DatasetError, match="overlaps"):
        convert_eyecandies(raw_root, raw_root / "converted")


def test_foreign_destination_rejected(raw_root, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")

    with pytest.raises(DatasetError, match="not empty"):
        convert_eyecandies(raw_root, tmp_path)

    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_unknown_lighting_image_rejected(raw_root, tmp_path):
    with pytest.raises(DatasetError, match="image_6"):
        convert_eyecandies(raw_root, tmp_path / "out", image="image_6")


# ---------------------------------------------------------------------------------
# Demo


def test_demo_converts_into_cache_beside_output(raw_root, tmp_path):
    from modiad.demo import DemoOptions, _prepare_dataset

    options = DemoOptions(dataset="eyecandies", data_root=raw_root, output=tmp_path / "results" / "run-1")

    data_root = _prepare_dataset(options)

    assert data_root == (tmp_path / "results" / "eyecandies-mvtec").resolve()
    assert list_classes(data_root) == ["candy_cane", "gummy_bear"]
    assert _prepare_dataset(options) == data_root


def test_demo_eyecandies_needs_data_root():
    from modiad.demo import DemoOptions, _prepare_dataset
    from modiad.errors import ConfigError

    with pytest.raises(ConfigError, match="--data-root"):
        _prepare_dataset(DemoOptions(dataset="eyecandies"))
