"""`modiad demo` on the real datasets' layouts: MVTec 3D-AD and raw Eyecandies trees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sensors_sim.synthetic import generate_dataset
from test_demo import _run_demo
from test_eyecandies import write_raw_class

pytestmark = pytest.mark.slow


def test_demo_runs_on_mvtec_layout(tmp_path):
    data = tmp_path / "mvtec"
    generate_dataset(data, profile="small", seed=2, classes=["dome", "ring"])  # the MVTec 3D-AD layout
    output = tmp_path / "out"

    result = _run_demo("--dataset", "mvtec3d", "--data-root", str(data), "--edges", "2", "--rounds", "1",
                       "--iterations", "3", "--transport", "inprocess", "--output", str(output),
                       cwd=tmp_path, timeout_s=600)

    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(json.loads((output / "results.json").read_text())["classes"]) == ["dome", "ring"]


def test_demo_runs_on_raw_eyecandies_tree(tmp_path):
    raw = tmp_path / "eyecandies"
    write_raw_class(raw, "CandyCane", seed=0)
    write_raw_class(raw, "GummyBear", seed=100)
    output = tmp_path / "results" / "run"

    result = _run_demo("--dataset", "eyecandies", "--data-root", str(raw), "--edges", "2", "--rounds", "1",
                       "--iterations", "3", "--packet-size", "20", "--transport", "inprocess",
                       "--output", str(output), cwd=tmp_path, timeout_s=600)

    assert result.returncode == 0, result.stderr[-2000:]
    assert "round   1/1" in result.stdout
    assert (output / "results.json").is_file()
    assert Path(tmp_path / "results" / "eyecandies-mvtec", "candy_cane", "train", "good").is_dir()
