"""Tests of the paper feature preset: Point-MAE grouping and encoder, DINO, weight files, extractor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from modiad.errors import DatasetError, WeightsError
from modiad.features.dino import (
    DINO_HF_REPO,
    DINO_WEIGHTS_FILENAME,
    build_dino,
    cached_dino_weights,
    dino_patch_features,
    load_dino_checkpoint,
)
from modiad.features.geometry import (
    pool_foreground,
    remove_background_plane,
    valid_point_mask,
)
from modiad.features.paper import (
    POINT_MAE_WEIGHTS_FILENAME,
    PaperExtractor,
    PaperFeatureSettings,
    check_paper_weights,
    save_random_paper_weights,
)
from modiad.features.pointmae import (
    PointMAEArchitecture,
    PointMAEEncoder,
    farthest_point_sample,
    interpolate_to_points,
    knn_indices,
    load_point_mae_checkpoint,
)

TINY_POINT_MAE = PointMAEArchitecture(num_groups=24, group_size=12, width=24, depth=4, num_heads=2, feature_blocks=(1, 3))
TINY_DINO = {"embed_dim": 32, "depth": 2, "num_heads": 2}

SCENE_SIZE = 48
GRID_SIZE = 12
FOCAL_PX = 400.0
PLANE_DEPTH_M = 0.4
BOX_HEIGHT_M = 0.01


def make_scene(box: tuple[int, int, int, int] | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (uint8 RGB, float32 organized cloud) of a flat plate, with a box on it when `box` is given."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices((SCENE_SIZE, SCENE_SIZE), dtype=np.float64)
    centre = (SCENE_SIZE - 1) / 2
    depth = np.full((SCENE_SIZE, SCENE_SIZE), PLANE_DEPTH_M)
    if box is not None:
        row0, row1, col0, col1 = box
        depth[row0:row1, col0:col1] -= BOX_HEIGHT_M + rng.uniform(0, 0.003, size=(row1 - row0, col1 - col0))
    xyz = np.stack([depth * (cols - centre) / FOCAL_PX, depth * (rows - centre) / FOCAL_PX, depth], axis=-1)
    rgb = rng.integers(0, 256, size=(SCENE_SIZE, SCENE_SIZE, 3), dtype=np.uint8)
    return rgb, xyz.astype(np.float32)


def random_cloud(count: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(count, 3)).astype(np.float32))


def padded_batch(clouds: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad N_i×3 clouds to one B×N×3 tensor with far-away garbage and a validity mask."""
    longest = max(len(cloud) for cloud in clouds)
    points = torch.full((len(clouds), longest, 3), 1e3)
    valid = torch.zeros((len(clouds), longest), dtype=torch.bool)
    for row, cloud in enumerate(clouds):
        points[row, : len(cloud)] = cloud
        valid[row, : len(cloud)] = True
    return points, valid


def tiny_point_mae(seed: int = 0) -> PointMAEEncoder:
    torch.manual_seed(seed)
    model = PointMAEEncoder(TINY_POINT_MAE)
    # Non-trivial BatchNorm statistics, so loading and eval mode are both exercised.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def tiny_dino(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_dino(**TINY_DINO)


# ---------------------------------------------------------------------------
# Grouping and interpolation against independent references
# ---------------------------------------------------------------------------


def reference_fps(points: np.ndarray, count: int) -> list[int]:
    """Farthest-point sampling written as a plain numpy loop in float64."""
    chosen = [0]
    distance = np.full(len(points), np.inf)
    for _ in range(count - 1):
        distance = np.minimum(distance, ((points - points[chosen[-1]]) ** 2).sum(axis=1))
        chosen.append(int(np.argmax(distance)))
    return chosen


def test_fps_matches_reference_loop() -> None:
    cloud = random_cloud(200, seed=1)
    points, valid = padded_batch([cloud])
    chosen = farthest_point_sample(points, valid, 30)[0].tolist()
    assert chosen == reference_fps(cloud.double().numpy(), 30)


def test_fps_skips_invalid_points() -> None:
    cloud = random_cloud(100, seed=2)
    points = torch.cat([torch.full((1, 3), 50.0), cloud, torch.full((5, 3), -50.0)])[None]
    valid = torch.ones(points.shape[:2], dtype=torch.bool)
    valid[0, 0] = False
    valid[0, -5:] = False
    chosen = farthest_point_sample(points, valid, 40)[0]
    assert bool(valid[0, chosen].all())
    assert len(set(chosen.tolist())) == 40


