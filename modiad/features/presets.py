"""Construction of the configured feature extractor."""

from __future__ import annotations

from typing import Any, Literal

from modiad.features.base import FeatureExtractor
from modiad.features.embedded import EmbeddedExtractor, EmbeddedFeatureSettings
from modiad.features.paper import PaperFeatureSettings

__all__ = ["FEATURE_PRESETS", "FeaturePreset", "build_extractor", "service_extractor"]

FeaturePreset = Literal["embedded", "paper"]
FEATURE_PRESETS: tuple[FeaturePreset, ...] = ("embedded", "paper")

_CACHE: dict[str, FeatureExtractor] = {}


def build_extractor(
    settings: EmbeddedFeatureSettings,
    *,
    preset: FeaturePreset = "embedded",
    paper: PaperFeatureSettings | None = None,
) -> FeatureExtractor:
    """Return the extractor of `preset`, shared by every node of this process.

    "embedded" uses `settings`. "paper" uses `paper` (default settings when None)
    and raises WeightsError naming every missing weight file before loading anything.
    Loading weights costs seconds, so nodes in one process (the in-process runner)
    reuse one frozen instance.
    """
    if preset == "paper":
        from modiad.features.paper import PaperExtractor

        paper_settings = paper if paper is not None else PaperFeatureSettings()
        key = "paper:" + paper_settings.model_dump_json()
        if key not in _CACHE:
            _CACHE[key] = PaperExtractor(paper_settings)
        return _CACHE[key]

    key = settings.model_dump_json()
    if key not in _CACHE:
        _CACHE[key] = EmbeddedExtractor(settings)
    return _CACHE[key]


def service_extractor(settings: Any) -> FeatureExtractor:
    """Return the extractor a service's settings select (`features_preset`, `features`, `paper_features`)."""
    return build_extractor(settings.features, preset=settings.features_preset, paper=settings.paper_features)
