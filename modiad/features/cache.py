"""A persistent, size-limited cache of extracted features, so no sample is extracted twice.

An entry's key is the SHA-256 of the cache format version, the extractor's
identity (preset, settings and weights version) and the sample's RGB and point
cloud bytes with their shapes and dtypes. Equal content gives the same key across
restarts and edges, and any change to the extractor gives a new key.

Entries are safetensors files with f2d and f3d stored as float16 and the
foreground as uint8, under `directory/<first 2 hex digits>/<key>.safetensors`.
When the files exceed `max_bytes`, the least recently used entries are deleted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from modiad.errors import ConfigError
from modiad.features.base import FeatureExtractor, FeatureMaps

__all__ = ["CACHE_FORMAT_VERSION", "FeatureCache", "feature_cache_key"]

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = "1"
"""Version of the entry layout. Changing it gives every sample a new key, so old entries age out."""

_SUFFIX = ".safetensors"
_TEMPORARY_SUFFIX = ".tmp"

_TENSOR_NAMES = ("f2d", "f3d", "foreground")

# Largest finite float16. Larger feature values are clipped to it instead of becoming inf.
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def feature_cache_key(identity: str, rgb: np.ndarray, xyz: np.ndarray) -> str:
    """Return the 64-hex-digit cache key of a sample's content under extractor `identity`."""
    digest = hashlib.sha256()
    digest.update(f"modiad-feature-cache-v{CACHE_FORMAT_VERSION}\0{identity}\0".encode())
    for array in (rgb, xyz):
        contiguous = np.ascontiguousarray(array)
        digest.update(f"{contiguous.dtype.str}{contiguous.shape}\0".encode())
        digest.update(contiguous.data)
    return digest.hexdigest()


@dataclass
class _Entry:
    size_bytes: int
    last_used_ns: int


class FeatureCache:
    """Extracted features on disk, keyed by sample content and extractor identity.

    `get_or_extract` returns cached features or runs the extractor once and stores
    the result. `extractions` counts extractor runs, `hits` counts reads served
    from disk, `evictions` counts deleted entries and `corrupt_entries` counts
    unreadable entries that were extracted again. Features come back as float32
    holding float16-rounded values whether they were cached or just extracted, so
    a sample's features do not depend on the cache state. One instance may be used
    from several threads. Two processes must not share a directory, because each
    tracks the total size on its own.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ConfigError(f"feature cache max_bytes must be positive, got {max_bytes}; set a size limit in bytes")
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self.extractions = 0
        self.hits = 0
        self.evictions = 0
        self.corrupt_entries = 0
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self.directory.mkdir(parents=True, exist_ok=True)
        self._scan()
        with self._lock:
            self._evict_over_limit(keep=None)

    @property
    def total_bytes(self) -> int:
        """Size of all entries on disk, in bytes."""
        with self._lock:
            return sum(entry.size_bytes for entry in self._entries.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def get_or_extract(self, sample_id: str, extractor: FeatureExtractor, rgb: np.ndarray, xyz: np.ndarray) -> FeatureMaps:
        """Return the features of one sample, extracting them only when no valid entry exists.

        `sample_id` appears in log messages only: the key is the content hash.
        Errors of the extractor propagate and leave nothing in the cache.
        """
        key = feature_cache_key(extractor.identity, rgb, xyz)
        cached = self._read(key, sample_id, extractor)
        if cached is not None:
            return cached

        maps = extractor.extract(rgb, xyz)
        with self._lock:
            self.extractions += 1
        return self._write(key, sample_id, extractor.identity, maps)

    # -- entries -----------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}{_SUFFIX}"

    def _scan(self) -> None:
        """Index the entries already on disk and delete temporary files of interrupted writes."""
        for path in self.directory.glob(f"*/*{_TEMPORARY_SUFFIX}"):
            path.unlink(missing_ok=True)
        for path in self.directory.glob(f"*/*{_SUFFIX}"):
            stat = path.stat()
            self._entries[path.name[: -len(_SUFFIX)]] = _Entry(stat.st_size, stat.st_mtime_ns)
        logger.info(
            "feature cache %s: %d entries, %d bytes (limit %d)",
            self.directory,
            len(self._entries),
            sum(entry.size_bytes for entry in self._entries.values()),
            self.max_bytes,
        )

    def _read(self, key: str, sample_id: str, extractor: FeatureExtractor) -> FeatureMaps | None:
        """Return the entry's features, or None when it is absent or corrupt (a corrupt entry is deleted)."""
        with self._lock:
            if key not in self._entries:
                return None
        path = self._path(key)
        try:
            maps = _load_entry(path, extractor)
        except (OSError, ValueError, KeyError, SafetensorError) as error:
            logger.warning("feature cache entry %s of sample %s is corrupt (%s); extracting again", path, sample_id, error)
            with self._lock:
                self.corrupt_entries += 1
                self._entries.pop(key, None)
            path.unlink(missing_ok=True)
            return None

        now = time.time_ns()
        os.utime(path, ns=(now, now))
        with self._lock:
            if key in self._entries:
                self._entries[key].last_used_ns = now
            self.hits += 1
        return maps

    def _write(self, key: str, sample_id: str, identity: str, maps: FeatureMaps) -> FeatureMaps:
        """Store `maps` under `key` (atomically) and return them as read back: float16-rounded float32."""
        tensors = {
            "f2d": _to_float16(maps.f2d),
            "f3d": _to_float16(maps.f3d),
            "foreground": np.ascontiguousarray(maps.foreground, dtype=np.uint8),
        }
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + _TEMPORARY_SUFFIX)
        metadata = {
            "identity": identity,
            "format": CACHE_FORMAT_VERSION,
            "sample_id": sample_id,
            "sha256": _content_digest(tensors),
        }
        save_file(tensors, str(temporary), metadata=metadata)
        os.replace(temporary, path)

        with self._lock:
            self._entries[key] = _Entry(path.stat().st_size, time.time_ns())
            self._evict_over_limit(keep=key)
        return _maps_from_tensors(tensors)

    def _evict_over_limit(self, keep: str | None) -> None:
        """Delete least recently used entries until the total fits `max_bytes`. Call with the lock held.

        `keep` is evicted last, so a just-written entry survives unless it alone exceeds the limit.
        """
        total = sum(entry.size_bytes for entry in self._entries.values())
        if total <= self.max_bytes:
            return
        order = sorted(self._entries, key=lambda name: (name == keep, self._entries[name].last_used_ns))
        for name in order:
            if total <= self.max_bytes:
                break
            if name == keep:
                logger.warning(
                    "feature cache entry of %d bytes exceeds the limit of %d bytes and is not kept; raise max_bytes",
                    self._entries[name].size_bytes,
                    self.max_bytes,
                )
            total -= self._entries.pop(name).size_bytes
            self._path(name).unlink(missing_ok=True)
            self.evictions += 1


