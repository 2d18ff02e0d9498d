"""Tests of the embedded feature preset: weights loading, geometry and the extractor."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from modiad.errors import DatasetError, WeightsError
from modiad.features.base import FeatureMaps
from modiad.features.efficientnet import (
    find_lite0_weights_file,
    load_efficientnet_lite0,
    read_lite0_state_dict,
)
from modiad.features.embedded import EmbeddedExtractor, EmbeddedFeatureSettings
from modiad.features.geometry import (
    FPFH_DIM,
    PixelFeatures,
    fit_plane_ransac,
    grid_cell_index,
    pixel_fpfh,
    pool_foreground,
    pool_to_grid,
    remove_background_plane,
    valid_point_mask,
)

SCENE_SIZE = 64
GRID_SIZE = 16
FOCAL_PX = 560.0
PLANE_DEPTH_M = 0.4
BOX_HEIGHT_M = 0.01
# Box rows 40..47, cols 16..23: grid cells (10..11, 4..5) at 4 pixels per cell.
# It sits off the diagonal so that swapped rows and columns would show.
BOX = (40, 48, 16, 24)


# ---------------------------------------------------------------------------
# Synthetic scenes
# ---------------------------------------------------------------------------


def plane_cloud(size: int, *, tilt: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Return (float64 size×size×3 points, unit normal towards the camera) of a tilted plane.

    The plane z = PLANE_DEPTH_M + tilt·x is seen by a pinhole camera at the origin with
    focal length FOCAL_PX, and each pixel's ray is intersected with it.
    """
    rows, cols = np.indices((size, size), dtype=np.float64)
    centre = (size - 1) / 2
    ray_x = (cols - centre) / FOCAL_PX
    ray_y = (rows - centre) / FOCAL_PX
    depth = PLANE_DEPTH_M / (1.0 - tilt * ray_x)
    points = np.stack([depth * ray_x, depth * ray_y, depth], axis=-1)
    normal = np.array([tilt, 0.0, -1.0]) / np.hypot(tilt, 1.0)
    return points, normal


