"""The Point-MAE point-cloud encoder in plain PyTorch, with its grouping and interpolation.

The module and parameter names follow the official Point-MAE code
(github.com/Pang-Yatian/Point-MAE, `models/Point_MAE.py`), so the encoder part of
its pretraining checkpoint loads key for key. Farthest-point sampling, kNN and the
3-nearest-centre interpolation are written with torch tensor operations, so they
run on CPU and CUDA without pointnet2_ops, knn_cuda or any other compiled
extension.

Batches carry a validity mask: point clouds of different sizes are padded to one
length, and padded points are never sampled as centres, never join a
neighbourhood and get no features. Each sample's result therefore equals its
result alone, up to float rounding in the batched matrix products.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from modiad.errors import WeightsError

__all__ = [
    "PointMAEArchitecture",
    "PointMAEEncoder",
    "farthest_point_sample",
    "group_points",
    "interpolate_to_points",
    "knn_indices",
    "load_point_mae_checkpoint",
]

logger = logging.getLogger(__name__)

# Keys of the pretraining checkpoint that belong to the masked-autoencoder decoder.
# The encoder does not use them, so loading drops them on purpose.
_DECODER_KEY_PREFIXES = ("MAE_decoder.", "increase_dim.", "decoder_pos_embed.", "mask_token")

# Prefixes wrapped around the encoder's own keys: DataParallel adds "module.", the
# pretraining model nests the encoder in "MAE_encoder.", and some exports use "base_model.".
_WRAPPER_PREFIXES = ("module.", "base_model.", "MAE_encoder.")

# Centre and point rows per distance block, to bound the memory of N×G distance tables.
_DISTANCE_BLOCK_ROWS = 256

# Groups per mini-PointNet pass: the second convolution outputs 512 channels × group size
# floats per group, so 64 groups of 128 points need about 17 MB.
_TOKENIZER_BLOCK_GROUPS = 64

# Added to distances before inverting them, as in Point-MAE's downstream interpolation,
# so a point that coincides with a centre takes that centre's features without dividing by 0.
_INVERSE_DISTANCE_EPS = 1e-8


@dataclass(frozen=True)
class PointMAEArchitecture:
    """Shape of the encoder. The defaults are the published pretrained model.

    `num_groups` centres with `group_size` neighbours each become `width`-d tokens.
    The outputs of the blocks in `feature_blocks` (0-based) each pass the final norm
    and are concatenated, so a group's feature has `width`·len(`feature_blocks`)
    channels: 384·3 = 1152 by default.
    """

    num_groups: int = 1024
    group_size: int = 128
    width: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    feature_blocks: tuple[int, ...] = (3, 7, 11)

    def __post_init__(self) -> None:
        if self.num_groups < 1 or self.group_size < 1:
            raise ValueError(
                f"num_groups and group_size must be at least 1, got {self.num_groups} and {self.group_size}"
            )
        if self.width % self.num_heads != 0:
            raise ValueError(f"width {self.width} must be a multiple of num_heads {self.num_heads}")
        if not self.feature_blocks or any(block < 0 or block >= self.depth for block in self.feature_blocks):
            raise ValueError(f"feature_blocks must be block indices in [0, {self.depth}), got {list(self.feature_blocks)}")

    @property
    def feature_dim(self) -> int:
        """Channels of one group's feature."""
        return self.width * len(self.feature_blocks)

    @property
    def min_points(self) -> int:
        """Fewest valid points a cloud needs: one per centre and a full neighbourhood."""
        return max(self.num_groups, self.group_size)


# -- grouping ------------------------------------------------------------------------


def farthest_point_sample(points: torch.Tensor, valid: torch.Tensor, count: int) -> torch.Tensor:
    """Return B×count indices of centres chosen by farthest-point sampling.

    `points` is float B×N×3 and `valid` bool B×N. Each sample starts at its first
    valid point, then repeatedly adds the valid point farthest (squared Euclidean)
    from the centres so far, taking the lowest index on ties. Invalid points are
    never chosen. Every sample needs at least `count` valid points, otherwise
    ValueError is raised, because sampling more centres than points would repeat them.
    """
    batch_size, num_points, _ = points.shape
    valid_counts = valid.sum(dim=1)
    if bool((valid_counts < count).any()):
        raise ValueError(f"farthest-point sampling of {count} centres needs as many valid points, got {valid_counts.tolist()}")

    # -1 marks invalid points: squared distances are ≥ 0, so they never win the argmax.
    min_distance = torch.full((batch_size, num_points), float("inf"), dtype=points.dtype, device=points.device)
    min_distance = torch.where(valid, min_distance, torch.full_like(min_distance, -1.0))
    chosen = torch.empty((batch_size, count), dtype=torch.long, device=points.device)
    farthest = valid.to(torch.uint8).argmax(dim=1)
    rows = torch.arange(batch_size, device=points.device)

    for step in range(count):
        chosen[:, step] = farthest
        centre = points[rows, farthest].unsqueeze(1)
        distance = ((points - centre) ** 2).sum(dim=-1)
        min_distance = torch.minimum(min_distance, distance)
        farthest = min_distance.argmax(dim=1)
    return chosen


