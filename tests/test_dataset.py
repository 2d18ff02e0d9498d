"""Tests for the MVTec 3D-AD layout reader, on generated and hand-damaged trees."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from modiad.dataset import list_classes, list_samples, load_split, read_sample
from modiad.errors import DatasetError
from sensors_sim.synthetic import (
    DEFECT_TYPES,
    PROFILES,
    generate_dataset,
    render_sample,
)

CLASSES = ["dome", "ring"]
SMALL = PROFILES["small"]


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset of two classes, shared read-only by this module."""
    return generate_dataset(tmp_path_factory.mktemp("reader") / "data", profile="small", seed=0, classes=CLASSES)


@pytest.fixture
def writable_root(dataset_root: Path, tmp_path: Path) -> Path:
    """A private copy of the dataset that a test may damage."""
    return Path(shutil.copytree(dataset_root, tmp_path / "data"))


def test_list_classes_sorted_and_skips_other_entries(writable_root):
    (writable_root / "readme.txt").write_text("not a class")
    (writable_root / "notes").mkdir()

    assert list_classes(writable_root) == sorted(CLASSES)


def test_list_samples_counts_and_order(dataset_root):
    train = list_samples(dataset_root, "dome", "train")
    validation = list_samples(dataset_root, "dome", "validation")
    test = list_samples(dataset_root, "dome", "test")

    assert [ref.sample_id for ref in train] == [f"dome/train/good/{i:03d}" for i in range(SMALL.train)]
    assert len(validation) == SMALL.validation
    expected_test = [f"dome/test/good/{i:03d}" for i in range(SMALL.test_good)]
    for defect in sorted(DEFECT_TYPES):
        expected_test += [f"dome/test/{defect}/{i:03d}" for i in range(SMALL.test_per_defect)]
    assert [ref.sample_id for ref in test] == expected_test


def test_list_samples_paths_and_masks(dataset_root):
    for ref in list_samples(dataset_root, "ring", "train"):
        assert ref.gt_path is None
        assert ref.split == "train"
        assert ref.defect_type == "good"
    for ref in list_samples(dataset_root, "ring", "test"):
        assert ref.gt_path is not None
        assert ref.gt_path.stem == ref.rgb_path.stem == ref.xyz_path.stem
        assert ref.rgb_path.parent.parent.name == ref.defect_type


def test_list_samples_numeric_stem_order(writable_root):
    folder = writable_root / "dome" / "train" / "good"
    for sub, suffix in (("rgb", ".png"), ("xyz", ".tiff")):
        shutil.copy(folder / sub / f"000{suffix}", folder / sub / f"10{suffix}")
        shutil.copy(folder / sub / f"000{suffix}", folder / sub / f"9{suffix}")

    stems = [ref.rgb_path.stem for ref in list_samples(writable_root, "dome", "train")]

    assert stems[-2:] == ["9", "10"]


def test_read_sample_matches_rendering(dataset_root):
    for ref in list_samples(dataset_root, "dome", "test"):
        index = int(ref.rgb_path.stem)
        defect = None if ref.defect_type == "good" else ref.defect_type
        expected = render_sample("dome", index, split="test", defect=defect, seed=0, image_size=SMALL.image_size)

        sample = read_sample(ref)

        assert sample.sample_id == ref.sample_id
        assert sample.rgb.flags.writeable
        assert sample.xyz.flags.writeable
        assert sample.rgb.dtype == np.uint8
        assert sample.xyz.dtype == np.float32
        np.testing.assert_array_equal(sample.rgb, expected.rgb)
        np.testing.assert_array_equal(sample.xyz, expected.xyz)
        np.testing.assert_array_equal(sample.gt_mask, expected.gt_mask)
        assert sample.label == (0 if defect is None else 1)
        assert sample.defect_type == ref.defect_type


