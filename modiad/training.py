"""Local update of one class's mapper pair on an edge's buffered features."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

from modiad.mapper import MapperPair

__all__ = ["LocalUpdateResult", "cosine_distance_loss", "train_local", "update_seed"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalUpdateResult:
    """Outcome of one local update: the trained pair and the mean loss of the last iterations."""

    pair: MapperPair
    final_loss: float
    iterations: int
    num_pixels: int


def update_seed(seed: int, round_index: int, edge_id: str, class_name: str) -> int:
    """Derive the minibatch seed of one (round, edge, class) update.

    The same inputs give the same seed in every process, which keeps runs over MQTT
    and in-process identical.
    """
    digest = hashlib.sha256(f"{seed}:{round_index}:{edge_id}:{class_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def cosine_distance_loss(
    pair: MapperPair, f2d: torch.Tensor, f3d: torch.Tensor
) -> torch.Tensor:
    """Mean cosine distance in both directions: (1 − cos(2D, 2D̂)) + (1 − cos(3D, 3D̂)).

    `f2d` is N×D2 and `f3d` is N×D3, rows being foreground pixels of one class.
    """
    predicted_3d, predicted_2d = pair(f2d, f3d)
    distance_2d = 1.0 - functional.cosine_similarity(predicted_2d, f2d, dim=1)
    distance_3d = 1.0 - functional.cosine_similarity(predicted_3d, f3d, dim=1)
    return (distance_2d + distance_3d).mean()


def train_local(
    pair: MapperPair,
    f2d: np.ndarray,
    f3d: np.ndarray,
    *,
    iterations: int,
    learning_rate: float,
    batch_pixels: int,
    seed: int,
) -> LocalUpdateResult:
    """Run `iterations` Adam steps on random minibatches of foreground pixels.

    `f2d` (N×D2) and `f3d` (N×D3) hold every foreground pixel of the class's
    buffered samples, row-aligned. Training starts from the weights in `pair` (the
    received global model) and updates it in place. The minibatch order depends only
    on `seed`.
    """
    if f2d.shape[0] != f3d.shape[0]:
        raise ValueError(f"f2d has {f2d.shape[0]} rows but f3d has {f3d.shape[0]}; they must be row-aligned")
    num_pixels = int(f2d.shape[0])
    if num_pixels == 0:
        raise ValueError("no foreground pixels to train on; the class buffer contains no valid 3D points")

    inputs_2d = torch.from_numpy(np.ascontiguousarray(f2d, dtype=np.float32))
    inputs_3d = torch.from_numpy(np.ascontiguousarray(f3d, dtype=np.float32))
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(pair.parameters(), lr=learning_rate)
    pair.train()

    recent_losses: list[float] = []
    for _ in range(iterations):
        rows = torch.randint(0, num_pixels, (min(batch_pixels, num_pixels),), generator=generator)
        loss = cosine_distance_loss(pair, inputs_2d[rows], inputs_3d[rows])

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        recent_losses.append(float(loss.detach()))
        recent_losses = recent_losses[-10:]

    pair.eval()
    final_loss = float(np.mean(recent_losses)) if recent_losses else float("nan")
    return LocalUpdateResult(pair=pair, final_loss=final_loss, iterations=iterations, num_pixels=num_pixels)