def make_scene(
    *,
    box: tuple[int, int, int, int] | None = BOX,
    size: int = SCENE_SIZE,
    noise_m: float = 0.0002,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (uint8 RGB, float32 organized cloud, bool box mask) of a plane with an optional box.

    The box top is BOX_HEIGHT_M above the plane along its normal, and the box pixels are
    painted a flat colour on a textured grey background.
    """
    rng = np.random.default_rng(seed)
    points, normal = plane_cloud(size)
    mask = np.zeros((size, size), dtype=bool)
    if box is not None:
        row0, row1, col0, col1 = box
        mask[row0:row1, col0:col1] = True
    points = points + mask[..., None] * BOX_HEIGHT_M * normal
    points = points + rng.normal(scale=noise_m, size=points.shape)

    rgb = (110 + rng.integers(0, 30, size=(size, size, 3))).astype(np.uint8)
    rgb[mask] = (230, 40, 20)
    return rgb, points.astype(np.float32), mask


@pytest.fixture(scope="module")
def small_settings() -> EmbeddedFeatureSettings:
    return EmbeddedFeatureSettings(grid_size=GRID_SIZE, border_px=6)


@pytest.fixture(scope="module")
def extractor(small_settings: EmbeddedFeatureSettings) -> EmbeddedExtractor:
    return EmbeddedExtractor(small_settings)


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------


def lukemelas_to_timm_name(key: str) -> str:
    """Translate an efficientnet_pytorch key to timm's name, by layer role rather than order.

    EfficientNet-Lite0 repeats its seven stages 1, 2, 2, 3, 3, 4 and 1 times. The first
    block has no expansion conv, so its depthwise BatchNorm is timm's bn1, not bn2.
    """
    repeats = [1, 2, 2, 3, 3, 4, 1]
    stage_of_block = [(stage, index) for stage, count in enumerate(repeats) for index in range(count)]
    head = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}

    match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if match is None:
        layer, _, tensor = key.partition(".")
        return f"{head[layer]}.{tensor}"

    block, layer, tensor = int(match[1]), match[2], match[3]
    stage, index = stage_of_block[block]
    if block == 0:
        roles = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    else:
        roles = {
            "_expand_conv": "conv_pw",
            "_bn0": "bn1",
            "_depthwise_conv": "conv_dw",
            "_bn1": "bn2",
            "_project_conv": "conv_pwl",
            "_bn2": "bn3",
        }
    return f"blocks.{stage}.{index}.{roles[layer]}.{tensor}"


def test_weights_mapping_by_layer_names() -> None:
    source = read_lite0_state_dict(find_lite0_weights_file())
    model = load_efficientnet_lite0()
    loaded = model.state_dict()

    checked = 0
    for key, tensor in source.items():
        if key.endswith("num_batches_tracked"):
            continue
        timm_key = lukemelas_to_timm_name(key)
        assert timm_key in loaded, f"{key} translates to {timm_key}, which timm does not have"
        assert torch.equal(loaded[timm_key], tensor), f"{timm_key} differs from {key}"
        checked += 1

    loaded_tensors = [key for key in loaded if not key.endswith("num_batches_tracked")]
    assert checked == len(loaded_tensors)


def test_loaded_model_frozen_eval() -> None:
    model = load_efficientnet_lite0()
    assert not model.training
    assert all(not parameter.requires_grad for parameter in model.parameters())


def test_weights_logits_match_reference() -> None:
    # A test extra (efficientnet-lite-pytorch), so CI always runs this comparison.
    import efficientnet_lite_pytorch as reference_package

    weights_path = find_lite0_weights_file()
    reference = reference_package.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights_path))
    reference.eval()
    model = load_efficientnet_lite0()

    # The reference pads statically for its native 224×224 input, so only that size
    # compares like with like.
    generator = torch.Generator().manual_seed(1234)
    images = torch.randn(2, 3, 224, 224, generator=generator)
    with torch.inference_mode():
        expected = reference(images)
        actual = model(images)

    assert actual.shape == (2, 1000)
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=1e-5)
    assert torch.equal(actual.argmax(dim=1), expected.argmax(dim=1))


def test_truncated_weights_file_raises(tmp_path) -> None:
    original = find_lite0_weights_file().read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(original[: len(original) // 2])

    with pytest.raises(WeightsError, match="truncated.pth"):
        load_efficientnet_lite0(truncated)


def corrupt_state_dict(kind: str) -> dict[str, torch.Tensor]:
    """Return the packaged state dict damaged in one way."""
    state = read_lite0_state_dict(find_lite0_weights_file())
    keys = [key for key in state if not key.endswith("num_batches_tracked")]
    if kind == "missing-tensor":
        del state[keys[10]]
    elif kind == "wrong-shape":
        state[keys[0]] = torch.zeros(16, 3, 3, 3)
    elif kind == "extra-tensor":
        state["_extra.weight"] = torch.zeros(4)
    elif kind == "nan-values":
        state[keys[5]] = torch.full_like(state[keys[5]], float("nan"))
    return state


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing-tensor", r"has shape"),
        ("wrong-shape", r"_conv_stem\.weight.*\(16, 3, 3, 3\).*conv_stem\.weight.*\(32, 3, 3, 3\)"),
        ("extra-tensor", r"tensors, but tf_efficientnet_lite0 has \d+.*_extra\.weight"),
        ("nan-values", r"NaN"),
    ],
)
def test_corrupt_state_dict_raises(tmp_path, kind: str, message: str) -> None:
    path = tmp_path / f"{kind}.pth"
    torch.save(corrupt_state_dict(kind), path)

    with pytest.raises(WeightsError, match=message) as raised:
        load_efficientnet_lite0(path)
    assert str(path) in str(raised.value)
    assert "pip install" in str(raised.value)


def test_non_tensor_weights_file_raises(tmp_path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], path)

    with pytest.raises(WeightsError, match="expected a state dict"):
        load_efficientnet_lite0(path)


def test_missing_weights_file_raises(tmp_path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        load_efficientnet_lite0(tmp_path / "absent.pth")


# ---------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------


def test_valid_point_mask_rejects_missing() -> None:
    xyz = np.ones((2, 3, 3), dtype=np.float32)
    xyz[0, 0] = 0.0
    xyz[0, 1, 2] = np.nan
    xyz[1, 2, 0] = np.inf
    xyz[1, 1] = (0.0, 0.0, 0.3)  # one zero coordinate is a real point

    valid = valid_point_mask(xyz)

    expected = np.array([[False, False, True], [True, True, False]])
    np.testing.assert_array_equal(valid, expected)


def test_plane_fit_recovers_plane_with_outliers() -> None:
    rng = np.random.default_rng(3)
    normal = np.array([0.2, -0.1, -1.0])
    normal /= np.linalg.norm(normal)
    offset = 0.4
    in_plane = rng.uniform(-0.05, 0.05, size=(500, 2))
    # Points p with normal·p + offset = 0: solve for z.
    z = -(offset + normal[0] * in_plane[:, 0] + normal[1] * in_plane[:, 1]) / normal[2]
    points = np.column_stack([in_plane, z]) + rng.normal(scale=0.0002, size=(500, 3))
    outliers = rng.uniform([-0.05, -0.05, 0.3], [0.05, 0.05, 0.38], size=(150, 3))

    plane = fit_plane_ransac(np.vstack([points, outliers]), inlier_m=0.001, iterations=200, seed=0)

    assert plane is not None
    fitted_normal, fitted_offset = plane
    assert fitted_offset > 0, "the camera origin must be on the positive side"
    np.testing.assert_allclose(fitted_normal, normal, atol=2e-3)
    np.testing.assert_allclose(fitted_offset, offset, atol=5e-4)


def test_plane_removal_keeps_only_box() -> None:
    _, xyz, box_mask = make_scene()
    valid = valid_point_mask(xyz)

    foreground = remove_background_plane(xyz, valid, distance_m=0.005, border_px=6)

    np.testing.assert_array_equal(foreground, box_mask)


def test_plane_removal_excludes_missing_points() -> None:
    _, xyz, box_mask = make_scene()
    xyz[41, 17] = 0.0
    xyz[42, 18] = np.nan
    xyz[43, 19, 1] = np.inf
    valid = valid_point_mask(xyz)

    foreground = remove_background_plane(xyz, valid, distance_m=0.005, border_px=6)

    expected = box_mask.copy()
    expected[41, 17] = expected[42, 18] = expected[43, 19] = False
    np.testing.assert_array_equal(foreground, expected)


def test_plane_removal_drops_points_behind_plane() -> None:
    _, xyz, box_mask = make_scene()
    points, normal = plane_cloud(SCENE_SIZE)
    # A pit: the same box shape pushed away from the camera.
    xyz[box_mask] = (points - BOX_HEIGHT_M * normal[None, None, :])[box_mask].astype(np.float32)

    foreground = remove_background_plane(xyz, valid_point_mask(xyz), distance_m=0.005, border_px=6)

    assert not foreground.any()


def test_plane_removal_few_border_points_warns(caplog) -> None:
    _, xyz, _ = make_scene()
    xyz[:6, :] = 0.0
    xyz[-6:, :] = 0.0
    xyz[:, :6] = 0.0
    xyz[:, -6:] = 0.0
    xyz[10, 10] = (0.0, 0.0, 0.4)  # one valid border point is too few
    xyz[6, 6] = (0.001, 0.001, 0.4)
    valid = valid_point_mask(xyz)

    with caplog.at_level(logging.WARNING, logger="modiad.features.geometry"):
        foreground = remove_background_plane(xyz, valid, distance_m=0.005, border_px=6, min_border_points=50)

    np.testing.assert_array_equal(foreground, valid)
    assert foreground is not valid
    assert any("background plane not removed" in record.getMessage() for record in caplog.records)


def test_grid_cell_index_matches_loop() -> None:
    height, width, grid = 30, 45, 7
    rows, cols = np.indices((height, width))

    cells = grid_cell_index(rows.ravel(), cols.ravel(), (height, width), grid)

    for row, col, cell in zip(rows.ravel(), cols.ravel(), cells):
        # The cell whose interval [i·H/G, (i+1)·H/G) contains the pixel, by float bounds.
        cell_row = next(i for i in range(grid) if i * height / grid <= row < (i + 1) * height / grid)
        cell_col = next(j for j in range(grid) if j * width / grid <= col < (j + 1) * width / grid)
        assert cell == cell_row * grid + cell_col


def test_pool_to_grid_means_per_cell() -> None:
    rng = np.random.default_rng(5)
    height, width, grid, dim = 20, 12, 4, 3
    foreground = rng.random((height, width)) < 0.3
    foreground[:5, :3] = False  # cell (0, 0) stays empty
    rows, cols = np.nonzero(foreground)
    values = rng.normal(size=(len(rows), dim)).astype(np.float32)

    means, occupied = pool_to_grid(PixelFeatures(rows, cols, values), image_shape=(height, width), grid_size=grid)

    assert means.shape == (grid, grid, dim)
    assert means.dtype == np.float32
    for i in range(grid):
        for j in range(grid):
            in_cell = (rows // (height // grid) == i) & (cols // (width // grid) == j)
            assert occupied[i, j] == in_cell.any()
            expected = values[in_cell].mean(axis=0) if in_cell.any() else np.zeros(dim)
            np.testing.assert_allclose(means[i, j], expected, rtol=1e-6, atol=1e-6)
    assert not occupied[0, 0]
    np.testing.assert_array_equal(occupied, pool_foreground(foreground, grid))


def test_pixel_fpfh_covers_every_foreground_pixel() -> None:
    _, xyz, box_mask = make_scene()
    settings = EmbeddedFeatureSettings()
    radii = {
        "normal_radius_m": settings.normal_radius_m,
        "normal_max_nn": settings.normal_max_nn,
        "fpfh_radius_m": settings.fpfh_radius_m,
        "fpfh_max_nn": settings.fpfh_max_nn,
    }

    full = pixel_fpfh(xyz, box_mask, point_stride=1, **radii)
    strided = pixel_fpfh(xyz, box_mask, point_stride=2, **radii)

    box_rows, box_cols = np.nonzero(box_mask)
    for features in (full, strided):
        np.testing.assert_array_equal(features.rows, box_rows)
        np.testing.assert_array_equal(features.cols, box_cols)
        assert features.values.shape == (box_mask.sum(), FPFH_DIM)
        assert np.isfinite(features.values).all()
        assert (features.values >= 0).all()
    # Every strided feature is a copy of a descriptor computed at an even row and column.
    on_lattice = (strided.rows % 2 == 0) & (strided.cols % 2 == 0)
    computed = {tuple(row) for row in strided.values[on_lattice]}
    assert all(tuple(row) in computed for row in strided.values)


def test_pixel_fpfh_empty_foreground() -> None:
    _, xyz, _ = make_scene(box=None)

    features = pixel_fpfh(
        xyz,
        np.zeros(xyz.shape[:2], dtype=bool),
        point_stride=1,
        normal_radius_m=0.005,
        normal_max_nn=30,
        fpfh_radius_m=0.01,
        fpfh_max_nn=100,
    )

    assert features.values.shape == (0, FPFH_DIM)


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


def test_settings_defaults() -> None:
    settings = EmbeddedFeatureSettings()

    assert settings.grid_size == 56
    assert settings.stages == (8, 16, 32)
    assert settings.point_stride == 2
    assert settings.dim_2d == 40 + 112 + 320


@pytest.mark.parametrize(
    "fields",
    [
        {"stages": (8, 12)},
        {"stages": ()},
        {"stages": (8, 8)},
        {"image_size": 100},
        {"grid_size": 0},
        {"plane_distance_m": -0.01},
        {"point_stride": 0},
        {"unknown_field": 1},
    ],
)
def test_settings_reject_invalid(fields: dict) -> None:
    with pytest.raises(ValidationError):
        EmbeddedFeatureSettings(**fields)


def test_settings_fingerprint_tracks_fields() -> None:
    base = EmbeddedFeatureSettings()

    assert base.fingerprint() == EmbeddedFeatureSettings().fingerprint()
    assert base.fingerprint() != EmbeddedFeatureSettings(point_stride=1).fingerprint()
    assert base.fingerprint() != EmbeddedFeatureSettings(stages=(16, 32)).fingerprint()


# ---------------------------------------------------------------------------
# Extractor
# ---------------------------------------------------------------------------


def test_extractor_attributes(extractor: EmbeddedExtractor, small_settings: EmbeddedFeatureSettings) -> None:
    assert extractor.identity == f"embedded-effnetlite0-fpfh-v1-{small_settings.fingerprint()}"
    assert extractor.grid_size == GRID_SIZE
    assert extractor.dim_2d == 472
    assert extractor.dim_3d == FPFH_DIM


def test_extract_shapes_and_dtypes(extractor: EmbeddedExtractor) -> None:
    rgb, xyz, _ = make_scene()

    maps = extractor.extract(rgb, xyz)

    assert isinstance(maps, FeatureMaps)
    assert maps.f2d.shape == (GRID_SIZE, GRID_SIZE, 472)
    assert maps.f3d.shape == (GRID_SIZE, GRID_SIZE, FPFH_DIM)
    assert maps.foreground.shape == (GRID_SIZE, GRID_SIZE)
    assert maps.f2d.dtype == np.float32
    assert maps.f3d.dtype == np.float32
    assert maps.foreground.dtype == bool
    assert np.isfinite(maps.f2d).all()


def test_extract_foreground_is_box_cells(extractor: EmbeddedExtractor) -> None:
    rgb, xyz, _ = make_scene()

    maps = extractor.extract(rgb, xyz)

    expected = np.zeros((GRID_SIZE, GRID_SIZE), dtype=bool)
    expected[10:12, 4:6] = True
    np.testing.assert_array_equal(maps.foreground, expected)
    assert (maps.f3d[~maps.foreground] == 0).all()
    assert (maps.f3d[maps.foreground].sum(axis=-1) > 0).all()


def test_extract_missing_points_stay_finite(extractor: EmbeddedExtractor) -> None:
    rgb, xyz, _ = make_scene()
    xyz[40:44, 16:20] = np.nan  # the whole of cell (10, 4)
    xyz[44, 20] = 0.0
    xyz[45, 21, 2] = np.inf
    xyz[46, 22, 0] = -np.inf
    xyz[5, 5] = np.nan  # on the border used for the plane

    maps = extractor.extract(rgb, xyz)

    assert np.isfinite(maps.f2d).all()
    assert np.isfinite(maps.f3d).all()
    assert not maps.foreground[10, 4]
    assert maps.foreground[11, 5]
    assert (maps.f3d[10, 4] == 0).all()


def test_extract_all_points_missing(extractor: EmbeddedExtractor, caplog) -> None:
    rgb, _, _ = make_scene()
    xyz = np.zeros((SCENE_SIZE, SCENE_SIZE, 3), dtype=np.float32)

    with caplog.at_level(logging.WARNING, logger="modiad.features.geometry"):
        maps = extractor.extract(rgb, xyz)

    assert not maps.foreground.any()
    assert (maps.f3d == 0).all()
    assert np.isfinite(maps.f2d).all()


def test_extract_is_deterministic(extractor: EmbeddedExtractor, small_settings: EmbeddedFeatureSettings) -> None:
    rgb, xyz, _ = make_scene(seed=11)

    first = extractor.extract(rgb, xyz)
    second = extractor.extract(rgb.copy(), xyz.copy())
    other_instance = EmbeddedExtractor(small_settings).extract(rgb, xyz)

    for maps in (second, other_instance):
        np.testing.assert_array_equal(maps.f2d, first.f2d)
        np.testing.assert_array_equal(maps.f3d, first.f3d)
        np.testing.assert_array_equal(maps.foreground, first.foreground)


def test_extract_batch_equals_single(extractor: EmbeddedExtractor) -> None:
    samples = [make_scene(seed=1)[:2], make_scene(box=(10, 30, 30, 50), seed=2)[:2]]
    larger_rgb, larger_xyz, _ = make_scene(size=80, box=(30, 60, 40, 70), seed=3)
    samples.append((larger_rgb, larger_xyz))

    batched = extractor.extract_batch(samples)

    assert len(batched) == len(samples)
    for (rgb, xyz), maps in zip(samples, batched):
        single = extractor.extract(rgb, xyz)
        np.testing.assert_allclose(maps.f2d, single.f2d, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(maps.f3d, single.f3d)
        np.testing.assert_array_equal(maps.foreground, single.foreground)
    assert extractor.extract_batch([]) == []


def test_extract_rejects_bad_arrays(extractor: EmbeddedExtractor) -> None:
    rgb, xyz, _ = make_scene()

    with pytest.raises(DatasetError, match="rgb must be a uint8"):
        extractor.extract(rgb.astype(np.float32), xyz)
    with pytest.raises(DatasetError, match="xyz must be a float"):
        extractor.extract(rgb, xyz.astype(np.int32))
    with pytest.raises(DatasetError, match="organized like the image"):
        extractor.extract(rgb, xyz[:32])


def stage_slices(settings: EmbeddedFeatureSettings) -> dict[int, slice]:
    """Return the channel range of each stage in f2d, in stage order."""
    channels = {8: 40, 16: 112, 32: 320}
    slices, start = {}, 0
    for stride in settings.stages:
        slices[stride] = slice(start, start + channels[stride])
        start += channels[stride]
    return slices


@pytest.mark.parametrize("box", [BOX, (12, 20, 44, 52)])
def test_marker_lands_in_same_cell(extractor: EmbeddedExtractor, box: tuple[int, int, int, int]) -> None:
    background_rgb, background_xyz, _ = make_scene(box=None, seed=4)
    marked_rgb, marked_xyz, box_mask = make_scene(box=box, seed=4)

    background = extractor.extract(background_rgb, background_xyz)
    marked = extractor.extract(marked_rgb, marked_xyz)

    # 3D: exactly the cells under the box, computed from pixel coordinates.
    cell = SCENE_SIZE // GRID_SIZE
    row0, row1, col0, col1 = box
    expected_cells = np.zeros((GRID_SIZE, GRID_SIZE), dtype=bool)
    expected_cells[row0 // cell : row1 // cell, col0 // cell : col1 // cell] = True
    np.testing.assert_array_equal(marked.foreground, expected_cells)
    np.testing.assert_array_equal(pool_foreground(box_mask, GRID_SIZE), expected_cells)

    # 2D: the stride-8 and stride-16 stages change most inside the box cells. One
    # stride-32 cell covers 32 CNN-input pixels (about 2.3 grid cells here), so that
    # stage may peak one cell outside them.
    box_centre = ((row0 + row1) / 2 / cell - 0.5, (col0 + col1) / 2 / cell - 0.5)
    for stride, channels in stage_slices(extractor.settings).items():
        change = np.linalg.norm(marked.f2d[..., channels] - background.f2d[..., channels], axis=-1)
        peak = np.unravel_index(np.argmax(change), change.shape)
        tolerance = 1.0 if stride < 32 else 2.0
        assert abs(peak[0] - box_centre[0]) <= tolerance, f"stride {stride}: peak row {peak[0]}"
        assert abs(peak[1] - box_centre[1]) <= tolerance, f"stride {stride}: peak col {peak[1]}"