def test_read_sample_mask_is_file_over_255(dataset_root):
    ref = list_samples(dataset_root, "ring", "test")[-1]
    raw = np.asarray(Image.open(ref.gt_path))

    sample = read_sample(ref)

    np.testing.assert_array_equal(sample.gt_mask, raw // 255)
    assert set(np.unique(sample.gt_mask)) == {0, 1}


def test_load_split_train_has_no_masks(dataset_root):
    samples = load_split(dataset_root, "ring", "train")

    assert len(samples) == SMALL.train
    assert all(sample.gt_mask is None for sample in samples)
    assert all(sample.label == 0 for sample in samples)


def test_nan_and_inf_points_become_zero(writable_root):
    ref = list_samples(writable_root, "dome", "train")[0]
    original = tifffile.imread(ref.xyz_path)
    damaged = original.copy()
    damaged[3, 4] = np.nan
    damaged[5, 6, 1] = np.inf
    damaged[7, 8, 2] = -np.inf
    tifffile.imwrite(ref.xyz_path, damaged, photometric="rgb")

    xyz = read_sample(ref).xyz

    for row, col in ((3, 4), (5, 6), (7, 8)):
        np.testing.assert_array_equal(xyz[row, col], [0.0, 0.0, 0.0])
    untouched = np.ones(xyz.shape[:2], dtype=bool)
    untouched[[3, 5, 7], [4, 6, 8]] = False
    np.testing.assert_array_equal(xyz[untouched], original[untouched])


def test_good_test_sample_without_mask_reads_zeros(writable_root):
    ref = list_samples(writable_root, "dome", "test")[0]
    assert ref.defect_type == "good"
    ref.gt_path.unlink()

    refs = list_samples(writable_root, "dome", "test")
    sample = read_sample(refs[0])

    assert sample.gt_mask.shape == sample.rgb.shape[:2]
    assert not sample.gt_mask.any()


# ---------------------------------------------------------------------------------
# Errors


def test_missing_root_names_path_and_fix(tmp_path):
    missing = tmp_path / "nowhere"

    with pytest.raises(DatasetError) as caught:
        list_samples(missing, "dome", "train")

    assert str(missing) in str(caught.value)
    assert "modiad demo" in str(caught.value)
    assert "--data-root" in str(caught.value)


def test_root_without_classes_rejected(tmp_path):
    (tmp_path / "readme.txt").write_text("empty")

    with pytest.raises(DatasetError, match="No class folders"):
        list_classes(tmp_path)


def test_unknown_class_names_known_classes(dataset_root):
    with pytest.raises(DatasetError) as caught:
        list_samples(dataset_root, "bagel", "test")

    message = str(caught.value)
    assert "bagel" in message
    for name in CLASSES:
        assert name in message


def test_unknown_split_rejected(dataset_root):
    with pytest.raises(DatasetError, match="validation"):
        list_samples(dataset_root, "dome", "val")


def test_missing_split_names_path(writable_root):
    shutil.rmtree(writable_root / "dome" / "validation")

    with pytest.raises(DatasetError) as caught:
        list_samples(writable_root, "dome", "validation")

    assert str(writable_root / "dome" / "validation") in str(caught.value)


def test_corrupt_png_names_file(writable_root):
    ref = list_samples(writable_root, "dome", "train")[1]
    ref.rgb_path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)

    with pytest.raises(DatasetError) as caught:
        read_sample(ref)

    assert str(ref.rgb_path) in str(caught.value)


def test_corrupt_tiff_names_file(writable_root):
    ref = list_samples(writable_root, "dome", "train")[1]
    ref.xyz_path.write_bytes(b"II*\x00" + b"\xff" * 64)

    with pytest.raises(DatasetError) as caught:
        read_sample(ref)

    assert str(ref.xyz_path) in str(caught.value)


def test_corrupt_mask_names_file(writable_root):
    ref = list_samples(writable_root, "dome", "test")[-1]
    ref.gt_path.write_bytes(b"not an image")

    with pytest.raises(DatasetError) as caught:
        read_sample(ref)

    assert str(ref.gt_path) in str(caught.value)


@pytest.mark.parametrize(
    ("array", "photometric", "expected"),
    [
        (np.zeros((64, 64), dtype=np.float32), "minisblack", "H×W×3"),
        (np.zeros((64, 64, 4), dtype=np.float32), "rgb", "H×W×3"),
        (np.zeros((64, 64, 3), dtype=np.float64), "rgb", "float32"),
    ],
)
def test_xyz_wrong_shape_or_dtype_rejected(writable_root, array, photometric, expected):
    ref = list_samples(writable_root, "dome", "train")[0]
    tifffile.imwrite(ref.xyz_path, array, photometric=photometric)

    with pytest.raises(DatasetError, match=expected) as caught:
        read_sample(ref)

    assert str(ref.xyz_path) in str(caught.value)


def test_xyz_size_mismatch_rejected(writable_root):
    ref = list_samples(writable_root, "dome", "train")[0]
    tifffile.imwrite(ref.xyz_path, np.zeros((32, 64, 3), dtype=np.float32), photometric="rgb")

    with pytest.raises(DatasetError, match="Size mismatch") as caught:
        read_sample(ref)

    assert str(ref.xyz_path) in str(caught.value)


def test_mask_size_mismatch_rejected(writable_root):
    ref = list_samples(writable_root, "dome", "test")[-1]
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(ref.gt_path)

    with pytest.raises(DatasetError, match="Size mismatch") as caught:
        read_sample(ref)

    assert str(ref.gt_path) in str(caught.value)


def test_rgb_without_xyz_rejected(writable_root):
    xyz_path = writable_root / "dome" / "train" / "good" / "xyz" / "002.tiff"
    xyz_path.unlink()

    with pytest.raises(DatasetError) as caught:
        list_samples(writable_root, "dome", "train")

    assert str(xyz_path) in str(caught.value)


def test_defect_without_mask_rejected(writable_root):
    gt_path = writable_root / "ring" / "test" / "crack" / "gt" / "000.png"
    gt_path.unlink()

    with pytest.raises(DatasetError) as caught:
        list_samples(writable_root, "ring", "test")

    assert str(gt_path) in str(caught.value)
