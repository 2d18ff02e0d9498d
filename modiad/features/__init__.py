"""Frozen feature extractors, aligned on one pixel grid."""

from modiad.features.base import FeatureExtractor, FeatureMaps
from modiad.features.embedded import PRESET_NAME, EmbeddedExtractor, EmbeddedFeatureSettings

__all__ = ["PRESET_NAME", "EmbeddedExtractor", "EmbeddedFeatureSettings", "FeatureExtractor", "FeatureMaps"]
