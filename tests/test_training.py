"""Local training and anomaly scoring of the mapper pair."""

import numpy as np
import torch

from modiad.features.base import FeatureMaps
from modiad.mapper import MapperPair, init_mapper_pair, pair_state
from modiad.scoring import anomaly_map, grid_anomaly_map, image_score
from modiad.training import cosine_distance_loss, train_local, update_seed


def _paired_features(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """2D and 3D features that are a fixed nonlinear function of a shared latent."""
    latent = np.random.default_rng(seed).normal(size=(rows, 4))
    projections = np.random.default_rng(99)
    f2d = np.tanh(latent @ projections.normal(size=(4, 12)))
    f3d = np.tanh(latent @ projections.normal(size=(4, 6)))
    return f2d.astype(np.float32), f3d.astype(np.float32)


def test_training_lowers_the_cosine_loss():
    f2d, f3d = _paired_features(2000)
    pair = init_mapper_pair(12, 6, seed=0, class_name="disc")
    before = float(cosine_distance_loss(pair, torch.from_numpy(f2d), torch.from_numpy(f3d)))

    result = train_local(pair, f2d, f3d, iterations=150, learning_rate=3e-3, batch_pixels=256, seed=1)

    after = float(cosine_distance_loss(result.pair, torch.from_numpy(f2d), torch.from_numpy(f3d)))
    assert after < 0.5 * before
    assert result.num_pixels == 2000


def test_training_is_deterministic_for_a_seed():
    f2d, f3d = _paired_features(500)
    states = []
    for _ in range(2):
        pair = init_mapper_pair(12, 6, seed=0, class_name="disc")
        train_local(pair, f2d, f3d, iterations=20, learning_rate=1e-3, batch_pixels=64, seed=5)
        states.append(pair_state(pair))
    for name in states[0]:
        assert np.array_equal(states[0][name], states[1][name])


def test_update_seed_differs_per_round_edge_and_class():
    seeds = {update_seed(0, 1, "edge-1", "disc"), update_seed(0, 2, "edge-1", "disc"),
             update_seed(0, 1, "edge-2", "disc"), update_seed(0, 1, "edge-1", "ring")}
    assert len(seeds) == 4


def _maps(f2d: np.ndarray, f3d: np.ndarray, grid: int) -> FeatureMaps:
    foreground = np.zeros((grid, grid), bool)
    foreground[2:-2, 2:-2] = True
    full_2d = np.zeros((grid * grid, f2d.shape[1]), np.float32)
    full_3d = np.zeros((grid * grid, f3d.shape[1]), np.float32)
    rows = np.flatnonzero(foreground.reshape(-1))
    full_2d[rows] = f2d[: rows.size]
    full_3d[rows] = f3d[: rows.size]
    return FeatureMaps(full_2d.reshape(grid, grid, -1), full_3d.reshape(grid, grid, -1), foreground)


def test_background_cells_score_zero_and_anomaly_scores_higher():
    grid = 12
    f2d, f3d = _paired_features(4000)
    pair = init_mapper_pair(12, 6, seed=0, class_name="disc")
    train_local(pair, f2d, f3d, iterations=200, learning_rate=3e-3, batch_pixels=256, seed=1)

    normal_2d, normal_3d = _paired_features(grid * grid, seed=3)
    normal = _maps(normal_2d, normal_3d, grid)
    broken_3d = normal_3d.copy()
    broken_3d[:10] = -broken_3d[:10]  # cells whose geometry contradicts their appearance
    broken = _maps(normal_2d, broken_3d, grid)

    normal_grid = grid_anomaly_map(pair, normal)
    assert np.all(normal_grid[~normal.foreground] == 0)
    assert grid_anomaly_map(pair, broken).max() > normal_grid.max()

    full = anomaly_map(pair, broken, 48, 40)
    assert full.shape == (48, 40)
    assert image_score(full) == float(full.max())


def test_mapper_pair_output_shapes():
    pair = MapperPair(10, 3)
    predicted_3d, predicted_2d = pair(torch.zeros(5, 10), torch.zeros(5, 3))
    assert predicted_3d.shape == (5, 3)
    assert predicted_2d.shape == (5, 10)
    assert pair.to_3d.layers[0].out_features == (10 + 3) // 2
