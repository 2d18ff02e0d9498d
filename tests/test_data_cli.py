"""Tests for `modiad data`: generate, convert-eyecandies and check, run through `main`."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from test_eyecandies import write_raw_class

from modiad.cli import main
from modiad.dataset import check_dataset, list_samples, read_sample
from sensors_sim.mvtec import PreprocessSettings
from sensors_sim.synthetic import DEFECT_TYPES, PROFILES

CLASSES = ["dome", "ring"]
SMALL = PROFILES["small"]


@pytest.fixture(scope="module")
def generated_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data-cli") / "synthetic"
    assert main(["data", "generate", str(root), "--profile", "small", "--classes", ",".join(CLASSES)]) == 0
    return root


@pytest.fixture
def damaged_root(generated_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(generated_root, tmp_path / "data"))


def table_row(output: str, first_cell: str) -> list[str]:
    for line in output.splitlines():
        cells = line.split()
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{output}")


def test_generate_writes_readable_tree(generated_root):
    assert sorted(path.name for path in generated_root.iterdir() if path.is_dir()) == CLASSES
    assert (generated_root / "dataset.json").is_file()


def test_check_counts_match_profile(generated_root, capsys):
    exit_code = main(["data", "check", str(generated_root)])
    output = capsys.readouterr().out

    assert exit_code == 0
    assert "no problems found" in output
    defect_count = SMALL.test_per_defect * len(DEFECT_TYPES)
    size = f"{SMALL.image_size}×{SMALL.image_size}"
    for class_name in CLASSES:
        expected = [class_name, SMALL.train, SMALL.validation, SMALL.test_good, defect_count, len(DEFECT_TYPES), size]
        assert table_row(output, class_name) == [str(value) for value in expected]
    total = table_row(output, "total")
    assert total[1] == str(SMALL.train * len(CLASSES))
    assert total[4] == str(defect_count * len(CLASSES))


def test_check_lists_every_problem(damaged_root, capsys):
    missing_xyz = damaged_root / "dome" / "train" / "good" / "xyz" / "001.tiff"
    missing_xyz.unlink()
    missing_mask = damaged_root / "ring" / "test" / "dent" / "gt" / "000.png"
    missing_mask.unlink()
    wrong_mask = damaged_root / "ring" / "test" / "crack" / "gt" / "000.png"
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8)).save(wrong_mask)
    wrong_dtype = damaged_root / "dome" / "test" / "good" / "xyz" / "000.tiff"
    tifffile.imwrite(wrong_dtype, np.zeros((SMALL.image_size, SMALL.image_size, 3)), photometric="rgb")
    shutil.rmtree(damaged_root / "ring" / "validation")

    exit_code = main(["data", "check", str(damaged_root)])
    output = capsys.readouterr().out

    assert exit_code == 1
    assert "5 problems found" in output
    assert f"{missing_xyz.parent.parent / 'rgb' / '001.png'}: missing point cloud" in output
    assert f"{missing_mask}: missing defect mask" in output
    assert f"{wrong_mask}: size mismatch" in output
    assert f"{wrong_dtype}: invalid point cloud: expected float32" in output
    assert f"{damaged_root / 'ring' / 'validation'}: missing validation split folder" in output
    assert table_row(output, "dome")[1] == str(SMALL.train - 1)


def test_check_read_files_finds_truncation(damaged_root):
    truncated = damaged_root / "ring" / "train" / "good" / "xyz" / "000.tiff"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])

    quick = check_dataset(damaged_root)
    deep = check_dataset(damaged_root, read_files=True)

    assert [problem.path for problem in deep.problems] == [truncated.parent.parent / "rgb" / "000.png"]
    assert len(quick.problems) <= len(deep.problems)
    assert "failed to read sample" in deep.problems[0].message


def test_check_missing_root_reports_it(tmp_path, capsys):
    missing = tmp_path / "nowhere"

    exit_code = main(["data", "check", str(missing)])
    output = capsys.readouterr().out

    assert exit_code == 1
    assert f"{missing}: " in output


def test_convert_eyecandies_then_check(tmp_path, capsys):
    raw = tmp_path / "raw"
    write_raw_class(raw, "Lollipop", seed=7)
    destination = tmp_path / "converted"

    assert main(["data", "convert-eyecandies", str(raw), str(destination), "--image", "image_0"]) == 0
    convert_output = capsys.readouterr().out
    assert main(["data", "check", str(destination)]) == 0
    check_output = capsys.readouterr().out

    assert "lollipop: train 3, validation 2, test 4" in convert_output
    assert "skipped 1 test_private samples" in convert_output
    assert table_row(check_output, "lollipop") == ["lollipop", "3", "2", "1", "3", "3", "40×40"]


def test_convert_eyecandies_error_exit_code(tmp_path, capsys):
    raw = tmp_path / "raw"
    write_raw_class(raw, "Lollipop", seed=7)

    exit_code = main(["data", "convert-eyecandies", str(raw), str(raw / "inside")])

    assert exit_code == 2
    assert "overlaps" in capsys.readouterr().err


def test_generate_unknown_profile_exit_code(tmp_path, capsys):
    exit_code = main(["data", "generate", str(tmp_path / "x"), "--profile", "huge"])

    assert exit_code == 2
    assert "huge" in capsys.readouterr().err


def test_preprocess_mvtec_defaults_then_check(generated_root, tmp_path, capsys):
    cache = tmp_path / "cache"

    assert main(["data", "preprocess-mvtec", str(generated_root), str(cache), "--classes", "dome"]) == 0
    preprocess_output = capsys.readouterr().out
    assert main(["data", "check", str(cache)]) == 0

    sample_count = SMALL.train + SMALL.validation + SMALL.test_good + SMALL.test_per_defect * len(DEFECT_TYPES)
    assert f"{sample_count} samples written" in preprocess_output
    manifest = json.loads((cache / "preprocess.json").read_text())
    assert manifest["settings"] == asdict(PreprocessSettings())


def test_preprocess_mvtec_options_reach_settings(generated_root, tmp_path, capsys):
    cache = tmp_path / "cache"

    exit_code = main([
        "data", "preprocess-mvtec", str(generated_root), str(cache), "--classes", "ring",
        "--plane-distance-m", "0.002", "--keep-largest-cluster", "--image-size", "48", "--border-px", "4",
    ])

    assert exit_code == 0
    settings = json.loads((cache / "preprocess.json").read_text())["settings"]
    assert settings["plane_distance_m"] == 0.002
    assert settings["keep_largest_cluster"] is True
    assert settings["image_size"] == 48
    assert settings["border_px"] == 4
    sample = read_sample(list_samples(cache, "ring", "test")[-1])
    assert sample.rgb.shape == (48, 48, 3)
    assert sample.xyz.shape == (48, 48, 3)
    assert sample.gt_mask.shape == (48, 48)


def test_full_profile_has_paper_sized_counts():
    full = PROFILES["full"]
    test_count = full.test_good + full.test_per_defect * len(DEFECT_TYPES)

    assert full.train >= 200
    assert 25 <= full.validation <= 35
    assert 90 <= test_count <= 110
    assert full.image_size == PROFILES["demo"].image_size
