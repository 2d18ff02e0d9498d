"""The per-class cross-modal mapper pair and its weight (de)serialisation.

Each class owns two MLPs: one predicts 3D features from 2D features, the other
predicts 2D features from 3D features. The modules are plain `nn.Module`s; training
and scoring live in `modiad.training` and `modiad.scoring`.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

__all__ = [
    "Mapper",
    "MapperPair",
    "expected_shapes",
    "init_mapper_pair",
    "load_pair_state",
    "pair_state",
]


class Mapper(nn.Module):
    """Linear(in, h) – GELU – Linear(h, h) – GELU – Linear(h, out), h = (in + out) // 2.

    Input: float32 N×in feature vectors (one per pixel). Output: float32 N×out.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        hidden = (in_dim + out_dim) // 2
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class MapperPair(nn.Module):
    """The class model: `to_3d` maps D2 → D3 and `to_2d` maps D3 → D2."""

    def __init__(self, dim_2d: int, dim_3d: int) -> None:
        super().__init__()
        self.dim_2d = dim_2d
        self.dim_3d = dim_3d
        self.to_3d = Mapper(dim_2d, dim_3d)
        self.to_2d = Mapper(dim_3d, dim_2d)

    def forward(
        self, f2d: torch.Tensor, f3d: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (predicted 3D features from f2d, predicted 2D features from f3d)."""
        return self.to_3d(f2d), self.to_2d(f3d)


def _class_seed(seed: int, class_name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{class_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def init_mapper_pair(dim_2d: int, dim_3d: int, *, seed: int, class_name: str) -> MapperPair:
    """Create a class's initial mapper pair.

    The initial weights depend only on (seed, class_name, dims), so every process
    and transport builds the same round-0 bank.
    """
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(_class_seed(seed, class_name))
    try:
        pair = MapperPair(dim_2d, dim_3d)
    finally:
        torch.random.set_rng_state(generator_state)
    return pair


def pair_state(pair: MapperPair) -> dict[str, np.ndarray]:
    """Return the pair's weights as float32 numpy arrays keyed by parameter name."""
    return {
        name: tensor.detach().cpu().numpy().astype(np.float32, copy=True)
        for name, tensor in pair.state_dict().items()
    }


def expected_shapes(dim_2d: int, dim_3d: int) -> dict[str, tuple[int, ...]]:
    """Return the parameter names and shapes of a pair with these feature sizes."""
    with torch.device("meta"):
        reference = MapperPair(dim_2d, dim_3d)
    return {name: tuple(tensor.shape) for name, tensor in reference.state_dict().items()}


def load_pair_state(pair: MapperPair, state: dict[str, np.ndarray]) -> MapperPair:
    """Copy numpy weights into `pair`; the names and shapes must match exactly."""
    tensors = {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in state.items()}
    pair.load_state_dict(tensors, strict=True)
    return pair
