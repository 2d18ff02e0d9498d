"""Construction of the configured feature extractor."""

from __future__ import annotations

from modiad.features.base import FeatureExtractor
from modiad.features.embedded import EmbeddedExtractor, EmbeddedFeatureSettings

__all__ = ["build_extractor"]

_CACHE: dict[str, FeatureExtractor] = {}


def build_extractor(settings: EmbeddedFeatureSettings) -> FeatureExtractor:
    """Return the extractor for `settings`, shared by every node of this process.

    Loading weights costs seconds, so nodes in one process (the in-process runner)
    reuse one frozen instance.
    """
    key = settings.model_dump_json()
    if key not in _CACHE:
        _CACHE[key] = EmbeddedExtractor(settings)
    return _CACHE[key]