def _load_entry(path: Path, extractor: FeatureExtractor) -> FeatureMaps:
    """Read one entry and check its identity, shapes, dtypes and checksum against the extractor.

    Raises ValueError, KeyError, OSError or SafetensorError when the entry is invalid.
    """
    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata() or {}
        tensors = {name: handle.get_tensor(name) for name in _TENSOR_NAMES}
    if metadata.get("identity") != extractor.identity:
        raise ValueError(f"entry was written by extractor {metadata.get('identity')!r}, not {extractor.identity!r}")

    grid = extractor.grid_size
    expected = {
        "f2d": ((grid, grid, extractor.dim_2d), np.float16),
        "f3d": ((grid, grid, extractor.dim_3d), np.float16),
        "foreground": ((grid, grid), np.uint8),
    }
    for name, (shape, dtype) in expected.items():
        tensor = tensors[name]
        if tensor.shape != shape or tensor.dtype != dtype:
            raise ValueError(f"{name} is {tensor.dtype} {tensor.shape}, expected {np.dtype(dtype)} {shape}")
    if metadata.get("sha256") != _content_digest(tensors):
        raise ValueError("tensor bytes do not match the stored SHA-256")
    return _maps_from_tensors(tensors)


def _maps_from_tensors(tensors: dict[str, np.ndarray]) -> FeatureMaps:
    return FeatureMaps(
        f2d=tensors["f2d"].astype(np.float32),
        f3d=tensors["f3d"].astype(np.float32),
        foreground=tensors["foreground"].astype(bool),
    )


def _to_float16(values: np.ndarray) -> np.ndarray:
    """Return `values` as float16, clipped to the finite float16 range."""
    return np.ascontiguousarray(np.clip(values, -_FLOAT16_MAX, _FLOAT16_MAX).astype(np.float16))


def _content_digest(tensors: dict[str, np.ndarray]) -> str:
    """Return the SHA-256 of the entry's tensor bytes, which detects damaged payloads on read."""
    digest = hashlib.sha256()
    for name in _TENSOR_NAMES:
        digest.update(np.ascontiguousarray(tensors[name]).data)
    return digest.hexdigest()
