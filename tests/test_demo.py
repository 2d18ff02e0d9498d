"""`modiad demo` as a user runs it: the console entry point in a separate process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]


def _run_demo(*arguments: str, cwd, timeout_s: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "modiad.cli", "demo", *arguments],
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@pytest.mark.slow
def test_demo_runs_end_to_end_on_embedded_broker(tmp_path):
    output = tmp_path / "results"
    result = _run_demo(
        "--profile", "small", "--rounds", "2", "--iterations", "5",
        "--output", str(output), "--data-root", str(tmp_path / "data"),
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "embedded broker listening on 127.0.0.1:" in result.stdout
    assert "round   2/2" in result.stdout
    assert "mean" in result.stdout
    results = json.loads((output / "results.json").read_text())
    assert len(results["classes"]) == 10
    for key in ("i_auroc", "aupro@0.3", "aupro@0.1", "aupro@0.05"):
        assert 0.0 <= results["mean"][key] <= 1.0
    assert (output / "results.csv").read_text().startswith("class,")
    assert len((output / "rounds.jsonl").read_text().splitlines()) == 2


def test_demo_with_missing_dataset_path_fails_clearly(tmp_path):
    missing = tmp_path / "no-such-folder"
    result = _run_demo("--dataset", "mvtec3d", "--data-root", str(missing), "--output", str(tmp_path / "out"),
                       cwd=tmp_path, timeout_s=120)

    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_rejects_invalid_round_count(tmp_path):
    result = _run_demo("--rounds", "0", cwd=tmp_path, timeout_s=120)

    assert result.returncode == 2
    assert "--rounds must be positive, got 0" in result.stderr


def test_demo_paper_preset_without_weights_fails_before_work(tmp_path):
    weights = tmp_path / "weights"
    result = _run_demo("--features", "paper", "--weights-dir", str(weights), "--output", str(tmp_path / "out"),
                       "--data-root", str(tmp_path / "data"), cwd=tmp_path, timeout_s=120)

    assert result.returncode == 2
    assert str(weights / "dino_vitbase8_pretrain.pth") in result.stderr
    assert str(weights / "point_mae_pretrain.pth") in result.stderr
    assert not (tmp_path / "data").exists()


def test_demo_rejects_uneven_class_layout(tmp_path):
    result = _run_demo("--profile", "small", "--classes", "dome,ring", "--edges", "3",
                       "--output", str(tmp_path / "out"), "--data-root", str(tmp_path / "data"),
                       cwd=tmp_path, timeout_s=120)

    assert result.returncode == 2
    assert "cannot be spread evenly over 3 edges" in result.stderr


def test_stream_layout_of_the_paper_setting():
    from modiad.demo import stream_layout

    assert stream_layout(10, 5) == (4, 2)
    assert stream_layout(2, 2) == (2, 2)
    assert stream_layout(3, 1) == (3, 1)


def test_inprocess_demo_on_two_classes(tmp_path):
    output = tmp_path / "out"
    result = _run_demo("--profile", "small", "--classes", "dome,ring", "--edges", "2", "--rounds", "2",
                       "--iterations", "5", "--transport", "inprocess", "--output", str(output),
                       "--data-root", str(tmp_path / "data"), cwd=tmp_path, timeout_s=600)

    assert result.returncode == 0, result.stderr[-2000:]
    assert "round   2/2" in result.stdout
    results = json.loads((output / "results.json").read_text())
    assert sorted(results["classes"]) == ["dome", "ring"]
    assert (output / "curves.png").exists()


@pytest.mark.slow
def test_demo_paper_preset_test_weights(tmp_path):
    from modiad.features.paper import save_random_paper_weights

    weights = tmp_path / "weights"
    save_random_paper_weights(weights)  # official names, keys and shapes; random values
    output = tmp_path / "out"

    result = _run_demo("--profile", "tiny", "--classes", "dome,ring", "--edges", "2", "--rounds", "1",
                       "--iterations", "3", "--transport", "inprocess", "--features", "paper",
                       "--weights-dir", str(weights), "--output", str(output),
                       "--data-root", str(tmp_path / "data"), cwd=tmp_path, timeout_s=1200)

    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((output / "results.json").read_text())
    assert results["run"]["feature_identity"].startswith("paper")
    assert sorted(results["classes"]) == ["dome", "ring"]
    cloud_config = (output / "config" / "cloud.yaml").read_text()
    assert "features_preset: paper" in cloud_config


def test_demo_rejects_non_empty_output_folder(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "state").mkdir()
    result = _run_demo("--profile", "small", "--output", str(output), "--data-root", str(tmp_path / "data"),
                       cwd=tmp_path, timeout_s=120)

    assert result.returncode == 2
    assert "not empty" in result.stderr


def test_demo_keeps_other_synthetic_set(tmp_path):
    from sensors_sim.synthetic import generate_dataset

    data = tmp_path / "data"
    generate_dataset(data, profile="small", seed=0, classes=["dome"])
    before = sorted(path.name for path in data.iterdir())

    result = _run_demo("--profile", "small", "--seed", "5", "--output", str(tmp_path / "out"),
                       "--data-root", str(data), cwd=tmp_path, timeout_s=120)

    assert result.returncode == 2
    assert "another --data-root" in result.stderr
    assert sorted(path.name for path in data.iterdir()) == before


def test_demo_rejects_bad_broker_url_before_starting(tmp_path):
    result = _run_demo("--broker", "http://127.0.0.1:1883", "--output", str(tmp_path / "out"), cwd=tmp_path,
                       timeout_s=120)

    assert result.returncode == 2
    assert "http://127.0.0.1:1883" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
