"""The edge's per-class buffer of normal samples, persisted one file per sample.

Each accepted sample is written once, atomically (temporary file, fsync, rename),
as a safetensors file holding the raw RGB-D arrays and the frozen features of its
foreground cells in float16. A restarted edge rebuilds its index from these files,
so it loses nothing that was acknowledged. Training reads only the features.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save

from modiad.features.base import FeatureMaps
from modiad.sample import Sample

__all__ = ["BufferEntry", "SampleBuffer"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BufferEntry:
    """Index entry of one buffered sample; `arrival` orders samples deterministically."""

    sample_id: str
    class_name: str
    round_index: int
    arrival: int
    feature_identity: str
    path: Path


class SampleBuffer:
    """Accumulating per-class store of samples and their features; nothing is discarded."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, BufferEntry] = {}
        self._load_index()

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self._entries

    def counts(self) -> dict[str, int]:
        """Return N_{k,c}: the number of buffered samples per class."""
        result: dict[str, int] = {}
        for entry in self._entries.values():
            result[entry.class_name] = result.get(entry.class_name, 0) + 1
        return dict(sorted(result.items()))

    def entries(self, class_name: str) -> list[BufferEntry]:
        """Return a class's entries in arrival order."""
        selected = [entry for entry in self._entries.values() if entry.class_name == class_name]
        return sorted(selected, key=lambda entry: (entry.round_index, entry.arrival, entry.sample_id))

    def add(self, sample: Sample, maps: FeatureMaps, *, round_index: int, arrival: int, feature_identity: str) -> BufferEntry:
        """Persist one sample with its features; a sample id already present is not written again."""
        if sample.sample_id in self._entries:
            return self._entries[sample.sample_id]

        foreground = maps.foreground.reshape(-1)
        tensors = {
            "rgb": np.ascontiguousarray(sample.rgb, dtype=np.uint8),
            "xyz": np.ascontiguousarray(sample.xyz, dtype=np.float32),
            "foreground": np.ascontiguousarray(maps.foreground, dtype=np.uint8),
            "f2d": np.ascontiguousarray(maps.f2d.reshape(foreground.size, -1)[foreground], dtype=np.float16),
            "f3d": np.ascontiguousarray(maps.f3d.reshape(foreground.size, -1)[foreground], dtype=np.float16),
        }
        metadata = {
            "sample_id": sample.sample_id,
            "class_name": sample.class_name,
            "round_index": str(round_index),
            "arrival": str(arrival),
            "feature_identity": feature_identity,
        }
        path = self._path_for(sample.class_name, sample.sample_id)
        _write_atomically(path, save(tensors, metadata=metadata))

        entry = BufferEntry(sample.sample_id, sample.class_name, round_index, arrival, feature_identity, path)
        self._entries[sample.sample_id] = entry
        return entry

    def training_features(self, class_name: str) -> tuple[np.ndarray, np.ndarray, int]:
        """Return all foreground (f2d, f3d) rows of a class as float32, and the sample count."""
        blocks_2d: list[np.ndarray] = []
        blocks_3d: list[np.ndarray] = []
        entries = self.entries(class_name)
        for entry in entries:
            tensors = load_file(str(entry.path))
            blocks_2d.append(tensors["f2d"].astype(np.float32))
            blocks_3d.append(tensors["f3d"].astype(np.float32))
        if not blocks_2d:
            return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), 0
        return np.concatenate(blocks_2d), np.concatenate(blocks_3d), len(entries)

    @property
    def next_arrival(self) -> int:
        """Return the arrival number the next sample gets (one more than the largest stored)."""
        return max((entry.arrival for entry in self._entries.values()), default=-1) + 1

    def _path_for(self, class_name: str, sample_id: str) -> Path:
        digest = hashlib.sha256(sample_id.encode("utf-8")).hexdigest()[:24]
        return self.directory / class_name / f"{digest}.safetensors"

    def _load_index(self) -> None:
        for path in sorted(self.directory.glob("*/*.safetensors")):
            try:
                metadata = _read_metadata(path)
                entry = BufferEntry(
                    sample_id=metadata["sample_id"],
                    class_name=metadata["class_name"],
                    round_index=int(metadata["round_index"]),
                    arrival=int(metadata["arrival"]),
                    feature_identity=metadata["feature_identity"],
                    path=path,
                )
            except (OSError, KeyError, ValueError, SafetensorError) as error:
                quarantine = path.with_suffix(".corrupt")
                logger.warning("buffer file %s is unreadable (%s); moved to %s", path, error, quarantine)
                path.rename(quarantine)
                continue
            self._entries[entry.sample_id] = entry
        for stale in self.directory.glob("*/*.tmp"):
            stale.unlink()
        if self._entries:
            logger.info("buffer %s: restored %d samples %s", self.directory, len(self._entries), self.counts())


def _read_metadata(path: Path) -> dict[str, str]:
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if length <= 0 or length > 100 * 1024 * 1024:
            raise ValueError(f"header length {length} is out of range")
        header = json.loads(handle.read(length))
    return header.get("__metadata__", {})


def _write_atomically(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    with temporary.open("wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
