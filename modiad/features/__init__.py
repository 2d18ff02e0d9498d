"""Frozen feature extractors, aligned on one pixel grid."""

from modiad.features.base import FeatureExtractor, FeatureMaps

__all__ = ["FeatureExtractor", "FeatureMaps"]
