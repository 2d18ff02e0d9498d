"""Evaluation of the model bank on a labelled split (test or validation).

Features of the evaluation samples are extracted once and kept in memory as the
foreground rows in float16; every later round only runs the mappers.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modiad.dataset import list_classes, list_samples, read_sample
from modiad.errors import DatasetError
from modiad.features.base import FeatureExtractor, FeatureMaps
from modiad.features.cache import FeatureCache
from modiad.mapper import MapperPair, load_pair_state
from modiad.metrics import class_report, mean_report
from modiad.scoring import anomaly_map, image_score

from cloud.bank import ModelBank

__all__ = ["EvaluationSet", "Evaluator"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _EvalSample:
    sample_id: str
    label: int
    gt_mask: np.ndarray
    foreground: np.ndarray
    f2d: np.ndarray
    f3d: np.ndarray

    def feature_maps(self) -> FeatureMaps:
        grid = self.foreground.shape
        rows = self.foreground.reshape(-1)
        f2d = np.zeros((rows.size, self.f2d.shape[1]), np.float32)
        f3d = np.zeros((rows.size, self.f3d.shape[1]), np.float32)
        f2d[rows] = self.f2d
        f3d[rows] = self.f3d
        return FeatureMaps(f2d=f2d.reshape(*grid, -1), f3d=f3d.reshape(*grid, -1), foreground=self.foreground)


@dataclass
class EvaluationSet:
    """Extracted evaluation samples per class."""

    samples: dict[str, list[_EvalSample]]
    skipped: int


class Evaluator:
    """Scores every class of the bank on one split and computes the detection metrics."""

    def __init__(
        self,
        data_root: Path,
        split: str,
        extractor: FeatureExtractor,
        *,
        cache: FeatureCache | None = None,
        classes: list[str] | None = None,
    ) -> None:
        self.data_root = Path(data_root)
        self.split = split
        self.extractor = extractor
        self.cache = cache
        self.selected_classes = list(classes or [])
        self._set: EvaluationSet | None = None
        self._prepare_lock = threading.Lock()

    def classes(self) -> list[str]:
        """Return the evaluated classes: the selected ones, or every class under the data root."""
        available = list_classes(self.data_root)
        if not self.selected_classes:
            return available
        unknown = sorted(set(self.selected_classes) - set(available))
        if unknown:
            raise DatasetError(f"unknown evaluation classes {unknown}; {self.data_root} contains {available}")
        return sorted(self.selected_classes)

    def prepare(self) -> EvaluationSet:
        """Read and extract the split once; corrupt files are skipped with a logged reason.

        Safe to call from a background thread while the round loop runs: a second
        caller waits for the first extraction instead of repeating it.
        """
        with self._prepare_lock:
            if self._set is None:
                self._set = self._extract_split()
            return self._set

    def _extract_split(self) -> EvaluationSet:
        started = time.perf_counter()
        samples: dict[str, list[_EvalSample]] = {}
        skipped = 0
        for class_name in self.classes():
            entries: list[_EvalSample] = []
            for ref in list_samples(self.data_root, class_name, self.split):
                try:
                    sample = read_sample(ref)
                except DatasetError as error:
                    skipped += 1
                    logger.warning("evaluation sample skipped: %s", error)
                    continue
                try:
                    maps = self._extract(sample)
                except DatasetError as error:
                    skipped += 1
                    logger.warning("evaluation sample %s skipped: %s", sample.sample_id, error)
                    continue
                rows = maps.foreground.reshape(-1)
                gt_mask = sample.gt_mask if sample.gt_mask is not None else np.zeros(sample.rgb.shape[:2], np.uint8)
                entries.append(
                    _EvalSample(
                        sample_id=sample.sample_id,
                        label=sample.label,
                        gt_mask=gt_mask,
                        foreground=maps.foreground.copy(),
                        f2d=maps.f2d.reshape(rows.size, -1)[rows].astype(np.float16),
                        f3d=maps.f3d.reshape(rows.size, -1)[rows].astype(np.float16),
                    )
                )
            samples[class_name] = entries
        count = sum(len(entries) for entries in samples.values())
        logger.info(
            "evaluation set ready: %d %s samples in %d classes, %d skipped, %.1f s",
            count,
            self.split,
            len(samples),
            skipped,
            time.perf_counter() - started,
        )
        return EvaluationSet(samples=samples, skipped=skipped)

    def _extract(self, sample) -> FeatureMaps:
        if self.cache is None:
            return self.extractor.extract(sample.rgb, sample.xyz)
        return self.cache.get_or_extract(sample.sample_id, self.extractor, sample.rgb, sample.xyz)

    def evaluate(self, bank: ModelBank) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
        """Return per-class metrics (I-AUROC, P-AUROC, AUPRO at 30/10/5/1 %) and their mean."""
        evaluation_set = self.prepare()
        per_class: dict[str, dict[str, float]] = {}
        for class_name, entries in evaluation_set.samples.items():
            if class_name not in bank.classes or not entries:
                continue
            pair = load_pair_state(MapperPair(bank.dim_2d, bank.dim_3d), bank.classes[class_name].state)
            maps = []
            scores = []
            for entry in entries:
                height, width = entry.gt_mask.shape
                full_map = anomaly_map(pair, entry.feature_maps(), height, width)
                maps.append(full_map)
                scores.append(image_score(full_map))
            labels = [entry.label for entry in entries]
            masks = [entry.gt_mask for entry in entries]
            try:
                per_class[class_name] = class_report(scores, labels, maps, masks)
            except ValueError as error:
                logger.warning("class %s not evaluated: %s", class_name, error)
        mean = mean_report(per_class) if per_class else {}
        return per_class, mean
