"""The cloud's model bank: one mapper pair per class, its version and update count.

The bank is stored as one safetensors file whose metadata contains the versions, the
cumulative update counts B_c and the last completed round. Saving writes a
temporary file, fsyncs it and renames it over the old one, so a crash leaves
either the previous bank or the new one, never a mix.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save

from modiad.errors import ConfigError
from modiad.mapper import init_mapper_pair, pair_state

__all__ = ["ClassModel", "ModelBank"]

logger = logging.getLogger(__name__)

BANK_FILE_NAME = "bank.safetensors"


@dataclass
class ClassModel:
    """A class's global mapper weights; `version` counts aggregations, `updates` is B_c."""

    state: dict[str, np.ndarray]
    version: int = 0
    updates: int = 0


@dataclass
class ModelBank:
    """All class models with the feature sizes they were built for."""

    dim_2d: int
    dim_3d: int
    seed: int
    feature_identity: str
    classes: dict[str, ClassModel] = field(default_factory=dict)
    completed_round: int = 0

    def ensure_class(self, class_name: str) -> ClassModel:
        """Return a class's model, creating its deterministic initial weights with B_c = 0 if new."""
        if class_name not in self.classes:
            pair = init_mapper_pair(self.dim_2d, self.dim_3d, seed=self.seed, class_name=class_name)
            self.classes[class_name] = ClassModel(state=pair_state(pair))
            logger.info("class %s entered the bank with B_c = 0", class_name)
        return self.classes[class_name]

    def cumulative_updates(self) -> dict[str, int]:
        """Return B_c for every class of the bank."""
        return {name: model.updates for name, model in sorted(self.classes.items())}

    def save(self, directory: Path) -> Path:
        """Write the bank atomically to `directory/bank.safetensors` and return the path."""
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {
            f"{class_name}/{name}": array
            for class_name, model in sorted(self.classes.items())
            for name, array in model.state.items()
        }
        index = {
            "dim_2d": self.dim_2d,
            "dim_3d": self.dim_3d,
            "seed": self.seed,
            "feature_identity": self.feature_identity,
            "completed_round": self.completed_round,
            "classes": {
                name: {"version": model.version, "updates": model.updates} for name, model in sorted(self.classes.items())
            },
        }
        path = directory / BANK_FILE_NAME
        temporary = path.with_suffix(".tmp")
        with temporary.open("wb") as handle:
            handle.write(save(tensors, metadata={"modiad_bank": json.dumps(index)}))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        return path

    @classmethod
    def load(cls, directory: Path) -> ModelBank | None:
        """Read a saved bank, or return None when the folder contains none."""
        path = directory / BANK_FILE_NAME
        if not path.exists():
            return None
        try:
            tensors = load_file(str(path))
            with path.open("rb") as handle:
                length = int.from_bytes(handle.read(8), "little")
                index = json.loads(json.loads(handle.read(length))["__metadata__"]["modiad_bank"])
        except (OSError, KeyError, ValueError, SafetensorError) as error:
            raise ConfigError(
                f"model bank {path} is unreadable ({error}); restore it from a backup or move it away to start fresh"
            ) from error

        bank = cls(
            dim_2d=index["dim_2d"],
            dim_3d=index["dim_3d"],
            seed=index["seed"],
            feature_identity=index["feature_identity"],
            completed_round=index["completed_round"],
        )
        for class_name, info in index["classes"].items():
            prefix = f"{class_name}/"
            state = {name[len(prefix) :]: array for name, array in tensors.items() if name.startswith(prefix)}
            bank.classes[class_name] = ClassModel(state=state, version=info["version"], updates=info["updates"])
        return bank