def _distances(queries: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Return B×Q×N Euclidean distances.

    They are computed pair by pair, not through a matrix product, so a sample's
    distances do not depend on the rest of the batch.
    """
    return torch.cdist(queries, points, compute_mode="donot_use_mm_for_euclid_dist")


def knn_indices(points: torch.Tensor, valid: torch.Tensor, queries: torch.Tensor, k: int) -> torch.Tensor:
    """Return B×Q×k indices of the `k` valid points nearest to each query, nearest first.

    `points` is B×N×3 with bool B×N `valid`, `queries` is B×Q×3. Each sample needs at
    least `k` valid points, otherwise ValueError is raised. Queries are processed in
    blocks to bound memory at B×block×N distances.
    """
    valid_counts = valid.sum(dim=1)
    if bool((valid_counts < k).any()):
        raise ValueError(f"{k} nearest neighbours need as many valid points, got {valid_counts.tolist()}")

    blocks = []
    invalid = ~valid.unsqueeze(1)
    for start in range(0, queries.shape[1], _DISTANCE_BLOCK_ROWS):
        distance = _distances(queries[:, start : start + _DISTANCE_BLOCK_ROWS], points)
        distance = distance.masked_fill(invalid, float("inf"))
        blocks.append(distance.topk(k, dim=-1, largest=False, sorted=True).indices)
    return torch.cat(blocks, dim=1)


def group_points(
    points: torch.Tensor, valid: torch.Tensor, num_groups: int, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split each cloud into neighbourhoods around farthest-point centres.

    Returns (float B×G×K×3 neighbourhoods, each centred on its centre; float B×G×3
    centres), with G = `num_groups` and K = `group_size`.
    """
    batch_rows = torch.arange(points.shape[0], device=points.device)
    centre_index = farthest_point_sample(points, valid, num_groups)
    centres = points[batch_rows[:, None], centre_index]
    neighbour_index = knn_indices(points, valid, centres, group_size)
    neighbourhoods = points[batch_rows[:, None, None], neighbour_index]
    return neighbourhoods - centres.unsqueeze(2), centres


def interpolate_to_points(
    centres: torch.Tensor, features: torch.Tensor, points: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Return B×N×C features at `points` by inverse-distance weighting of the 3 nearest centres.

    `centres` is B×G×3 with B×G×C `features`; `points` is B×N×3 with bool B×N `valid`.
    The weights are 1/(d + 1e-8), normalised to sum to 1, with d the Euclidean
    distance. With fewer than 3 centres all of them are used. Invalid points get zeros.
    """
    neighbours = min(3, centres.shape[1])
    batch_rows = torch.arange(points.shape[0], device=points.device)
    blocks = []
    for start in range(0, points.shape[1], _DISTANCE_BLOCK_ROWS * 16):
        block = points[:, start : start + _DISTANCE_BLOCK_ROWS * 16]
        distance, index = _distances(block, centres).topk(neighbours, dim=-1, largest=False, sorted=True)
        inverse = 1.0 / (distance + _INVERSE_DISTANCE_EPS)
        weights = inverse / inverse.sum(dim=-1, keepdim=True)
        gathered = features[batch_rows[:, None, None], index]
        blocks.append((gathered * weights.unsqueeze(-1)).sum(dim=2))
    interpolated = torch.cat(blocks, dim=1)
    return interpolated * valid.unsqueeze(-1).to(interpolated.dtype)


# -- modules (names as in the official code) --------------------------------------------


class Encoder(nn.Module):
    """The mini-PointNet tokenizer: B×G×K×3 neighbourhoods → B×G×`channels` tokens."""

    def __init__(self, encoder_channel: int) -> None:
        super().__init__()
        self.encoder_channel = encoder_channel
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True), nn.Conv1d(128, 256, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Conv1d(512, encoder_channel, 1)
        )

    def forward(self, point_groups: torch.Tensor) -> torch.Tensor:
        batch_size, groups, group_size, _ = point_groups.shape
        flat = point_groups.reshape(batch_size * groups, group_size, 3)
        tokens = [self._encode(flat[start : start + _TOKENIZER_BLOCK_GROUPS]) for start in range(0, len(flat), _TOKENIZER_BLOCK_GROUPS)]
        return torch.cat(tokens).reshape(batch_size, groups, self.encoder_channel)

    def _encode(self, flat_groups: torch.Tensor) -> torch.Tensor:
        """Return M×channels tokens of M×K×3 groups: per-point features, max-pooled twice."""
        group_size = flat_groups.shape[1]
        feature = self.first_conv(flat_groups.transpose(2, 1))
        global_feature = feature.max(dim=2, keepdim=True).values
        feature = torch.cat([global_feature.expand(-1, -1, group_size), feature], dim=1)
        feature = self.second_conv(feature)
        return feature.max(dim=2).values


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention without a query/key/value bias, as in Point-MAE."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(batch_size, tokens, 3, self.num_heads, channels // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        attention = ((query @ key.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        mixed = (attention @ value).transpose(1, 2).reshape(batch_size, tokens, channels)
        return self.proj(mixed)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerEncoder(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(dim, num_heads, mlp_ratio) for _ in range(depth)])

    def forward(self, x: torch.Tensor, pos: torch.Tensor, fetch: tuple[int, ...]) -> list[torch.Tensor]:
        """Return the outputs of the blocks in `fetch`. The positional embedding is added before every block."""
        outputs = []
        for index, block in enumerate(self.blocks):
            x = block(x + pos)
            if index in fetch:
                outputs.append(x)
            if index >= max(fetch):
                break
        return outputs


class PointMAEEncoder(nn.Module):
    """Frozen Point-MAE encoder: padded clouds → per-group features and centres.

    The state dict keys are those of the official `MAE_encoder` (`encoder.*`,
    `pos_embed.*`, `blocks.blocks.*`, `norm.*`). Build it, load weights with
    `load_point_mae_checkpoint`, then call `eval()`: BatchNorm must use its running
    statistics.
    """

    def __init__(self, architecture: PointMAEArchitecture | None = None) -> None:
        super().__init__()
        self.architecture = architecture if architecture is not None else PointMAEArchitecture()
        width = self.architecture.width
        self.encoder = Encoder(width)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, width))
        self.blocks = TransformerEncoder(width, self.architecture.depth, self.architecture.num_heads, self.architecture.mlp_ratio)
        self.norm = nn.LayerNorm(width)

    def forward(self, points: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (float B×G×feature_dim group features, float B×G×3 centres).

        `points` is float B×N×3 and `valid` bool B×N. Every sample needs at least
        `architecture.min_points` valid points (ValueError otherwise).
        """
        architecture = self.architecture
        neighbourhoods, centres = group_points(points, valid, architecture.num_groups, architecture.group_size)
        tokens = self.encoder(neighbourhoods)
        position = self.pos_embed(centres)
        block_outputs = self.blocks(tokens, position, architecture.feature_blocks)
        features = torch.cat([self.norm(output) for output in block_outputs], dim=-1)
        return features, centres

    def point_features(self, points: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Return float B×N×feature_dim features at every point, interpolated from the 3 nearest centres."""
        features, centres = self(points, valid)
        return interpolate_to_points(centres, features, points, valid)


# -- checkpoint loading ------------------------------------------------------------------


def load_point_mae_checkpoint(model: PointMAEEncoder, path: Path) -> None:
    """Load the encoder weights of a Point-MAE checkpoint into `model`, strictly.

    Accepts the official pretraining checkpoint (`pretrain.pth`: a dict whose
    "base_model" holds `module.MAE_encoder.*` keys next to the decoder's), or a plain
    or safetensors state dict with or without those prefixes. Decoder keys are
    dropped. Raises WeightsError when the file cannot be read, or listing every
    missing, unexpected and wrongly shaped key, so random weights never stay in place.
    """
    raw = _read_state_dict(path)
    state = _encoder_state(raw)
    expected = model.state_dict()

    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shapes = sorted(
        f"{key} {tuple(state[key].shape)} (model: {tuple(expected[key].shape)})"
        for key in set(state) & set(expected)
        if state[key].shape != expected[key].shape
    )
    if missing or unexpected or wrong_shapes:
        raise WeightsError(
            f"Point-MAE checkpoint {path} does not match the encoder "
            f"(width {model.architecture.width}, depth {model.architecture.depth}): "
            f"missing keys {missing}, unexpected keys {unexpected}, wrong shapes {wrong_shapes}. "
            "Use the official Point-MAE pretraining checkpoint (pretrain.pth)"
        )
    model.load_state_dict(state, strict=True)
    logger.info("loaded Point-MAE encoder weights from %s (%d tensors)", path, len(state))


def _read_state_dict(path: Path) -> Mapping[str, object]:
    """Return the top-level mapping stored in a .safetensors or torch checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Point-MAE checkpoint {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        # weights_only=True: the file may contain tensors and plain containers only, never code.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise many types for a bad file
        raise WeightsError(f"Point-MAE checkpoint {path} could not be read ({error}); replace the file") from error


def _encoder_state(raw: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Return the encoder's tensors of a checkpoint mapping, wrapper prefixes stripped and decoder keys dropped."""
    for container in ("base_model", "model", "state_dict"):
        nested = raw.get(container)
        if isinstance(nested, Mapping):
            raw = nested
            break

    state: dict[str, torch.Tensor] = {}
    dropped = 0
    for key, value in raw.items():
        name = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if name.startswith(prefix):
                    name = name[len(prefix) :]
                    stripped = True
        if name.startswith(_DECODER_KEY_PREFIXES):
            dropped += 1
            continue
        if isinstance(value, torch.Tensor):
            state[name] = value
    logger.debug("dropped %d Point-MAE decoder tensors", dropped)
    return state
