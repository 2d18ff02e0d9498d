"""Tests of the feature cache: one extraction per sample, restarts, eviction, corrupt entries."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from modiad.errors import ConfigError
from modiad.features.cache import FeatureCache, feature_cache_key
from modiad.features.dino import build_dino
from modiad.features.paper import PaperExtractor, PaperFeatureSettings
from modiad.features.pointmae import PointMAEArchitecture, PointMAEEncoder

SCENE_SIZE = 32
GRID_SIZE = 8


def make_extractor(seed: int = 0) -> PaperExtractor:
    """A real paper-preset extractor on small random models (8×8 grid, 32-d 2D, 32-d 3D)."""
    torch.manual_seed(seed)
    dino = build_dino(embed_dim=32, depth=1, num_heads=2)
    point_mae = PointMAEEncoder(PointMAEArchitecture(num_groups=16, group_size=8, width=16, depth=2, num_heads=2, feature_blocks=(0, 1)))
    settings = PaperFeatureSettings(grid_size=GRID_SIZE, border_px=3)
    return PaperExtractor.from_modules(settings, dino, point_mae)


def make_sample(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (uint8 RGB, float32 cloud) of a plate 0.4 m away with a raised square in the middle."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices((SCENE_SIZE, SCENE_SIZE), dtype=np.float64)
    depth = np.full((SCENE_SIZE, SCENE_SIZE), 0.4)
    depth[8:24, 8:24] -= 0.01 + rng.uniform(0, 0.002, size=(16, 16))
    xyz = np.stack([depth * (cols - 16) / 300, depth * (rows - 16) / 300, depth], axis=-1).astype(np.float32)
    rgb = rng.integers(0, 256, size=(SCENE_SIZE, SCENE_SIZE, 3), dtype=np.uint8)
    return rgb, xyz


@pytest.fixture(scope="module")
def extractor() -> PaperExtractor:
    return make_extractor()


def entry_path(cache: FeatureCache, key: str) -> Path:
    return cache.directory / key[:2] / f"{key}.safetensors"


def test_cache_extracts_each_sample_once(tmp_path: Path, extractor: PaperExtractor) -> None:
    cache = FeatureCache(tmp_path, max_bytes=10_000_000)
    samples = [make_sample(seed) for seed in range(3)]
    for _ in range(3):
        for index, (rgb, xyz) in enumerate(samples):
            cache.get_or_extract(f"sample-{index}", extractor, rgb, xyz)
    assert cache.extractions == 3
    assert cache.hits == 6
    assert len(cache) == 3


def test_cache_returns_float16_rounded_features(tmp_path: Path, extractor: PaperExtractor) -> None:
    cache = FeatureCache(tmp_path, max_bytes=10_000_000)
    rgb, xyz = make_sample(0)
    direct = extractor.extract(rgb, xyz)
    first = cache.get_or_extract("s", extractor, rgb, xyz)
    second = cache.get_or_extract("s", extractor, rgb, xyz)

    expected_f2d = direct.f2d.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(first.f2d, expected_f2d)
    np.testing.assert_array_equal(second.f2d, expected_f2d)
    np.testing.assert_array_equal(second.f3d, direct.f3d.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(second.foreground, direct.foreground)
    assert second.f2d.dtype == np.float32


def test_cache_stores_float16_on_disk(tmp_path: Path, extractor: PaperExtractor) -> None:
    cache = FeatureCache(tmp_path, max_bytes=10_000_000)
    rgb, xyz = make_sample(0)
    cache.get_or_extract("s", extractor, rgb, xyz)
    path = entry_path(cache, feature_cache_key(extractor.identity, rgb, xyz))
    with safe_open(str(path), framework="numpy") as handle:
        assert handle.get_tensor("f2d").dtype == np.float16
        assert handle.get_tensor("f3d").dtype == np.float16
        assert handle.metadata()["identity"] == extractor.identity


def test_cache_survives_restart(tmp_path: Path, extractor: PaperExtractor) -> None:
    rgb, xyz = make_sample(1)
    first = FeatureCache(tmp_path, max_bytes=10_000_000).get_or_extract("s", extractor, rgb, xyz)

    restarted = FeatureCache(tmp_path, max_bytes=10_000_000)
    again = restarted.get_or_extract("s", extractor, rgb, xyz)
    assert restarted.extractions == 0
    assert restarted.hits == 1
    np.testing.assert_array_equal(again.f3d, first.f3d)


def test_key_depends_on_content_and_identity() -> None:
    rgb, xyz = make_sample(0)
    key = feature_cache_key("preset-a", rgb, xyz)
    changed_rgb = rgb.copy()
    changed_rgb[0, 0, 0] ^= 1
    changed_xyz = xyz.copy()
    changed_xyz[5, 5, 2] += 1e-6

    assert feature_cache_key("preset-a", rgb.copy(), xyz.copy()) == key
    assert feature_cache_key("preset-b", rgb, xyz) != key
    assert feature_cache_key("preset-a", changed_rgb, xyz) != key
    assert feature_cache_key("preset-a", rgb, changed_xyz) != key
    assert feature_cache_key("preset-a", rgb, xyz.astype(np.float64)) != key


def test_other_extractor_misses(tmp_path: Path, extractor: PaperExtractor) -> None:
    other = make_extractor(seed=1)
    cache = FeatureCache(tmp_path, max_bytes=10_000_000)
    rgb, xyz = make_sample(0)
    cache.get_or_extract("s", extractor, rgb, xyz)
    cache.get_or_extract("s", other, rgb, xyz)
    assert other.identity != extractor.identity
    assert cache.extractions == 2


def test_eviction_drops_least_recently_used(tmp_path: Path, extractor: PaperExtractor) -> None:
    probe = FeatureCache(tmp_path / "probe", max_bytes=10_000_000)
    probe.get_or_extract("probe", extractor, *make_sample(0))
    entry_bytes = probe.total_bytes

    cache = FeatureCache(tmp_path / "cache", max_bytes=2 * entry_bytes + entry_bytes // 2)
    samples = [make_sample(seed) for seed in range(3)]
    keys = [feature_cache_key(extractor.identity, *sample) for sample in samples]
    cache.get_or_extract("0", extractor, *samples[0])
    cache.get_or_extract("1", extractor, *samples[1])
    cache.get_or_extract("0", extractor, *samples[0])  # sample 1 is now the least recently used
    cache.get_or_extract("2", extractor, *samples[2])

    assert cache.evictions == 1
    assert keys[1] not in cache
    assert not entry_path(cache, keys[1]).exists()
    assert keys[0] in cache
    assert keys[2] in cache
    assert cache.total_bytes <= cache.max_bytes


def test_restart_with_smaller_limit_evicts(tmp_path: Path, extractor: PaperExtractor) -> None:
    cache = FeatureCache(tmp_path, max_bytes=10_000_000)
    for seed in range(3):
        cache.get_or_extract(str(seed), extractor, *make_sample(seed))
    entry_bytes = cache.total_bytes // 3

    smaller = FeatureCache(tmp_path, max_bytes=entry_bytes)
    assert len(smaller) == 1
    assert smaller.total_bytes <= entry_bytes
    assert len(list(tmp_path.glob("*/*.safetensors"))) == 1


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped_byte"])
def test_corrupt_entry_extracted_again(tmp_path: Path, extractor: PaperExtractor, caplog: pytest.LogCaptureFixture, damage: str) -> None:
    rgb, xyz = make_sample(2)
    original = FeatureCache(tmp_path, max_bytes=10_000_000).get_or_extract("s", extractor, rgb, xyz)
    path = entry_path(FeatureCache(tmp_path, max_bytes=10_000_000), feature_cache_key(extractor.identity, rgb, xyz))
    content = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    elif damage == "truncated":
        path.write_bytes(content[: len(content) // 2])
    else:
        damaged = bytearray(content)
        damaged[-10] ^= 0xFF
        path.write_bytes(bytes(damaged))

    cache = FeatureCache(tmp_path, max_bytes=10_000_000)
    with caplog.at_level(logging.WARNING, logger="modiad.features.cache"):
        repaired = cache.get_or_extract("s", extractor, rgb, xyz)
    assert cache.extractions == 1
    assert cache.corrupt_entries == 1
    assert "is corrupt" in caplog.text
    np.testing.assert_array_equal(repaired.f3d, original.f3d)

    # The entry was rewritten, so the next read is a hit.
    cache.get_or_extract("s", extractor, rgb, xyz)
    assert cache.hits == 1
    assert cache.extractions == 1


def test_interrupted_write_is_cleaned(tmp_path: Path) -> None:
    leftover = tmp_path / "ab" / "abcdef.safetensors.tmp"
    leftover.parent.mkdir()
    leftover.write_bytes(b"partial")
    cache = FeatureCache(tmp_path, max_bytes=1000)
    assert not leftover.exists()
    assert len(cache) == 0


def test_float16_overflow_is_clipped() -> None:
    from modiad.features.cache import _to_float16

    stored = _to_float16(np.array([1e6, -1e6, 1.5], dtype=np.float32))
    assert stored[0] == np.finfo(np.float16).max
    assert stored[1] == -np.finfo(np.float16).max
    assert stored[2] == 1.5


def test_nonpositive_limit_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_bytes must be positive"):
        FeatureCache(tmp_path, max_bytes=0)


def test_entry_mtime_updated_on_hit(tmp_path: Path, extractor: PaperExtractor) -> None:
    cache = FeatureCache(tmp_path, max_bytes=10_000_000)
    rgb, xyz = make_sample(0)
    cache.get_or_extract("s", extractor, rgb, xyz)
    path = entry_path(cache, feature_cache_key(extractor.identity, rgb, xyz))
    os.utime(path, ns=(0, 0))
    cache.get_or_extract("s", extractor, rgb, xyz)
    assert path.stat().st_mtime_ns > 0