def test_fps_too_few_points_raises() -> None:
    points, valid = padded_batch([random_cloud(10, seed=3)])
    with pytest.raises(ValueError, match="needs as many valid points"):
        farthest_point_sample(points, valid, 11)


def test_knn_matches_kdtree() -> None:
    clouds = [random_cloud(150, seed=4), random_cloud(90, seed=5)]
    points, valid = padded_batch(clouds)
    queries = torch.stack([clouds[0][:7], clouds[1][:7]]) + 0.01
    found = knn_indices(points, valid, queries, 9)
    for row, cloud in enumerate(clouds):
        _, expected = cKDTree(cloud.numpy()).query(queries[row].numpy(), k=9)
        assert found[row].tolist() == expected.tolist()


def test_interpolation_matches_reference() -> None:
    rng = np.random.default_rng(6)
    centres = rng.normal(size=(10, 3))
    features = rng.normal(size=(10, 5))
    points = rng.normal(size=(40, 3))

    expected = np.zeros((40, 5))
    for index, point in enumerate(points):
        distance = np.linalg.norm(centres - point, axis=1)
        nearest = np.argsort(distance)[:3]
        weights = 1.0 / (distance[nearest] + 1e-8)
        expected[index] = (weights[:, None] * features[nearest]).sum(axis=0) / weights.sum()

    valid = torch.ones((1, 40), dtype=torch.bool)
    valid[0, -4:] = False
    result = interpolate_to_points(
        torch.tensor(centres[None], dtype=torch.float32),
        torch.tensor(features[None], dtype=torch.float32),
        torch.tensor(points[None], dtype=torch.float32),
        valid,
    )[0].numpy()
    np.testing.assert_allclose(result[:-4], expected[:-4], atol=1e-5)
    assert not result[-4:].any()


# ---------------------------------------------------------------------------
# Point-MAE encoder
# ---------------------------------------------------------------------------


def test_attention_matches_torch_multihead() -> None:
    model = tiny_point_mae()
    attention = model.blocks.blocks[0].attn
    reference = torch.nn.MultiheadAttention(TINY_POINT_MAE.width, TINY_POINT_MAE.num_heads, bias=True, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(attention.qkv.weight)
        reference.in_proj_bias.zero_()
        reference.out_proj.weight.copy_(attention.proj.weight)
        reference.out_proj.bias.copy_(attention.proj.bias)
        tokens = torch.randn(2, 17, TINY_POINT_MAE.width)
        expected, _ = reference(tokens, tokens, tokens, need_weights=False)
        torch.testing.assert_close(attention(tokens), expected, atol=1e-5, rtol=1e-4)


def test_encoder_features_are_normed_block_outputs() -> None:
    model = tiny_point_mae()
    points, valid = padded_batch([random_cloud(120, seed=7)])
    with torch.no_grad():
        features, centres = model(points, valid)
        # Recompute the block outputs one block at a time.
        from modiad.features.pointmae import group_points

        neighbourhoods, same_centres = group_points(points, valid, TINY_POINT_MAE.num_groups, TINY_POINT_MAE.group_size)
        x = model.encoder(neighbourhoods)
        position = model.pos_embed(same_centres)
        outputs = []
        for block in model.blocks.blocks:
            x = block(x + position)
            outputs.append(x)
        expected = torch.cat([model.norm(outputs[index]) for index in TINY_POINT_MAE.feature_blocks], dim=-1)

    assert features.shape == (1, TINY_POINT_MAE.num_groups, TINY_POINT_MAE.feature_dim)
    torch.testing.assert_close(centres, same_centres)
    torch.testing.assert_close(features, expected)


def test_paper_architecture_is_1152_d() -> None:
    architecture = PointMAEArchitecture()
    assert architecture.feature_dim == 1152
    assert architecture.min_points == 1024


def test_point_features_batch_equals_alone() -> None:
    model = tiny_point_mae()
    clouds = [random_cloud(300, seed=8), random_cloud(80, seed=9), random_cloud(170, seed=10)]
    points, valid = padded_batch(clouds)
    with torch.no_grad():
        batched = model.point_features(points, valid)
        for row, cloud in enumerate(clouds):
            alone = model.point_features(cloud[None], torch.ones((1, len(cloud)), dtype=torch.bool))[0]
            torch.testing.assert_close(batched[row, : len(cloud)], alone, atol=1e-5, rtol=1e-4)
            assert not batched[row, len(cloud) :].any()


# ---------------------------------------------------------------------------
# Checkpoints with the official key names
# ---------------------------------------------------------------------------


def official_point_mae_checkpoint(model: PointMAEEncoder) -> dict:
    """Wrap encoder weights the way Point-MAE's pretraining run saves them, decoder included."""
    base_model = {f"module.MAE_encoder.{key}": value.clone() for key, value in model.state_dict().items()}
    base_model["module.mask_token"] = torch.zeros(1, 1, TINY_POINT_MAE.width)
    base_model["module.decoder_pos_embed.0.weight"] = torch.zeros(128, 3)
    base_model["module.MAE_decoder.blocks.0.norm1.weight"] = torch.ones(TINY_POINT_MAE.width)
    base_model["module.increase_dim.0.weight"] = torch.zeros(3 * TINY_POINT_MAE.group_size, TINY_POINT_MAE.width, 1)
    return {"base_model": base_model, "optimizer": {"state": {}, "param_groups": []}, "epoch": 300}


def test_point_mae_checkpoint_loads_every_tensor(tmp_path: Path) -> None:
    source = tiny_point_mae(seed=1)
    path = tmp_path / "pretrain.pth"
    torch.save(official_point_mae_checkpoint(source), path)

    target = PointMAEEncoder(TINY_POINT_MAE)
    load_point_mae_checkpoint(target, path)
    source_state = source.state_dict()
    for key, tensor in target.state_dict().items():
        assert torch.equal(tensor, source_state[key]), key


def test_point_mae_safetensors_without_prefix_loads(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = tiny_point_mae(seed=2)
    path = tmp_path / "encoder.safetensors"
    save_file({key: value.contiguous() for key, value in source.state_dict().items()}, str(path))
    target = PointMAEEncoder(TINY_POINT_MAE)
    load_point_mae_checkpoint(target, path)
    torch.testing.assert_close(target.norm.weight, source.norm.weight, atol=0, rtol=0)


def test_point_mae_wrong_keys_fail_loudly(tmp_path: Path) -> None:
    checkpoint = official_point_mae_checkpoint(tiny_point_mae())
    base_model = checkpoint["base_model"]
    base_model["module.MAE_encoder.norm.gamma"] = base_model.pop("module.MAE_encoder.norm.weight")
    path = tmp_path / "pretrain.pth"
    torch.save(checkpoint, path)

    target = PointMAEEncoder(TINY_POINT_MAE)
    before = target.norm.bias.clone()
    with pytest.raises(WeightsError) as raised:
        load_point_mae_checkpoint(target, path)
    assert "missing keys ['norm.weight']" in str(raised.value)
    assert "unexpected keys ['norm.gamma']" in str(raised.value)
    assert torch.equal(target.norm.bias, before)


def test_point_mae_wrong_width_fails(tmp_path: Path) -> None:
    path = tmp_path / "pretrain.pth"
    torch.save(official_point_mae_checkpoint(tiny_point_mae()), path)
    wider = PointMAEEncoder(PointMAEArchitecture(num_groups=24, group_size=12, width=32, depth=4, num_heads=2, feature_blocks=(1, 3)))
    with pytest.raises(WeightsError, match=r"wrong shapes \['blocks\.blocks\.0"):
        load_point_mae_checkpoint(wider, path)


def test_point_mae_unreadable_file_fails(tmp_path: Path) -> None:
    path = tmp_path / "pretrain.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="could not be read"):
        load_point_mae_checkpoint(PointMAEEncoder(TINY_POINT_MAE), path)


def test_dino_checkpoint_loads_every_tensor(tmp_path: Path) -> None:
    source = tiny_dino(seed=1)
    path = tmp_path / DINO_WEIGHTS_FILENAME
    # The official DINO release is a plain backbone state dict with timm's ViT key names.
    torch.save(source.state_dict(), path)

    target = tiny_dino(seed=2)
    load_dino_checkpoint(target, path)
    source_state = source.state_dict()
    for key, tensor in target.state_dict().items():
        assert torch.equal(tensor, source_state[key]), key


def test_dino_wrong_keys_fail_loudly(tmp_path: Path) -> None:
    state = tiny_dino().state_dict()
    state["head.weight"] = torch.zeros(10, TINY_DINO["embed_dim"])
    del state["cls_token"]
    path = tmp_path / DINO_WEIGHTS_FILENAME
    torch.save(state, path)
    with pytest.raises(WeightsError) as raised:
        load_dino_checkpoint(tiny_dino(), path)
    assert "missing keys ['cls_token']" in str(raised.value)
    assert "unexpected keys ['head.weight']" in str(raised.value)


def test_dino_patch_features_drop_class_token() -> None:
    model = tiny_dino()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        patches = dino_patch_features(model, images)
        tokens = model.forward_features(images)
    assert patches.shape == (2, TINY_DINO["embed_dim"], 28, 28)
    # Patch (row 3, col 5) is token 1 + 3·28 + 5, after the class token.
    torch.testing.assert_close(patches[:, :, 3, 5], tokens[:, 1 + 3 * 28 + 5])


# ---------------------------------------------------------------------------
# Weight files lookup
# ---------------------------------------------------------------------------


@pytest.fixture
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the Hugging Face cache at an empty folder, so a real cache on this machine is not found."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_missing_weights_one_message_names_both(tmp_path: Path, empty_hf_cache: Path) -> None:
    settings = PaperFeatureSettings(weights_dir=tmp_path / "weights")
    with pytest.raises(WeightsError) as raised:
        check_paper_weights(settings)
    message = str(raised.value)
    assert str(tmp_path / "weights" / DINO_WEIGHTS_FILENAME) in message
    assert str(tmp_path / "weights" / POINT_MAE_WEIGHTS_FILENAME) in message


def test_missing_point_mae_only_named(tmp_path: Path, empty_hf_cache: Path) -> None:
    (tmp_path / DINO_WEIGHTS_FILENAME).write_bytes(b"x")
    with pytest.raises(WeightsError) as raised:
        check_paper_weights(PaperFeatureSettings(weights_dir=tmp_path))
    assert POINT_MAE_WEIGHTS_FILENAME in str(raised.value)
    assert DINO_WEIGHTS_FILENAME not in str(raised.value)


def test_explicit_weight_paths_win(tmp_path: Path, empty_hf_cache: Path) -> None:
    dino = tmp_path / "elsewhere" / "dino.safetensors"
    dino.parent.mkdir()
    dino.write_bytes(b"x")
    (tmp_path / DINO_WEIGHTS_FILENAME).write_bytes(b"x")
    (tmp_path / POINT_MAE_WEIGHTS_FILENAME).write_bytes(b"x")
    paths = check_paper_weights(PaperFeatureSettings(weights_dir=tmp_path, dino_weights=dino))
    assert paths.dino == dino
    assert paths.point_mae == tmp_path / POINT_MAE_WEIGHTS_FILENAME


def test_dino_found_in_hf_cache(tmp_path: Path, empty_hf_cache: Path) -> None:
    # The layout huggingface_hub writes: refs/main names the snapshot folder.
    repo_folder = empty_hf_cache / ("models--" + DINO_HF_REPO.replace("/", "--"))
    snapshot = repo_folder / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo_folder / "refs").mkdir()
    (repo_folder / "refs" / "main").write_text("0123abcd")
    (snapshot / "model.safetensors").write_bytes(b"x")
    (tmp_path / POINT_MAE_WEIGHTS_FILENAME).write_bytes(b"x")

    assert cached_dino_weights() == snapshot / "model.safetensors"
    paths = check_paper_weights(PaperFeatureSettings(weights_dir=tmp_path))
    assert paths.dino == snapshot / "model.safetensors"


def test_paper_extractor_fails_before_building(tmp_path: Path, empty_hf_cache: Path) -> None:
    with pytest.raises(WeightsError, match="DINO ViT-B/8 weights not found.*Point-MAE weights not found"):
        PaperExtractor(PaperFeatureSettings(weights_dir=tmp_path))


# ---------------------------------------------------------------------------
# The extractor on small models
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_extractor() -> PaperExtractor:
    settings = PaperFeatureSettings(grid_size=GRID_SIZE, border_px=4, batch_size=2)
    return PaperExtractor.from_modules(settings, tiny_dino(), tiny_point_mae())


def test_extract_shapes_and_foreground(tiny_extractor: PaperExtractor) -> None:
    rgb, xyz = make_scene((10, 30, 20, 40))
    maps = tiny_extractor.extract(rgb, xyz)

    assert maps.f2d.shape == (GRID_SIZE, GRID_SIZE, TINY_DINO["embed_dim"])
    assert maps.f3d.shape == (GRID_SIZE, GRID_SIZE, TINY_POINT_MAE.feature_dim)
    assert maps.f2d.dtype == np.float32
    assert maps.f3d.dtype == np.float32
    expected_foreground = pool_foreground(
        remove_background_plane(xyz, valid_point_mask(xyz), distance_m=0.005, border_px=4), GRID_SIZE
    )
    np.testing.assert_array_equal(maps.foreground, expected_foreground)
    assert np.abs(maps.f3d[maps.foreground]).sum(axis=-1).min() > 0
    assert not maps.f3d[~maps.foreground].any()


def test_extract_batch_equals_single(tiny_extractor: PaperExtractor) -> None:
    scenes = [make_scene((10, 30, 20, 40), seed=1), make_scene((5, 40, 5, 25), seed=2), make_scene((20, 44, 8, 40), seed=3)]
    batched = tiny_extractor.extract_batch(scenes)
    for scene, maps in zip(scenes, batched):
        alone = tiny_extractor.extract(*scene)
        np.testing.assert_allclose(maps.f2d, alone.f2d, atol=1e-5)
        np.testing.assert_allclose(maps.f3d, alone.f3d, atol=1e-5)
        np.testing.assert_array_equal(maps.foreground, alone.foreground)


def test_extract_without_foreground_gives_zeros(tiny_extractor: PaperExtractor) -> None:
    rgb, xyz = make_scene(None)
    maps = tiny_extractor.extract(rgb, xyz)
    assert not maps.foreground.any()
    assert not maps.f3d.any()
    assert np.isfinite(maps.f2d).all()


def test_extract_too_few_points_raises(tiny_extractor: PaperExtractor) -> None:
    # A 3×3 box has 9 foreground points, fewer than the 24 groups.
    rgb, xyz = make_scene((20, 23, 20, 23))
    with pytest.raises(DatasetError, match="9 foreground points, but Point-MAE needs at least 24"):
        tiny_extractor.extract(rgb, xyz)


def test_identity_follows_weights() -> None:
    settings = PaperFeatureSettings(grid_size=GRID_SIZE)
    first = PaperExtractor.from_modules(settings, tiny_dino(seed=0), tiny_point_mae(seed=0))
    same = PaperExtractor.from_modules(settings, tiny_dino(seed=0), tiny_point_mae(seed=0))
    other = PaperExtractor.from_modules(settings, tiny_dino(seed=0), tiny_point_mae(seed=1))
    assert first.identity == same.identity
    assert first.identity != other.identity


@pytest.mark.slow
def test_full_size_weights_run_end_to_end(tmp_path: Path) -> None:
    paths = save_random_paper_weights(tmp_path / "weights")
    extractor = PaperExtractor(PaperFeatureSettings(weights_dir=tmp_path / "weights", grid_size=GRID_SIZE, border_px=4))

    assert paths.dino.name == DINO_WEIGHTS_FILENAME
    assert (extractor.dim_2d, extractor.dim_3d) == (768, 1152)
    # A 34×34 box gives 1156 foreground points, enough for 1024 groups of 128.
    rgb, xyz = make_scene((7, 41, 7, 41))
    maps = extractor.extract(rgb, xyz)
    assert maps.f2d.shape == (GRID_SIZE, GRID_SIZE, 768)
    assert maps.f3d.shape == (GRID_SIZE, GRID_SIZE, 1152)
    assert maps.foreground.sum() > 0
    assert np.isfinite(maps.f3d).all()


# ---------------------------------------------------------------------------
# Preset selection
# ---------------------------------------------------------------------------


def test_settings_default_to_embedded_preset() -> None:
    from modiad.settings import EdgeSettings, load_settings

    settings = load_settings(EdgeSettings)
    assert settings.features_preset == "embedded"
    assert settings.paper_features == PaperFeatureSettings()


def test_settings_select_paper_preset(tmp_path: Path) -> None:
    from modiad.settings import CloudSettings, load_settings

    config = tmp_path / "cloud.yaml"
    config.write_text(f"features_preset: paper\npaper_features:\n  weights_dir: {tmp_path}\n  grid_size: 28\n")
    settings = load_settings(CloudSettings, config)
    assert settings.features_preset == "paper"
    assert settings.paper_features.weights_dir == tmp_path
    assert settings.paper_features.grid_size == 28


def test_build_paper_preset_without_weights_fails(tmp_path: Path, empty_hf_cache: Path) -> None:
    from modiad.features.presets import build_extractor
    from modiad.settings import EdgeSettings, load_settings

    settings = load_settings(EdgeSettings, features_preset="paper", paper_features={"weights_dir": str(tmp_path)})
    with pytest.raises(WeightsError) as raised:
        build_extractor(settings.features, preset=settings.features_preset, paper=settings.paper_features)
    assert str(tmp_path / DINO_WEIGHTS_FILENAME) in str(raised.value)
    assert str(tmp_path / POINT_MAE_WEIGHTS_FILENAME) in str(raised.value)
